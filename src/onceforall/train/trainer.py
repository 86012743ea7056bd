"""Progressive shrinking: one command runs every phase, each starting from the previous one's weights.

Everything random is a function of (seed, phase, epoch, batch, subnet index) or of RNG states in the
checkpoint, so a run killed at any point and resumed ends with exactly the weights of an
uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from onceforall.arch import Arch
from onceforall.checkpoints import STATE_FORMAT, read_file
from onceforall.data.loader import mix_seed
from onceforall.errors import ConfigError, OFAError
from onceforall.io import FolderLock, remove_stale_tmp, save_atomic
from onceforall.registry import FAMILIES, load_supernet, save_supernet
from onceforall.spaces.common import Supernet
from onceforall.train import sampling
from onceforall.train.data import run_data
from onceforall.train.distributed import all_reduce_sum, average_gradients, barrier, init_world
from onceforall.train.evaluate import SubnetEvaluator
from onceforall.train.recipe import Phase, Recipe, recipe_from_dict
from onceforall.train.schedule import learning_rate
from onceforall.train.step import accumulate_gradients


class TrainingDiverged(OFAError):
    """The loss became NaN or infinite."""


def _without_lr(phase: dict[str, Any], unfinished: bool) -> dict[str, Any]:
    """A phase as `_check_resumable` compares it: the learning rates of an unfinished one may change."""
    return {k: v for k, v in phase.items() if not (unfinished and k in ("lr", "warmup_lr"))}


def build_supernet(recipe: Recipe, n_classes: int, in_channels: int) -> Supernet:
    """The recipe's supernet (its family, lists and strides) for data of this shape."""
    args = recipe.net.build_args(n_classes, in_channels, recipe.data.resolutions)
    try:
        return FAMILIES[recipe.net.family](**args)
    except OFAError as err:
        raise ConfigError(f"net: {err}") from None


def effective_phases(recipe: Recipe) -> list[Phase]:
    """The phases to run; with `no_progressive_shrinking`, everything after the first is one elastic phase.

    The merged phase samples uniformly, as the paper's ablation does, even if the recipe has sandwich phases.
    With `init` the teacher is the file's max subnet, so the recipe has no teacher phase: every phase merges.
    """
    phases = list(recipe.phases)
    teacher_phases = 0 if recipe.init is not None else 1
    if not recipe.no_progressive_shrinking or len(phases) <= teacher_phases:
        return phases
    rest = phases[teacher_phases:]
    merged = replace(
        rest[-1],
        name="all-elastic",
        epochs=sum(p.epochs for p in rest),
        warmup_epochs=rest[0].warmup_epochs,
        subnets_per_step=max(p.subnets_per_step for p in rest),
        ks=recipe.net.lists().get("ks_list"),
        expand=recipe.net.lists()["expand_ratio_list"],
        depth=recipe.net.lists()["depth_list"],
        width=recipe.net.lists().get("width_mult_list"),
        sort_channels=None,
        sandwich=False,
        train_largest=False,
        inplace_distill=False,
    )
    return [*phases[:teacher_phases], merged]


