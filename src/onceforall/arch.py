"""One subnet (`Arch`) and the space of all subnets (`SearchSpace`), batched.

A population is a LongTensor [N, n_genes] of choice indices: one column per gene (resolution,
each stage's depth, each block's kernel size and expand ratio, ...). Sampling, mutation,
crossover, encoding and efficiency models work on whole populations at once.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from onceforall.errors import ArchError
from onceforall.io import write_text_atomic

ARCH_FORMAT = "onceforall.arch"
ARCH_VERSION = 1
LIST_FIELDS = ("ks", "e", "d", "w")
DEFAULT_MUTATION = {"resolution": 0.5, "depth": 0.1, "block": 0.1, "width": 0.1}


@dataclass(frozen=True)
class Arch:
    """One subnet of a space, input resolution included; the official dict plus `image_size`."""

    space: str
    image_size: int
    d: tuple[int, ...]
    e: tuple[float, ...]
    ks: tuple[int, ...] | None = None
    w: tuple[int, ...] | None = None

    def subnet_kwargs(self) -> dict[str, list]:
        """Keyword arguments for the supernets' `set_active_subnet`."""
        return {name: list(getattr(self, name)) for name in LIST_FIELDS if getattr(self, name) is not None}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": ARCH_FORMAT, "version": ARCH_VERSION, "space": self.space}
        out["image_size"] = self.image_size
        out.update(self.subnet_kwargs())
        return out

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict())
        if path is not None:
            write_text_atomic(text + "\n", path)
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any], space: str | None = None) -> Arch:
        """Read our JSON form, or an official dict given `space`.

        Official dicts: `{"ks", "e", "d"[, "image_size"]}` (the accuracy dataset's) and the
        tutorial's and evolution finder's `{"wid": None, "ks", "e", "d", "r": [160]}`. `r` is
        the input size, as a one-element list or a number; `wid` is the old API's
        width-multiplier index, which only None can honour (ResNet widths are the list `w`).
        """
        if not isinstance(data, dict):
            raise ArchError(f"an arch must be a JSON object, got {type(data).__name__}")
        version = data.get("version", ARCH_VERSION)
        if version != ARCH_VERSION:
            raise ArchError(
                f"arch format version {version} is not supported; this library reads {ARCH_VERSION}"
            )
        known = {f.name for f in fields(cls)} | {"format", "version", "r", "wid"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ArchError(f"unknown arch keys {unknown}; expected some of {sorted(known)}")
        if data.get("wid") is not None:
            # MobileNetV3 / ProxylessNAS supernets have one width and ResNet archs say `w`, so a
            # non-None width index has nothing to select; dropping it would change the subnet.
            raise ArchError(
                f"arch.wid = {data['wid']!r} cannot be honoured: 'wid' (the old official width-multiplier "
                "index) must be None, as the tutorial writes it; OFA-MobileNetV3/ProxylessNAS supernets "
                "have one width, and ResNet width indices go in 'w' (6 indices into width_mult_list)"
            )
        space = data.get("space", space)
        if space is None:
            raise ArchError("the arch names no space; pass space=... or add a 'space' key")
        size = data.get("image_size")
        if "r" in data:
            r = _official_size(data["r"])
            if size is not None and size != r:
                raise ArchError(f"arch has image_size = {size!r} and r = {data['r']!r}; give one input size")
            size = r
        if size is None:
            raise ArchError("the arch has no 'image_size' (input resolution)")
        lists = {name: _as_tuple(name, data[name]) for name in LIST_FIELDS if name in data}
        if "d" not in lists or "e" not in lists:
            raise ArchError("an arch needs at least the lists 'd' (depths) and 'e' (expand ratios)")
        return cls(space=space, image_size=size, **lists)

    @classmethod
    def from_json(cls, text_or_path: str | Path, space: str | None = None) -> Arch:
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            path = Path(text)
            if not path.is_file():
                raise ArchError(f"arch file {path} does not exist")
            text = path.read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ArchError(f"arch JSON is malformed: {err}") from None
        return cls.from_dict(data, space)


def _official_size(value: Any) -> int:
    """The input size of an official dict's `r`: `[160]` (as the tutorial writes it) or `160`."""
    size = value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value
    if isinstance(size, bool) or not isinstance(size, numbers.Integral):
        raise ArchError(
            f"arch.r = {value!r} is not one input size; expected an integer or a one-element list such as [160]"
        )
    return int(size)


def _as_tuple(name: str, value: Any) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ArchError(f"arch.{name} must be a list, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class Gene:
    """One column of a population: a position of an Arch field and its allowed values."""

    field: str
    position: int | None
    choices: tuple
    kind: str
    group: int
    slot: int | None = None

    @property
    def label(self) -> str:
        return self.field if self.position is None else f"{self.field}[{self.position}]"


@dataclass(frozen=True)
class Stage:
    """A unit of blocks with elastic depth: slot j is active iff j < base + depth value."""

    depth_gene: int
    base: int
    slots: tuple[int, ...]


@dataclass(frozen=True)
class Site:
    """A layer position of the subnets: its spec is `spec(*values of genes)`; it runs iff `slot` is active."""

    genes: tuple[int, ...]
    slot: int | None
    spec: Callable[..., Any]


GeneKey = str | tuple[str, int]  # "image_size", or a list field and its position: ("ks", 3)


class GeneTable:
    """The genes of a space declared by name, in population order; sites and stages look them up.

    Each gene mutates alone unless it names the group it mutates with (a block's kernel size and
    expand ratio together); group numbers follow the order of first use.
    """

    def __init__(self) -> None:
        self.genes: list[Gene] = []
        self._index: dict[tuple[str, int | None], int] = {}
        self._groups: dict[Any, int] = {}

    def add(
        self,
        name: str,
        position: int | None,
        choices: Sequence[Any],
        kind: str,
        slot: int | None = None,
        mutates_with: Any = None,
    ) -> None:
        key = (name, position)
        if key in self._index:
            raise ArchError(f"gene {name}[{position}] is declared twice")
        group = self._groups.setdefault(key if mutates_with is None else mutates_with, len(self._groups))
        self._index[key] = len(self.genes)
        self.genes.append(Gene(name, position, tuple(choices), kind, group, slot))

    def __getitem__(self, key: GeneKey) -> int:
        name, position = (key, None) if isinstance(key, str) else key
        try:
            return self._index[(name, position)]
        except KeyError:
            raise ArchError(f"the space declares no gene {name}[{position}]") from None

    def site(self, reads: Sequence[GeneKey], spec: Callable[..., Any], slot: int | None = None) -> Site:
        """A layer whose spec is `spec(*values of the genes it reads)`, run iff `slot` is active."""
        return Site(tuple(self[key] for key in reads), slot, spec)

    def stage(self, depth: GeneKey, slots: Sequence[int], base: int = 0) -> Stage:
        return Stage(self[depth], base, tuple(slots))

    def space(self, name: str, stages: Sequence[Stage], n_slots: int, sites: Sequence[Site]) -> SearchSpace:
        return SearchSpace(name, tuple(self.genes), tuple(stages), n_slots, tuple(sites))


@dataclass(frozen=True)
class SearchSpace:
    """All subnets of a supernet: the genes, their choices and the depth structure."""

    name: str
    genes: tuple[Gene, ...]
    stages: tuple[Stage, ...]
    n_slots: int
    sites: tuple[Site, ...] = field(default=(), compare=False, repr=False)

    # ----------------------------------------------------------------- layout
    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def resolutions(self) -> tuple[int, ...]:
        return self.genes[self._gene_index("image_size", None)].choices

    def field_genes(self, name: str) -> list[int]:
        return [i for i, g in enumerate(self.genes) if g.field == name]

    def _gene_index(self, name: str, position: int | None) -> int:
        for i, g in enumerate(self.genes):
            if g.field == name and g.position == position:
                return i
        raise KeyError((name, position))

    # ----------------------------------------------------------------- arch <-> population
    def validate(self, arch: Arch) -> Arch:
        """Return `arch` if it belongs to this space, else raise ArchError naming the field."""
        self.encode(arch)
        return arch

    def encode(self, archs: Arch | Sequence[Arch]) -> torch.Tensor:
        """Choice indices [N, n_genes] of one or several archs."""
        archs = [archs] if isinstance(archs, Arch) else list(archs)
        return torch.tensor([self._encode_one(a) for a in archs], dtype=torch.long).reshape(-1, self.n_genes)

    def _encode_one(self, arch: Arch) -> list[int]:
        if not isinstance(arch, Arch):
            raise ArchError(f"expected an Arch, got {type(arch).__name__}")
        if arch.space != self.name:
            raise ArchError(f"arch belongs to space {arch.space!r}, not {self.name!r}")
        for name in LIST_FIELDS:
            expected = len(self.field_genes(name))
            value = getattr(arch, name)
            if expected == 0 and value is not None:
                raise ArchError(f"arch.{name} is not a field of space {self.name!r}; remove it")
            if expected and (value is None or len(value) != expected):
                got = "missing" if value is None else f"{len(value)} entries"
                raise ArchError(f"arch.{name}: {got}; space {self.name!r} expects a list of {expected}")
        return [self._choice_index(g, self._value(arch, g)) for g in self.genes]

    @staticmethod
    def _value(arch: Arch, gene: Gene) -> Any:
        value = getattr(arch, gene.field)
        return value if gene.position is None else value[gene.position]

    @staticmethod
    def _choice_index(gene: Gene, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ArchError(f"arch.{gene.label} = {value!r} must be a number; choices are {gene.choices}")
        for i, choice in enumerate(gene.choices):
            if math.isclose(value, choice, rel_tol=0, abs_tol=1e-9):
                return i
        raise ArchError(f"arch.{gene.label} = {value!r} is not allowed; choices are {gene.choices}")

    def decode(self, population: torch.Tensor) -> list[Arch]:
        """Archs of a population tensor (rows of choice indices)."""
        population = self._check(population)
        archs = []
        for row in population.tolist():
            values: dict[str, Any] = {name: [None] * len(self.field_genes(name)) for name in LIST_FIELDS}
            for gene, index in zip(self.genes, row):
                if gene.position is None:
                    values[gene.field] = gene.choices[index]
                else:
                    values[gene.field][gene.position] = gene.choices[index]
            lists = {k: tuple(v) for k, v in values.items() if k in LIST_FIELDS and v}
            archs.append(Arch(space=self.name, image_size=values["image_size"], **lists))
        return archs

    def _check(self, population: torch.Tensor) -> torch.Tensor:
        if not isinstance(population, torch.Tensor) or population.dim() != 2:
            raise ArchError("a population must be a 2-D tensor of choice indices [N, n_genes]")
        if population.shape[1] != self.n_genes:
            raise ArchError(
                f"population has {population.shape[1]} genes; space {self.name!r} has {self.n_genes}"
            )
        limits = self._tables.limits.to(population.device)
        if population.numel() and ((population < 0) | (population >= limits)).any():
            raise ArchError("population holds choice indices outside their gene's range")
        return population.long()

    # ----------------------------------------------------------------- corners
    def max_arch(self, image_size: int | None = None) -> Arch:
        return self._corner(-1, image_size)

    def min_arch(self, image_size: int | None = None) -> Arch:
        return self._corner(0, image_size)

    def _corner(self, pick: int, image_size: int | None) -> Arch:
        row = torch.tensor([[(len(g.choices) - 1) if pick < 0 else 0 for g in self.genes]])
        arch = self.decode(row)[0]
        if image_size is None:
            return arch
        return self.validate(Arch(**{**arch.__dict__, "image_size": image_size}))

    # ----------------------------------------------------------------- population operators
    @cached_property
    def _tables(self) -> _Tables:
        # Built once per space: searches call the operators thousands of times on small batches,
        # where rebuilding these index tensors per call would cost more than the operation.
        return _Tables(self)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` archs drawn uniformly per gene."""
        u = torch.rand(n, self.n_genes, generator=generator, dtype=torch.float64)
        return (u * self._tables.n_choices).long()

    def mutate(
        self,
        population: torch.Tensor,
        generator: torch.Generator | None = None,
        prob: dict[str, float] | None = None,
    ) -> torch.Tensor:
        """Resample each gene group with its kind's probability (a block's kernel and expand together).

        `prob` overrides `DEFAULT_MUTATION` per kind (resolution, depth, block, width).
        """
        return self._mutate(self._check(population), generator, self.mutation_rates(prob))

    def mutation_rates(self, prob: dict[str, float] | None = None) -> torch.Tensor:
        """Float64 [n_groups]: each gene group's resampling probability under `prob` (see `mutate`)."""
        tables = self._tables
        prob = {**DEFAULT_MUTATION, **(prob or {})}
        unknown = sorted(set(prob) - set(DEFAULT_MUTATION))
        if unknown:
            raise ArchError(
                f"mutation probabilities for unknown gene kinds {unknown}; kinds are {sorted(DEFAULT_MUTATION)}"
            )
        bad = {k: v for k, v in prob.items() if not 0 <= v <= 1}
        if bad:
            raise ArchError(f"mutation probabilities {bad} are not in [0, 1]")
        return torch.tensor([prob[kind] for kind in tables.group_kinds], dtype=torch.float64)

    def _mutate(
        self, population: torch.Tensor, generator: torch.Generator | None, rates: torch.Tensor
    ) -> torch.Tensor:
        tables = self._tables
        hit = torch.rand(len(population), len(rates), generator=generator, dtype=torch.float64) < rates
        fresh = self.sample(len(population), generator)
        return torch.where(hit[:, tables.groups], fresh, population)

    def crossover(
        self, a: torch.Tensor, b: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Each gene copied from one of two parents chosen uniformly."""
        return self._crossover(self._check(a), self._check(b), generator)

    @staticmethod
    def _crossover(a: torch.Tensor, b: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        pick_a = torch.rand(a.shape, generator=generator, dtype=torch.float64) < 0.5
        return torch.where(pick_a, a, b)

    # ----------------------------------------------------------------- structure
    def active(self, population: torch.Tensor) -> torch.Tensor:
        """Bool [N, n_slots]: which block slots run in each arch."""
        return self._active(self._check(population))

    def _active(self, population: torch.Tensor) -> torch.Tensor:
        tables = self._tables
        return tables.alive[tables.alive_offset + population[:, tables.slot_depth_gene]]

    def canonical(self, population: torch.Tensor) -> torch.Tensor:
        """Zero the genes of skipped blocks, so equal subnets have equal rows."""
        return self._canonical(self._check(population))

    def _canonical(self, population: torch.Tensor) -> torch.Tensor:
        tables = self._tables
        keep = torch.ones_like(population, dtype=torch.bool)
        keep[:, tables.slotted] = self._active(population)[:, tables.gene_slot]
        return population * keep

    def onehot(self, population: torch.Tensor) -> torch.Tensor:
        """Predictor features: one-hot per gene, skipped blocks all-zero, implied depths omitted."""
        return self._onehot(self._check(population))

    def _onehot(self, population: torch.Tensor) -> torch.Tensor:
        tables = self._tables
        gate = torch.ones(len(population), len(tables.encoded))
        gate[:, tables.encoded_slotted] = self._active(population)[:, tables.encoded_slot].float()
        out = torch.zeros(len(population), tables.onehot_dim)
        return out.scatter_(1, tables.onehot_offsets + population[:, tables.encoded], gate)

    @property
    def encoded_genes(self) -> list[int]:
        """The genes `onehot` encodes: all but depths implied by which blocks are zero."""
        implied = {s.depth_gene for s in self.stages if any(g.slot in s.slots for g in self.genes)}
        return [i for i in range(self.n_genes) if i not in implied]

    @property
    def onehot_dim(self) -> int:
        """Width of `onehot` features."""
        return self._tables.onehot_dim

    def count(self, include_resolution: bool = False) -> int:
        """Exact number of distinct subnets (skipped blocks' choices do not count)."""
        slot_choices = [1] * self.n_slots
        counted = {s.depth_gene for s in self.stages}
        for i, g in enumerate(self.genes):
            if g.slot is not None:
                slot_choices[g.slot] *= len(g.choices)
                counted.add(i)
        total = 1
        for i, g in enumerate(self.genes):
            if i not in counted and (g.kind != "resolution" or include_resolution):
                total *= len(g.choices)
        for stage in self.stages:
            per_depth = 0
            for d in self.genes[stage.depth_gene].choices:
                n_active = min(len(stage.slots), stage.base + d)
                per_depth += math.prod(slot_choices[s] for s in stage.slots[:n_active])
            total *= per_depth
        return total


class _Tables:
    """Index tensors of one space that its population operators gather from (see `SearchSpace._tables`)."""

    def __init__(self, space: SearchSpace):
        genes = space.genes
        self.limits = torch.tensor([len(g.choices) for g in genes])
        self.n_choices = self.limits.double()
        self.groups = torch.tensor([g.group for g in genes])
        kinds: dict[int, str] = {}
        for g in genes:
            if kinds.setdefault(g.group, g.kind) != g.kind:
                raise ArchError(f"gene group {g.group} mixes kinds {kinds[g.group]!r} and {g.kind!r}")
        # A group number no gene uses never mutates anything; its kind only has to be a valid key.
        self.group_kinds = [kinds.get(i, "block") for i in range(int(self.groups.max()) + 1)]
        # alive[slot * width + c]: whether block slot `slot` runs when its stage's depth gene has
        # choice c. A slot in no stage always runs: it reads its row at gene 0's choice, all True.
        width = int(self.limits.max())
        alive = torch.ones(space.n_slots, width, dtype=torch.bool)
        self.slot_depth_gene = torch.zeros(space.n_slots, dtype=torch.long)
        for stage in space.stages:
            depths = torch.tensor(genes[stage.depth_gene].choices) + stage.base
            for position, slot in enumerate(stage.slots):
                self.slot_depth_gene[slot] = stage.depth_gene
                alive[slot, : len(depths)] = position < depths
        self.alive = alive.flatten()
        self.alive_offset = torch.arange(space.n_slots) * width
        slots = [g.slot for g in genes]
        self.slotted = torch.tensor([s is not None for s in slots], dtype=torch.bool)
        self.gene_slot = torch.tensor([s for s in slots if s is not None], dtype=torch.long)
        encoded = space.encoded_genes
        self.encoded = torch.tensor(encoded, dtype=torch.long)
        widths = self.limits[self.encoded]
        self.onehot_offsets = torch.cumsum(widths, 0) - widths
        self.onehot_dim = int(widths.sum())
        encoded_slots = [genes[i].slot for i in encoded]
        self.encoded_slotted = torch.tensor([s is not None for s in encoded_slots], dtype=torch.bool)
        self.encoded_slot = torch.tensor([s for s in encoded_slots if s is not None], dtype=torch.long)
