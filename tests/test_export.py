"""Export of extracted subnets: parity checks as part of the export, and loading without onceforall."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from onceforall import OFAMobileNetV3
from onceforall.errors import ExportError
from onceforall.export import export_onnx, export_subnet, export_torch, extract_subnet
from onceforall.specialize.timing import torch_threads


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def tiny():
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()


@pytest.fixture(scope="module")
def subnet():
    """The smallest subnet, with BN statistics from data so that its output depends on its input."""
    torch.manual_seed(0)
    net = OFAMobileNetV3(
        n_classes=10,
        width_mult=0.5,
        in_channels=1,
        first_stride=1,
        stage_strides=(2, 2, 2, 1, 1),
        resolutions=(28,),
        ks_list=[3, 5, 7],
        expand_ratio_list=[3, 4, 6],
        depth_list=[2, 3, 4],
        dropout_rate=0,
    )
    space = net.search_space()
    model = extract_subnet(net, space.min_arch())
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        model(torch.randn(64, 1, 28, 28))
    model.eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        out = model(x)
    assert (out[0] - out[1]).abs().max() > 1e-2  # the check below is meaningful
    return model


def run_isolated(code: str) -> str:
    """Run `code` in a fresh interpreter (-I: no PYTHONPATH, no user site) where onceforall cannot be imported."""
    prelude = "import sys\nsys.modules['onceforall'] = None  # any import of onceforall fails\n"
    done = subprocess.run(
        [sys.executable, "-I", "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_onnx_export_is_checked_and_loads_with_onnxruntime_only(subnet, tmp_path):
    report = export_onnx(subnet, (1, 1, 28, 28), tmp_path / "m.onnx")
    assert report.max_abs_diff <= 1e-4 and report.path.is_file()
    x = torch.randn(3, 1, 28, 28)  # another batch size: the batch axis is dynamic
    np.save(tmp_path / "x.npy", x.numpy())
    out = run_isolated(
        f"""
        sys.modules['torch'] = None  # nor torch
        import numpy as np, onnxruntime as ort
        session = ort.InferenceSession({str(report.path)!r}, providers=["CPUExecutionProvider"])
        (y,) = session.run(None, {{"input": np.load({str(tmp_path / "x.npy")!r})}})
        np.save({str(tmp_path / "y.npy")!r}, y)
        print(session.get_inputs()[0].shape)
        """
    )
    assert out.strip() == "['batch', 1, 28, 28]"
    with torch.no_grad():
        expected = subnet(x)
    assert np.abs(np.load(tmp_path / "y.npy") - expected.numpy()).max() <= 1e-4


def test_torch_export_is_checked_and_loads_with_plain_torch(subnet, tmp_path):
    report = export_torch(subnet, (1, 1, 28, 28), tmp_path / "m.pt2")
    assert report.max_abs_diff <= 1e-4
    x = torch.randn(5, 1, 28, 28)
    torch.save(x, tmp_path / "x.pt")
    run_isolated(
        f"""
        import torch
        model = torch.export.load({str(report.path)!r}).module()
        torch.save(model(torch.load({str(tmp_path / "x.pt")!r})), {str(tmp_path / "y.pt")!r})
        """
    )
    with torch.no_grad():
        expected = subnet(x)
    assert (torch.load(tmp_path / "y.pt") - expected).abs().max() <= 1e-4


def test_a_wrong_export_raises_with_the_measured_difference(tiny, tmp_path, monkeypatch):
    import onceforall.export as export

    class Off:
        """A session whose output is off by 1e-3 (what a broken export would give)."""

        def __init__(self, data):
            self.session = real(data)

        def run(self, names, feed):
            return [y + 1e-3 for y in self.session.run(names, feed)]

    real = export.ort_session
    monkeypatch.setattr(export, "ort_session", lambda data, threads=None: Off(data))
    with pytest.raises(ExportError, match=r"max abs diff 1\.0\d*e-03 .* exceeds 1\.0e-04"):
        export_onnx(tiny, (1, 1, 8, 8), tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()  # nothing written when the check fails


def test_onnxruntime_sessions_of_a_process_share_the_pool_its_first_made():
    # a fresh interpreter: the pool is made once per process, by its first session
    code = textwrap.dedent(
        """
        import torch
        from onceforall.errors import ExportError
        from onceforall.export import onnx_bytes, ort_session
        data = onnx_bytes(torch.nn.Conv2d(1, 4, 3), torch.randn(1, 1, 8, 8), dynamic_batch=False)
        feed = {"input": torch.randn(1, 1, 8, 8).numpy()}
        ort_session(data, 2).run(None, feed)
        ort_session(data, 2).run(None, feed)
        print(ort_session(data).run(None, feed)[0].shape)  # any pool: an export's check
        try:
            ort_session(data, 1)
        except ExportError as error:
            print(error)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    shape, error = done.stdout.strip().splitlines()
    assert shape == "(1, 4, 6, 6)"
    assert "made it with 2 thread(s), so 1 cannot be timed here" in error and "separate process" in error


def test_unknown_format_is_refused(tiny, tmp_path):
    with pytest.raises(ExportError, match="unknown export formats"):
        export_subnet(tiny, (1, 1, 8, 8), tmp_path, formats=("tflite",))