def parameter_groups(net: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on everything but BN and biases (by name, as the original; kernel matrices are decayed)."""
    decay, no_decay = [], []
    for name, param in net.named_parameters():
        (no_decay if "bn" in name or "bias" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def sgd(params, lr: float, momentum: float = 0.9, nesterov: bool = True) -> torch.optim.SGD:
    """SGD with PyTorch's fused kernel: one pass per tensor instead of several, 3.5-4.6x faster on CPU
    for a w1.0 supernet's 7.7M parameters.

    The fused kernel cannot mix parameters with and without a momentum buffer (a block first used
    after others), so every buffer starts at zero: `0 * momentum + grad` is the `clone(grad)` the
    unfused first step uses, so the updates are the same.
    """
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, fused=True)
    if momentum:
        for group in optimizer.param_groups:
            for param in group["params"]:
                optimizer.state[param]["momentum_buffer"] = torch.zeros_like(param)
    return optimizer


@dataclass
class Position:
    """Where a run is: the next (phase, epoch, batch) to train, and the phase's step counter."""

    phase: int = 0
    epoch: int = 0
    batch: int = 0
    step: int = 0


class Trainer:
    """Runs a recipe in `out`: checkpoints, per-phase supernets, a JSONL log and a final `supernet.pt`."""

    def __init__(
        self,
        recipe: Recipe,
        out: str | Path,
        *,
        resume: bool = False,
        device: str | torch.device | None = None,
        progress: bool = True,
        micro_batches: int = 1,
    ):
        self.recipe, self.out = recipe, Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(
                f"--out {self.out} is a file; give a folder for the run (checkpoints, log.jsonl, supernet.pt)"
            )
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.world = init_world(self.device)
        self.console = Console(quiet=not (progress and self.world.is_main))
        self.micro_batches = micro_batches
        self._resumed_optimizer: dict[str, Any] | None = None
        self.phases = effective_phases(recipe)
        if recipe.data.batch_size % (self.world.size * micro_batches):
            raise ConfigError(
                f"data.batch_size {recipe.data.batch_size} must divide by ranks x micro-batches "
                f"({self.world.size} x {micro_batches})"
            )
        self.data = run_data(
            recipe.data,
            recipe.seed,
            recipe.bn_calibration_images,
            recipe.bn_calibration_batch,
            recipe.bn_calibration_augment,
            self.world,
            self.device,
        )
        self.loader = self.data.train
        torch.manual_seed(recipe.seed)  # the same initial weights on every rank and in every run
        self.net = build_supernet(recipe, self.data.info.n_classes, self.data.info.in_channels)
        self.net.to(self.device, memory_format=torch.channels_last)
        if recipe.init is not None:
            self._load_init(Path(recipe.init))  # a resumed run's checkpoint then overwrites these weights
        self.teacher: nn.Module | None = None
        self.position = Position()
        self.history: list[dict[str, Any]] = []
        state_path = self.out / "checkpoint.pt"
        with self._folder_lock():  # a run training into `out` now makes this one fail here
            if resume and state_path.is_file():
                self._load_state(state_path)
            elif not resume and state_path.is_file():
                raise ConfigError(
                    f"{self.out} already holds a run; pass --resume to continue it or choose another --out"
                )

    def _folder_lock(self) -> FolderLock | contextlib.nullcontext:
        """The run folder's lock (main rank): one writer at a time, so two runs never mix their phases.

        Taking it also removes the temporary files of an atomic write a kill -9 interrupted: with
        the lock held, no other writer can be using them.
        """
        if not self.world.is_main:
            return contextlib.nullcontext()
        lock = FolderLock(self.out, "--out (a run folder is written by one `ofa train` at a time)").acquire()
        remove_stale_tmp(self.out)
        return lock

    # ------------------------------------------------------------------ state
    def _state(self, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "recipe": self.recipe.to_dict(),
            "position": vars(self.position).copy(),
            "model": self.net.state_dict(),
            "optimizer": None if optimizer is None else optimizer.state_dict(),
            "teacher": None if self.teacher is None else self.teacher.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])},
            "history": self.history,
        }

    def _save_state(self, optimizer: torch.optim.Optimizer | None) -> None:
        if self.world.is_main:
            save_atomic(self._state(optimizer), self.out / "checkpoint.pt")
        barrier(self.world)

    def _load_state(self, path: Path) -> None:
        state = read_file(path, "training state")
        if state.get("format") != STATE_FORMAT:
            raise ConfigError(f"{path} is not a training state written by `ofa train`")
        self._check_resumable(recipe_from_dict(state["recipe"]), path, state["position"]["phase"])
        self.net.load_state_dict(state["model"])
        self.position = Position(**state["position"])
        self.history = list(state["history"])
        if state["teacher"] is not None:
            self.teacher = self._make_teacher(state["teacher"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate((3, tuple(state["rng"]["python"]), None))
        self._resumed_optimizer = state["optimizer"]

    def _load_init(self, path: Path) -> None:
        """Start from the weights of a supernet file (`init`): ours (e.g. a teacher run's `supernet.pt`, so
        that several recipes share one teacher) or an official checkpoint (transfer learning). A classifier
        for another class count is replaced by this recipe's freshly initialised one, and the run says so.
        """
        if not path.is_file():
            raise ConfigError(
                f"init = {str(path)!r} does not exist; give a supernet file written by `ofa train` "
                "(RUN/supernet.pt or RUN/phase<i>_<name>.pt) or an official checkpoint, relative to the "
                "working directory"
            )
        source = load_supernet(path).net.state_dict()
        target = self.net.state_dict()
        head = {k for k in target if k.startswith("classifier.")}
        replaced = sorted(k for k in head if k in source and source[k].shape != target[k].shape)
        mismatched = sorted(k for k in source.keys() | target.keys() if k not in source or k not in target)
        mismatched = mismatched or sorted(
            k for k in target if k not in replaced and source[k].shape != target[k].shape
        )
        if mismatched:
            raise ConfigError(
                f"init = {str(path)!r} is a different supernet than this recipe's net (first of "
                f"{len(mismatched)} differing keys: {mismatched[:3]}); use the same net settings as the file "
                "(family, widths, lists, strides; data.channels: 3 for a colour supernet on grey images)"
            )
        self.net.load_state_dict({k: target[k] if k in replaced else source[k] for k in target})
        if replaced:
            old, new = source[replaced[0]].shape[0], target[replaced[0]].shape[0]
            self.console.print(
                f"init: {path} classifies {old} classes, the data {new}: its classifier is replaced by a new "
                "one; every other weight is the file's",
                markup=False,
            )

    def _check_resumable(self, saved: Recipe, path: Path, finished: int = 0) -> None:
        """A run resumes under its own recipe, or one that only appends phases to it or changes the
        learning rates (`lr`, `warmup_lr`) of phases not finished yet (`finished`: how many are), the
        fix `TrainingDiverged` suggests."""
        old, new = saved.to_dict(), self.recipe.to_dict()
        changed = sorted(k for k in old if k != "phases" and old[k] != new[k])
        n_old = len(old["phases"])
        if len(new["phases"]) < n_old or any(
            _without_lr(a, i >= finished) != _without_lr(b, i >= finished)
            for i, (a, b) in enumerate(zip(old["phases"], new["phases"]))
        ):
            changed.append("phases")
        if changed:
            raise ConfigError(
                f"the recipe changed since {path} was written (keys {changed}); resume with the same "
                "recipe, or one that only appends phases or changes lr/warmup_lr of unfinished phases"
            )

    def _make_teacher(self, state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
        """A frozen copy of the max subnet; train-mode BN (batch statistics) that never updates its buffers."""
        self.net.set_max_net()
        teacher = self.net.get_active_subnet().to(self.device, memory_format=torch.channels_last)
        if state_dict is not None:
            teacher.load_state_dict(state_dict)
        for module in teacher.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = 0.0
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        return teacher.requires_grad_(False).train()

    # ------------------------------------------------------------------ sampling
    def _allowed(self, phase: Phase) -> list[list[int]]:
        return sampling.allowed_choices(
            self.net.search_space(), phase, getattr(self.net, "width_mult_list", None)
        )

    def _sample(self, phase_index: int, step: int, k: int) -> dict[str, list]:
        """The k-th subnet of a step: uniform over the phase's choices, a pure function of its indices.

        Subnet 0 is the phase's largest in a sandwich or train_largest phase, subnet 1 its smallest in a
        sandwich phase.
        """
        phase = self.phases[phase_index]
        space, allowed = self.net.search_space(), self._allowed(phase)
        if (k == 0 and (phase.sandwich or phase.train_largest)) or (k == 1 and phase.sandwich):
            return sampling.corner(space, allowed, largest=k == 0).subnet_kwargs()
        seed = mix_seed(self.recipe.seed, phase_index, step, k)
        return sampling.sample(space, allowed, seed).subnet_kwargs()

    # ------------------------------------------------------------------ run
    def run(self) -> Path:
        """Train every remaining phase, holding the run folder's lock; returns the path of the final supernet."""
        with self._folder_lock():
            while self.position.phase < len(self.phases):
                self._run_phase(self.position.phase)
                self.position = Position(phase=self.position.phase + 1)
                self._resumed_optimizer = None
                self._save_state(None)
            final = self.out / "supernet.pt"
            if self.world.is_main:
                save_supernet(self.net, final, recipe=self.recipe.to_dict(), history=self.history)
        return final

    def _run_phase(self, index: int) -> None:
        phase, recipe, pos = self.phases[index], self.recipe, self.position
        starting = pos.epoch == 0 and pos.batch == 0 and self._resumed_optimizer is None
        if starting and phase.sort_channels is not None:
            self.net.re_organize_middle_weights(phase.sort_channels)
        if phase.distill and self.teacher is None:
            self.teacher = self._make_teacher()
        optimizer = sgd(
            parameter_groups(self.net, recipe.weight_decay), phase.lr, recipe.momentum, recipe.nesterov
        )
        if self._resumed_optimizer is not None:
            optimizer.load_state_dict(self._resumed_optimizer)
        total_epochs, n_batches = phase.warmup_epochs + phase.epochs, len(self.loader)
        self._log({"event": "phase_start", "phase": phase.name, "epochs": total_epochs, "batches": n_batches})
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        with progress:
            task = progress.add_task(phase.name, total=total_epochs * n_batches, completed=pos.step, info="")
            for epoch in range(pos.epoch, total_epochs):
                self.loader.set_epoch(epoch, pos.batch)
                seen, loss_sum, started = 0, 0.0, time.perf_counter()
                for batch, (images, labels) in enumerate(self.loader, start=pos.batch):
                    lr = learning_rate(
                        pos.step, n_batches, phase.epochs, phase.lr, phase.warmup_epochs, phase.warmup_lr
                    )
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    loss = self._step(index, phase, images, labels, optimizer)
                    pos.step, pos.batch = pos.step + 1, batch + 1
                    seen, loss_sum = seen + len(labels) * self.world.size, loss_sum + loss
                    speed = seen / (time.perf_counter() - started)
                    progress.update(
                        task,
                        advance=1,
                        info=f"epoch {epoch + 1}/{total_epochs} loss {loss:.3f} {speed:.0f} img/s",
                    )
                    if pos.step % recipe.log_every == 0:
                        self._log(
                            {
                                "event": "step",
                                "phase": phase.name,
                                "epoch": epoch,
                                "step": pos.step,
                                "loss": loss,
                                "lr": lr,
                                "images_per_s": speed,
                            }
                        )
                    if pos.step % recipe.checkpoint_every == 0 and pos.batch < n_batches:
                        self._save_state(optimizer)
                pos.epoch, pos.batch = epoch + 1, 0
                self._log(
                    {
                        "event": "epoch",
                        "phase": phase.name,
                        "epoch": epoch,
                        "loss": loss_sum / max(1, n_batches),
                    }
                )
                if (
                    recipe.validate_every
                    and (epoch + 1) % recipe.validate_every == 0
                    and epoch + 1 < total_epochs
                ):
                    self.validate(index)
                self._save_state(optimizer)
        results = self.validate(index)
        if self.world.is_main:
            save_supernet(self.net, self.out / f"phase{index}_{phase.name}.pt", validation=results)

    def _step(self, index: int, phase: Phase, images, labels, optimizer) -> float:
        optimizer.zero_grad(set_to_none=True)
        subnets = [self._sample(index, self.position.step, k) for k in range(phase.subnets_per_step)]
        loss = accumulate_gradients(
            self.net,
            self.teacher if phase.distill and not phase.inplace_distill else None,
            images,
            labels,
            subnets,
            label_smoothing=self.recipe.label_smoothing,
            kd_ratio=self.recipe.kd_ratio,
            micro_batches=self.micro_batches,
            autocast=torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"),
            inplace_distill=phase.inplace_distill,  # subnets[0] is the largest: sandwich is required
        )
        value = torch.tensor([loss], dtype=torch.float64)
        all_reduce_sum(value, self.world)
        value = value.item() / self.world.size
        if not math.isfinite(value):
            raise TrainingDiverged(self._divergence_message(value, phase))
        average_gradients(list(self.net.parameters()), self.world)
        optimizer.step()
        return value

    def _divergence_message(self, value: float, phase: Phase) -> str:
        """What happened, and the fix that works from here: whether a checkpoint exists decides it."""
        where = f"the loss became {value} in phase '{phase.name}' at step {self.position.step}"
        index = next((i for i, p in enumerate(self.recipe.phases) if p.name == phase.name), None)
        key = f"phases[{index}].lr" if index is not None else "the phase's lr"
        state = self.out / "checkpoint.pt"
        if state.is_file():
            return (
                f"{where}; the last good state is {state}. Lower {key} (now {phase.lr:g}) in the recipe and "
                "run again with --resume (a changed lr or warmup_lr of an unfinished phase is accepted)."
            )
        return (
            f"{where}, before the first checkpoint was written (every checkpoint_every = "
            f"{self.recipe.checkpoint_every} steps and at each epoch's end). Lower {key} (now {phase.lr:g}) "
            "in the recipe and run the same command again: there is nothing to resume."
        )

    # ------------------------------------------------------------------ validation
    def corner_archs(self, index: int) -> list[Arch]:
        """The validation grid: {min, max} of each elastic choice of the phase x {min, max} resolution."""
        allowed = self._allowed(self.phases[index])
        return sampling.corner_grid(self.net.search_space(), allowed, self.recipe.data.resolutions)

    def validate(self, index: int) -> list[dict[str, Any]]:
        """Holdout accuracy of the corner subnets (BN recalibrated), logged and printed as a table."""
        evaluator = SubnetEvaluator(self.net, self.data.calibration, self.data.holdout, self.world)
        rows, archs = [], self.corner_archs(index)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        ) as progress:
            task = progress.add_task(f"validating '{self.phases[index].name}'", total=len(archs))
            for arch in archs:
                top1, loss = evaluator(arch)
                # Each field's last gene stands for the corner (uniform per field, but ResNet's stem flag).
                fields = {f: getattr(arch, f)[-1] for f in sampling.FIELDS if getattr(arch, f) is not None}
                rows.append({"image_size": arch.image_size, **fields, "top1": top1, "loss": loss})
                progress.advance(task)
        self.net.set_max_net()
        phase = self.phases[index].name
        self._log(
            {
                "event": "validate",
                "phase": phase,
                "results": rows,
                "mean_top1": sum(r["top1"] for r in rows) / len(rows),
            }
        )
        table = Table(title=f"phase '{phase}': holdout accuracy of corner subnets (BN recalibrated)")
        fields = [f for f in sampling.FIELDS if rows and f in rows[0]]
        for column in ("R", *(f.upper() for f in fields), "top-1 %", "loss"):
            table.add_column(column, justify="right")
        for r in rows:
            table.add_row(
                str(r["image_size"]), *(f"{r[f]:g}" for f in fields), f"{r['top1']:.2f}", f"{r['loss']:.3f}"
            )
        self.console.print(table)
        return rows

    def _log(self, record: dict[str, Any]) -> None:
        record = {"time": time.time(), **record}
        if record["event"] in ("validate", "phase_start"):
            self.history.append(record)
        if self.world.is_main:
            with open(self.out / "log.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")
