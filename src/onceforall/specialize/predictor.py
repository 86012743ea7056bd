"""The accuracy predictor of the paper (its dataset: `specialize/accuracy_dataset.py`).

The predictor is an MLP on the space's one-hot features (`SearchSpace.onehot`): three hidden
layers of 400 with ReLU, a bias-free Linear(400 -> 1) and a frozen `base_acc` (the mean training
accuracy) added to its output; it predicts accuracy as a fraction. Module names and the
`base_acc` entry follow the official `AccuracyPredictor`, so state dicts are interchangeable
where the encodings agree. The original ships no training code; `fit_predictor` trains with
Adam and a per-step cosine schedule on the mean squared error (see its docstring).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from onceforall.arch import Arch, SearchSpace
from onceforall.checkpoints import check_finite, read_file
from onceforall.errors import CheckpointError, OFAError, PredictorError
from onceforall.io import save_atomic
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
