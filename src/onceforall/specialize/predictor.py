"""The accuracy predictor of the paper and the accuracy dataset it is trained on.

The predictor is an MLP on the space's one-hot features (`SearchSpace.onehot`): three hidden
layers of 400 with ReLU, a bias-free Linear(400 -> 1) and a frozen `base_acc` (the mean training
accuracy) added to its output; it predicts accuracy as a fraction. Module names and the
`base_acc` entry follow the official `AccuracyPredictor`, so state dicts are interchangeable
where the encodings agree. The original ships no training code; `fit_predictor` trains with
Adam and a per-step cosine schedule on the mean squared error (see its docstring).

The dataset is append-only JSON lines, one subnet per line (`{"arch", "accuracy", "meta"}`),
fsynced per line, so collection can be killed and resumed; a corrupt line is reported with its
number and skipped, the good rows are kept.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from onceforall.arch import Arch, SearchSpace
from onceforall.checkpoints import check_finite, read_file
from onceforall.errors import CheckpointError, OFAError, PredictorError
from onceforall.io import save_atomic
from onceforall.progress import progress_bar
from onceforall.specialize.timing import torch_threads

FORMAT = "onceforall.predictor"
VERSION = 1
ENCODING_VERSION = 1  # layout of `SearchSpace.onehot`; bump when it changes


# --------------------------------------------------------------------------- encoding
def encoding_signature(space: SearchSpace) -> dict[str, Any]:
    """What a predictor's input layout depends on: the encoding version, its width and every gene."""
    return {
        "version": ENCODING_VERSION,
        "dim": space.onehot_dim,
        "genes": [[g.label, [float(c) for c in g.choices]] for g in space.genes],
    }


