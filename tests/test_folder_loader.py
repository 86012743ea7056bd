"""FolderLoader: streaming ImageFolder batches with TensorLoader's interface and determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from onceforall.data import FolderLoader, ImageFolder, TensorLoader
from onceforall.errors import DataError

N_CLASSES, PER_CLASS = 3, 6
N = N_CLASSES * PER_CLASS
ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # mean / std that leave pixels on the 0..1 scale


def write_tree(root: Path) -> Path:
    """root/<class>/NN.{png,jpg}: 40x30 images; red is 10 * i + 5 (names sample i), green and blue ramps."""
    for c in range(N_CLASSES):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for j in range(PER_CLASS):
            i = c * PER_CLASS + j
            pixels = np.empty((30, 40, 3), np.uint8)
            pixels[..., 0] = 10 * i + 5
            pixels[..., 1] = 6 * np.arange(40)[None, :] + 5 * c  # crops and flips show in green and blue
            pixels[..., 2] = 8 * np.arange(30)[:, None] + 3 * j
            ext = "png" if j % 2 == 0 else "jpg"
            Image.fromarray(pixels).save(folder / f"{j:02d}.{ext}", quality=95, subsampling=0)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("folder") / "train")


def make(tree: Path, batch_size: int = 4, **kwargs) -> FolderLoader:
    kwargs.setdefault("workers", 0)
    kwargs.setdefault("train", False)
    kwargs.setdefault("resolutions", [16])
    return FolderLoader(tree, batch_size, ZERO, ONE, **kwargs)


def sample_ids(images: torch.Tensor) -> list[int]:
    """Sample index of each image of a batch (loaded with mean 0, std 1) from its flat red channel."""
    red = images[:, 0].mean(dim=(1, 2)) * 255
    return ((red - 5) / 10).round().long().tolist()


def epoch(loader: FolderLoader) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    images, labels = [], []
    for x, y in loader:
        images.append(x)
        labels.append(y)
    return images, labels


def test_batch_counts(tree):
    assert len(make(tree, 4, train=True)) == 4  # drop_last by default in train
    assert len(make(tree, 4)) == 5  # eval keeps the short last batch
    assert len(make(tree, 4, train=True, world_size=2)) == 2
    assert len(make(tree, 4, world_size=2)) == 3
    assert make(tree, 4, world_size=2).global_batch == 8
    loader = make(tree, 4)
    assert len(epoch(loader)[0]) == len(loader)
    with pytest.raises(DataError, match="no full global batch"):
        make(tree, 32, train=True)


@pytest.mark.parametrize("train", [False, True])
def test_every_sample_once_in_the_order_tensor_loader_uses(tree, train):
    loader = make(tree, 4, train=train, shuffle=True, drop_last=False, seed=3)
    tensors = TensorLoader(torch.zeros(N, 3, 2, 2, dtype=torch.uint8), loader.labels, 4, ZERO, ONE, seed=3)
    tensors.shuffle = True
    for e in (0, 1):
        loader.set_epoch(e)
        images, labels = epoch(loader)
        ids = [i for x in images for i in sample_ids(x)]
        assert ids == loader.order(e).tolist() == tensors.order(e).tolist()
        assert sorted(ids) == list(range(N))
        assert torch.equal(torch.cat(labels), loader.labels[loader.order(e)])
        assert torch.equal(torch.cat(labels), torch.tensor(ids) // PER_CLASS)
    assert loader.order(0).tolist() != loader.order(1).tolist()


def test_resolutions_are_tensor_loaders(tree):
    sizes = [8, 12, 16, 20]
    loader = make(tree, 2, train=True, resolutions=sizes, seed=7)
    tensors = TensorLoader(torch.zeros(N, 3, 2, 2, dtype=torch.uint8), loader.labels, 2, ZERO, ONE)
    tensors.resolutions, tensors.seed = sizes, 7
    drawn = [[loader.resolution_at(e, b) for b in range(len(loader))] for e in range(3)]
    assert drawn == [[tensors.resolution_at(e, b) for b in range(len(loader))] for e in range(3)]
    assert len({r for row in drawn for r in row}) > 1
    for e in (0, 2):
        loader.set_epoch(e)
        shapes = [tuple(x.shape) for x, _ in loader]
        assert shapes == [(2, 3, r, r) for r in drawn[e]]


def test_resume_mid_epoch_replays_the_rest(tree):
    loader = make(tree, 3, train=True, resolutions=[10, 16], seed=1)
    loader.set_epoch(2)
    images, labels = epoch(loader)
    for k in (1, 4):
        loader.set_epoch(2, start_batch=k)
        tail_images, tail_labels = epoch(loader)
        assert len(tail_images) == len(loader) - k
        assert all(torch.equal(a, b) for a, b in zip(tail_labels, labels[k:], strict=True))
        assert all(torch.equal(a, b) for a, b in zip(tail_images, images[k:], strict=True))
    loader.set_epoch(2, start_batch=len(loader))
    assert epoch(loader)[0] == []
    with pytest.raises(DataError, match="start_batch"):
        loader.set_epoch(0, start_batch=len(loader) + 1)


@pytest.mark.parametrize("train", [False, True])
def test_ranks_together_see_the_global_batch(tree, train):
    common = dict(train=train, shuffle=True, drop_last=False, resolutions=[12, 16], seed=4)
    whole = epoch(make(tree, 6, **common))
    ranks = [epoch(make(tree, 3, rank=r, world_size=2, **common)) for r in (0, 1)]
    assert len(whole[0]) == len(ranks[0][0]) == len(ranks[1][0]) == 3
    for b in range(3):
        assert torch.equal(ranks[0][0][b], whole[0][b][0::2])
        assert torch.equal(ranks[1][0][b], whole[0][b][1::2])
        assert torch.equal(ranks[0][1][b], whole[1][b][0::2])
        assert torch.equal(ranks[1][1][b], whole[1][b][1::2])


def test_short_last_batch_leaves_late_ranks_empty(tree):
    # 18 samples in global batches of 8: the last has 2, so ranks 2 and 3 get none.
    loaders = [make(tree, 2, rank=r, world_size=4, resolutions=[12, 16]) for r in range(4)]
    last = [epoch(loader)[0][-1] for loader in loaders]
    size = loaders[0].resolution_at(0, 2)
    assert [tuple(x.shape) for x in last] == [(1, 3, size, size)] * 2 + [(0, 3, size, size)] * 2
    assert [len(epoch(loader)[1][-1]) for loader in loaders] == [1, 1, 0, 0]


def test_workers_decode_the_same_batches(tree):
    common = dict(train=True, shuffle=True, resolutions=[12, 16], seed=2)
    serial = epoch(make(tree, 4, workers=0, **common))
    parallel = epoch(make(tree, 4, workers=2, **common))
    assert len(serial[0]) == len(parallel[0]) == 4
    assert all(torch.equal(a, b) for a, b in zip(serial[0], parallel[0], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(serial[1], parallel[1], strict=True))


def test_output_dtype_shape_format_and_normalization(tree):
    mean, std = (0.5, 0.25, 0.75), (0.5, 0.25, 0.125)
    loader = FolderLoader(
        tree, 6, mean, std, train=False, resolutions=[12, 16], memory_format=torch.channels_last, workers=0
    )
    decoded = ImageFolder(tree, 16, train=False)  # the eval view at the largest resolution
    for b, (images, labels) in enumerate(loader):
        size = loader.resolution_at(0, b)
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        assert images.shape == (6, 3, size, size) and labels.shape == (6,)
        assert images.is_contiguous(memory_format=torch.channels_last)
        assert images.device.type == labels.device.type == "cpu"
        expected = torch.stack([decoded[i][0] for i in range(6 * b, 6 * b + 6)]).float() / 255
        if size != 16:
            expected = torch.nn.functional.interpolate(expected, size=(size, size), mode="bilinear")
        expected = (expected - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
        assert torch.allclose(images, expected, atol=1e-5)
    assert {loader.resolution_at(0, b) for b in range(len(loader))} == {12, 16}
    # sample 0 is a PNG with red 5 everywhere: its normalized red channel is exact
    assert torch.allclose(next(iter(loader))[0][0, 0], torch.tensor((5 / 255 - 0.5) / 0.5), atol=1e-6)


def test_flip_can_be_turned_off(tmp_path):
    folder = tmp_path / "ramps" / "ramp"
    folder.mkdir(parents=True)
    for j in range(8):  # dark left half, bright right half
        pixels = np.zeros((30, 40, 3), np.uint8)
        pixels[:, 20:] = 255
        Image.fromarray(pixels).save(folder / f"{j}.png")

    def left_is_dark(flip: bool) -> list[bool]:
        # the whole image (aspect 4:3) is the only box of scale 1 and ratio ~4:3: only flips differ
        loader = FolderLoader(
            tmp_path / "ramps", 8, ZERO, ONE, train=True, scale=(1, 1), ratio=(1.3, 1.4), flip=flip, workers=0
        )
        x = next(iter(loader))[0]
        return (x[..., :8].mean(dim=(1, 2, 3)) < x[..., -8:].mean(dim=(1, 2, 3))).tolist()

    assert all(left_is_dark(False))
    flipped = left_is_dark(True)
    assert not all(flipped) and any(flipped)


def test_image_folder_instance_and_val_classes(tmp_path, tree):
    val = tmp_path / "val"
    (val / "class1").mkdir(parents=True)
    Image.fromarray(np.full((30, 40, 3), 7, np.uint8)).save(val / "class1" / "a.png")
    classes = ["class0", "class1", "class2"]
    loader = FolderLoader(val, 1, ZERO, ONE, train=False, resolutions=[8], classes=classes, workers=0)
    assert loader.classes == classes and loader.labels.tolist() == [1]
    instance = FolderLoader(ImageFolder(tree, 12, train=True), 4, ZERO, ONE, train=True, workers=0)
    assert instance.resolutions == [12] and instance.classes == classes
    assert [tuple(x.shape) for x, _ in instance] == [(4, 3, 12, 12)] * 4
    with pytest.raises(DataError, match="differ"):
        FolderLoader(ImageFolder(tree, 12, train=True), 4, ZERO, ONE, train=True, classes=["x"])


def test_rejects_bad_input(tmp_path, tree):
    with pytest.raises(DataError, match="does not exist"):
        make(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        make(tmp_path / "empty")
    (tmp_path / "empty" / "cls").mkdir()
    with pytest.raises(DataError, match="no images"):
        make(tmp_path / "empty")
    with pytest.raises(DataError, match="batch_size"):
        make(tree, 0)
    with pytest.raises(DataError, match="rank"):
        make(tree, rank=2, world_size=2)
    with pytest.raises(DataError, match="mean/std"):
        FolderLoader(tree, 4, (0.5,), (0.5,), train=False)
    with pytest.raises(DataError, match="resolutions"):
        make(tree, resolutions=[])
    with pytest.raises(DataError, match="scale"):
        make(tree, scale=(0.5, 0.1))
    with pytest.raises(DataError, match="workers"):
        make(tree, workers=-1)