# --------------------------------------------------------------------------- the predictor
class AccuracyPredictor(nn.Module):
    """MLP: features -> 3 x (Linear 400 + ReLU) -> Linear(400, 1, no bias) + base_acc (a fraction)."""

    def __init__(
        self,
        n_features: int,
        hidden_size: int = 400,
        n_layers: int = 3,
        space: str | None = None,
        encoding: dict | None = None,
    ):
        super().__init__()
        self.n_features, self.hidden_size, self.n_layers = n_features, hidden_size, n_layers
        self.space, self.encoding = space, encoding
        layers: list[nn.Module] = []
        for i in range(n_layers):
            width = n_features if i == 0 else hidden_size
            layers.append(nn.Sequential(nn.Linear(width, hidden_size), nn.ReLU(inplace=True)))
        layers.append(nn.Linear(hidden_size, 1, bias=False))
        self.layers = nn.Sequential(*layers)
        self.register_buffer("base_acc", torch.zeros(1))
        self._checked: dict[int, SearchSpace] = {}  # spaces `check` accepted, by id
        self.metrics: dict | None = None

    @classmethod
    def for_space(cls, space: SearchSpace, hidden_size: int = 400, n_layers: int = 3) -> AccuracyPredictor:
        signature = encoding_signature(space)
        return cls(signature["dim"], hidden_size, n_layers, space.name, signature)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features).squeeze(-1) + self.base_acc

    def check(self, space: SearchSpace) -> None:
        """Raise PredictorError unless this predictor was trained on `space` with this encoding."""
        if self.space is not None and self.space != space.name:
            raise PredictorError(
                f"the predictor was trained on space {self.space!r}, not {space.name!r}; "
                "fit one on this space's accuracy dataset"
            )
        if self.encoding is None:
            return
        signature = encoding_signature(space)
        for key in ("version", "dim", "genes"):
            if self.encoding.get(key) != signature[key]:
                detail = "" if key == "genes" else f": {self.encoding.get(key)!r} vs {signature[key]!r}"
                raise PredictorError(
                    f"the predictor's encoding {key} differs from the space's{detail} "
                    f"(other choices or resolutions?); refit it for this space"
                )

    @torch.no_grad()
    def predict(self, space: SearchSpace, population: torch.Tensor | Arch | Sequence[Arch]) -> torch.Tensor:
        """Predicted accuracy (fraction) of every arch of a population, in one call."""
        # A search predicts every generation: check the space once, not per call (the stored
        # object, not only its id, must match: ids are reused once a space is freed).
        if self._checked.get(id(space)) is not space:
            self.check(space)
            self._checked[id(space)] = space
        if not isinstance(population, torch.Tensor):
            population = space.encode(population)
        return self(space.onehot(population.cpu().long()))

    def bind(self, space: SearchSpace) -> Callable[[torch.Tensor], torch.Tensor]:
        """`population -> predicted accuracy` for `space` (what the searches take)."""
        self.check(space)
        self.eval()
        return lambda population: self.predict(space, population)

    # ----------------------------------------------------------------- files
    def save(self, path: str | Path, metrics: dict | None = None) -> Path:
        """Write the predictor file (atomically); an existing file is replaced only if it is a predictor."""
        path = Path(path)
        if path.exists():
            try:
                ours = path.is_file() and read_file(path, "predictor file").get("format") == FORMAT
            except CheckpointError:
                ours = False
            if not ours:
                raise PredictorError(
                    f"{path} exists and is not a predictor file written by `ofa predictor fit`; it is left "
                    "untouched: give another --out"
                )
        return save_atomic(
            {
                "format": FORMAT,
                "version": VERSION,
                "space": self.space,
                "encoding": self.encoding,
                "n_features": self.n_features,
                "hidden_size": self.hidden_size,
                "n_layers": self.n_layers,
                "state_dict": self.state_dict(),
                "metrics": metrics,
            },
            path,
        )

    @classmethod
    def load(
        cls,
        path: str | Path,
        space: SearchSpace | None = None,
        *,
        trained_resolutions: Sequence[int] | None = None,
    ) -> AccuracyPredictor:
        """Read a predictor file: ours, or an official one (`specialize.official`, which needs `space`).

        With `space`, refuse one trained on another space or encoding; one trained on more
        resolutions than the space's is restricted to the space's (same predictions). Official nas/
        files do not record their resolutions: `trained_resolutions` names them when the space has
        fewer (docs/zoo.md).
        """
        from onceforall.specialize.official import load_official_predictor, restrict_predictor

        path = Path(path)
        if not path.is_file():
            raise PredictorError(f"predictor file {path} does not exist; fit one with `ofa predictor fit`")
        try:
            data = read_file(path, "predictor file")
        except CheckpointError as err:
            raise PredictorError(f"{path} is not a readable predictor file: {err}") from None
        if data.get("format") != FORMAT:
            if data.get("format") is not None:  # one of our other files: a supernet, a training state
                raise PredictorError(
                    f"{path} is a {data.get('format')!r} file, not an accuracy predictor; pass the file "
                    "`ofa predictor fit --out` wrote (or an official predictor file)"
                )
            return load_official_predictor(data, space, str(path), trained_resolutions)
        if data.get("version") != VERSION:
            raise PredictorError(f"{path}: predictor file version {data.get('version')} is not {VERSION}")
        try:
            net = cls(
                data["n_features"], data["hidden_size"], data["n_layers"], data["space"], data["encoding"]
            )
            net.load_state_dict(data["state_dict"])
            check_finite(net.state_dict(), f"predictor file {path}")
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            if isinstance(err, OFAError):
                raise PredictorError(str(err)) from None
            raise PredictorError(
                f"{path} is a damaged predictor file ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                "fit it again with `ofa predictor fit`"
            ) from None
        net.metrics = data.get("metrics")
        if space is not None:
            try:
                net.check(space)
            except PredictorError as mismatch:
                if net.space != space.name:
                    raise
                try:  # a predictor over more resolutions than the space's serves it restricted
                    net = restrict_predictor(net, space)
                except PredictorError as err:
                    raise PredictorError(f"{path}: {mismatch}; it cannot serve the space: {err}") from None
        return net.eval()


# --------------------------------------------------------------------------- fitting
@dataclass
class PredictorMetrics:
    """Held-out quality of a predictor; errors are fractions (x100 for accuracy points)."""

    n_train: int
    n_test: int
    rmse: float
    mae: float
    kendall_tau: float
    spearman: float
    epochs: int
    seconds: float
    # "accuracy": fitted to the measured top-1; "loss-calibrated": to the top-1 predicted from each
    # subnet's held-out loss (see `fit_predictor`). `measured` then holds the metrics against the top-1.
    label: str = "accuracy"
    measured: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def split(n: int, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic (seeded) train/test split of `n` rows: the first `round(holdout*n)` are test."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = round(holdout * n)
    return order[n_test:], order[:n_test]


def evaluate_predictor(predicted: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """RMSE, MAE, Kendall's tau and Spearman's rho of predictions against targets."""
    from scipy.stats import kendalltau, spearmanr

    error = predicted.double() - target.double()
    p, t = predicted.double().numpy(), target.double().numpy()
    ranked = len(t) > 2
    return {
        "rmse": error.pow(2).mean().sqrt().item(),
        "mae": error.abs().mean().item(),
        "kendall_tau": float(kendalltau(p, t).statistic) if ranked else math.nan,
        "spearman": float(spearmanr(p, t).statistic) if ranked else math.nan,
    }


def fit_predictor(
    space: SearchSpace,
    population: torch.Tensor,
    accuracy: torch.Tensor,
    holdout: float = 0.2,
    epochs: int = 200,
    lr: float = 1e-3,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    seed: int = 0,
    hidden_size: int = 400,
    n_layers: int = 3,
    threads: int = 1,
    loss: torch.Tensor | None = None,
) -> tuple[AccuracyPredictor, PredictorMetrics]:
    """Train the MLP on (population, accuracy) and report its metrics on a held-out split.

    With `loss` (each subnet's mean cross-entropy on the same held-out images as its accuracy), the
    MLP learns the accuracy predicted from the loss instead: the least-squares line of accuracy on
    loss over the training rows, applied to every row. A subnet's top-1 on a few thousand images is
    mostly counting noise (one image is 0.02-0.05 points, and subnets differ by tenths), its loss on
    the same images far less so, and the two rank subnets alike (docs/faithfulness.md). Metrics are
    then against those labels, and `measured` holds them against the held-out rows' top-1 too.

    Recipe (the original publishes none): seeded split (`holdout` share held out), the MLP trained
    on the targets standardised over the training rows (then `base_acc` = their mean and the last
    layer scaled by their standard deviation), Adam (`lr`, `weight_decay`) with a cosine decay to 0
    over all steps, mean squared error, mini-batches of `batch_size` reshuffled each epoch by a seeded
    generator. Deterministic for a given seed. Metrics are on the held-out rows (on the training
    rows if `holdout` is 0). Runs on `threads` torch threads (restored after): on a small shared
    machine one thread is far faster than several for these small matrices.
    """
    with torch_threads(threads):
        return _fit(
            space,
            population,
            accuracy,
            holdout,
            epochs,
            lr,
            batch_size,
            weight_decay,
            seed,
            hidden_size,
            n_layers,
            loss,
        )


def loss_calibrated(accuracy: torch.Tensor, loss: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Every row's accuracy as the least-squares line of accuracy on loss over `rows` predicts it."""
    x, y = loss[rows].double(), accuracy[rows].double()
    slope = ((x - x.mean()) * (y - y.mean())).sum() / (x - x.mean()).pow(2).sum().clamp_min(1e-12)
    line = y.mean() + slope * (loss.double() - x.mean())
    return line.clamp(0, 1).float()


def _fit(
    space: SearchSpace,
    population: torch.Tensor,
    accuracy: torch.Tensor,
    holdout: float,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float,
    seed: int,
    hidden_size: int,
    n_layers: int,
    subnet_loss: torch.Tensor | None = None,
) -> tuple[AccuracyPredictor, PredictorMetrics]:
    population = space._check(population)
    accuracy = torch.as_tensor(accuracy, dtype=torch.float32).flatten()
    if len(accuracy) != len(population):
        raise PredictorError(f"{len(population)} archs but {len(accuracy)} accuracies")
    if len(population) < 5:
        raise PredictorError(
            f"need at least 5 (arch, accuracy) rows to fit a predictor, got {len(population)}"
        )
    if not torch.isfinite(accuracy).all() or accuracy.min() < 0 or accuracy.max() > 1:
        raise PredictorError(
            f"accuracies must be fractions in [0, 1], got range [{accuracy.min():.4g}, {accuracy.max():.4g}]; "
            "divide percentages by 100"
        )
    if not 0 <= holdout < 1:
        raise PredictorError(f"holdout must be in [0, 1), got {holdout}")
    start = time.perf_counter()
    train, test = split(len(population), holdout, seed)
    measured = accuracy
    if subnet_loss is not None:
        loss = torch.as_tensor(subnet_loss, dtype=torch.float32).flatten()
        if len(loss) != len(accuracy) or not torch.isfinite(loss).all() or loss.min() < 0:
            raise PredictorError(
                f"need one finite, non-negative loss per row; got {len(loss)} for {len(accuracy)} rows"
            )
        accuracy = loss_calibrated(accuracy, loss, train)
    features = space.onehot(population)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AccuracyPredictor.for_space(space, hidden_size, n_layers)
    # The MLP learns standardised targets: subnets differ by tenths of a point (0.001-0.005 as
    # fractions), far below the freshly initialised MLP's output, which it would otherwise spend its
    # few hundred rows shrinking (held-out tau 0.29 against 0.66 on 260 subnets of the shipped space).
    # The scale is folded into the bias-free last layer afterwards, so the file is the official layout.
    center = accuracy[train].mean()
    scale = accuracy[train].std().clamp_min(1e-4) if len(train) > 1 else torch.tensor(1.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * steps_per_epoch))
    generator = torch.Generator().manual_seed(seed + 1)
    x_train, y_train = features[train], (accuracy[train] - center) / scale
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=generator)
        for i in range(0, len(train), batch_size):
            batch = order[i : i + batch_size]
            loss = nn.functional.mse_loss(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        model.layers[-1].weight.mul_(scale)
        model.base_acc.fill_(center.item())
    rows = test if len(test) else train
    with torch.no_grad():
        predicted = model(features[rows])
    scores = evaluate_predictor(predicted, accuracy[rows])
    metrics = PredictorMetrics(
        len(train),
        len(test),
        **scores,
        epochs=epochs,
        seconds=time.perf_counter() - start,
        label="accuracy" if subnet_loss is None else "loss-calibrated",
        measured=None if subnet_loss is None else evaluate_predictor(predicted, measured[rows]),
    )
    return model, metrics


# --------------------------------------------------------------------------- the dataset
def _accuracy(value: Any) -> float:
    """A row's accuracy: a number in [0, 1] (a string, a boolean or a percentage is a malformed row)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"accuracy {value!r} is not a fraction in [0, 1]")
    return float(value)


def _loss(value: Any) -> float | None:
    """A row's optional mean held-out loss: absent, or a finite non-negative number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"loss {value!r} is not a finite non-negative number")
    return float(value)


@dataclass
class AccuracyRecord:
    arch: Arch
    accuracy: float
    meta: dict = field(default_factory=dict)
    loss: float | None = None  # mean cross-entropy on the same images (rows written since #23)


class AccuracyDataset:
    """Append-only JSON lines of (arch, accuracy, meta), fsynced per line; tolerant reader."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.problems: list[tuple[int, str]] = []

    def read(self, warn: bool = True) -> list[AccuracyRecord]:
        """Every good row; malformed lines go to `problems` as (line number, reason) and are skipped."""
        self.problems = []
        if not self.path.is_file():
            return []
        records = []
        with open(self.path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                    record = AccuracyRecord(
                        Arch.from_dict(row["arch"]),
                        _accuracy(row["accuracy"]),
                        row.get("meta", {}),
                        _loss(row.get("loss")),
                    )
                except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
                    truncated = not raw.endswith(b"\n")
                    reason = "truncated last line" if truncated else f"malformed row ({err})"
                    self.problems.append((number, reason))
                    continue
                records.append(record)
        if warn:
            for number, reason in self.problems:
                warnings.warn(
                    f"{self.path}:{number}: {reason}; skipped (the good rows are kept)", stacklevel=2
                )
        return records

    def __len__(self) -> int:
        return len(self.read(warn=False))

    def append(
        self, arch: Arch, accuracy: float, meta: dict | None = None, loss: float | None = None
    ) -> None:
        """Add one row and make it durable (one write, then fsync) before returning."""
        row = {"arch": arch.to_dict(), "accuracy": float(accuracy), "meta": meta or {}}
        if loss is not None:
            row["loss"] = float(loss)
        line = json.dumps(row) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def repair(self) -> int | None:
        """Move a partially written last line (a killed writer) to `<path>.corrupt`; its line number."""
        if not self.path.is_file():
            return None
        with open(self.path, "rb+") as handle:
            data = handle.read()
            if not data or data.endswith(b"\n"):
                return None
            cut = data.rfind(b"\n") + 1
            with open(self.path.with_name(self.path.name + ".corrupt"), "ab") as side:
                side.write(data[cut:] + b"\n")
            handle.truncate(cut)
            return data[:cut].count(b"\n") + 1

    def population(self, space: SearchSpace, warn: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(population [N, n_genes], accuracy [N]) of the rows; all must belong to `space`."""
        records = self.read(warn)
        if not records:
            first = f" (line {self.problems[0][0]}: {self.problems[0][1]})" if self.problems else ""
            raise PredictorError(
                f"accuracy dataset {self.path} has no usable rows{first}; is it a file of `ofa acc-dataset`?"
            )
        others = {r.arch.space for r in records} - {space.name}
        if others:
            raise PredictorError(
                f"accuracy dataset {self.path} holds archs of space(s) {sorted(others)}, not {space.name!r}"
            )
        population = space.encode([r.arch for r in records])
        return population, torch.tensor([r.accuracy for r in records])

    def losses(self) -> torch.Tensor:
        """Every usable row's mean held-out loss, in the order of `population`."""
        records = self.read(warn=False)
        missing = sum(r.loss is None for r in records)
        if missing:
            raise PredictorError(
                f"{missing} of {len(records)} rows of {self.path} have no loss (written before losses were "
                "recorded); score the subnets again with `ofa acc-dataset` into a new file, or fit to the "
                "accuracy (--label accuracy)"
            )
        return torch.tensor([r.loss for r in records])


def unique_samples(space: SearchSpace, n: int, seed: int = 0) -> torch.Tensor:
    """`n` distinct canonical subnets (resolution included), drawn in a fixed order for a seed."""
    total = space.count(include_resolution=True)
    if n > total:
        raise PredictorError(f"space {space.name!r} has only {total} distinct subnets; asked for {n}")
    generator = torch.Generator().manual_seed(seed)
    seen: dict[tuple, None] = {}
    for _ in range(1000):
        batch = space.canonical(space.sample(max(64, 2 * (n - len(seen))), generator))
        for row in batch.tolist():
            seen.setdefault(tuple(row), None)
            if len(seen) == n:
                return torch.tensor(list(seen), dtype=torch.long)
    raise PredictorError(f"could not draw {n} distinct subnets of {space.name!r}")


@dataclass
class CollectSummary:
    path: Path
    planned: int
    skipped: int
    evaluated: int
    seconds: float


def _refuse_foreign(dataset: AccuracyDataset) -> None:
    """Refuse to append to a file that is not an accuracy dataset (a latency table, notes, a checkpoint)."""
    path = dataset.path
    if path.exists() and not path.is_file():
        raise PredictorError(f"{path} is a folder, not an accuracy dataset file; give a file path as --out")
    if not path.is_file() or not path.stat().st_size:
        return
    with open(path, "rb") as handle:
        first = handle.readline(1 << 16)
    try:
        row = json.loads(first)
        Arch.from_dict(row["arch"])
        _accuracy(row["accuracy"])
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        if first.endswith(b"\n"):  # a complete line that is no row: not a file of ours
            raise PredictorError(
                f"{path} exists and is not an accuracy dataset (its first line is not an (arch, accuracy) "
                "row); it is left untouched: give another --out"
            ) from None


def _check_same_setting(old: dict, new: dict, path: Path) -> None:
    """Refuse to mix rows scored differently (another supernet, dataset or image count) in one file."""
    for key in sorted(old.keys() & new.keys() - {"seconds", "shard"}):
        if old[key] != new[key]:
            raise PredictorError(
                f"{path} holds subnets scored with {key}={old[key]!r}, this run uses {new[key]!r}; "
                "use another --out, or the same settings to resume"
            )


def collect_accuracy_dataset(
    evaluate_fn: Callable[[Arch], float | tuple[float, float]],
    space: SearchSpace,
    n: int,
    path: str | Path,
    seed: int = 0,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    meta: dict | None = None,
) -> CollectSummary:
    """Evaluate `n` distinct random subnets (this shard's share), appending each result as it is made.

    The subnets are a fixed list for (space, n, seed); shard (rank, world) takes every world-th one
    from rank. Subnets already in the file are skipped, so a killed run resumes where it stopped
    (rows whose `meta` differs from this run's, e.g. another supernet, are refused);
    a partially written last line is moved to `<path>.corrupt`. `evaluate_fn(arch)` returns the
    accuracy as a fraction, or (accuracy, mean loss on the same images).
    """
    rank, world = shard
    if not 0 <= rank < world:
        raise PredictorError(f"shard {rank}/{world} is invalid: need 0 <= rank < world")
    dataset = AccuracyDataset(path)
    _refuse_foreign(dataset)
    cut = dataset.repair()
    if cut is not None:
        warnings.warn(
            f"{dataset.path}:{cut}: truncated last line moved to {dataset.path.name}.corrupt", stacklevel=2
        )
    done = set()
    for record in dataset.read():
        _check_same_setting(record.meta, meta or {}, dataset.path)
        if record.arch.space == space.name:
            done.add(tuple(space.canonical(space.encode(record.arch))[0].tolist()))
    mine = unique_samples(space, n, seed)[rank::world]
    todo = [row for row in mine.tolist() if tuple(row) not in done]
    start = time.perf_counter()
    with progress_bar(progress) as bar:
        task = bar.add_task("evaluating subnets", total=len(mine), completed=len(mine) - len(todo))
        for arch in space.decode(torch.tensor(todo, dtype=torch.long).reshape(-1, space.n_genes)):
            began = time.perf_counter()
            result = evaluate_fn(arch)
            accuracy, loss = result if isinstance(result, tuple) else (result, None)
            accuracy = float(accuracy)
            row_meta = {
                **(meta or {}),
                "seconds": round(time.perf_counter() - began, 4),
                "shard": [rank, world],
            }
            dataset.append(arch, accuracy, row_meta, loss)
            bar.update(task, advance=1, description=f"evaluating subnets (last {100 * accuracy:.2f} %)")
    return CollectSummary(
        dataset.path, len(mine), len(mine) - len(todo), len(todo), time.perf_counter() - start
    )
