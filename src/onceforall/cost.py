"""Efficiency models as per-layer tables: a subnet's cost is a gather-and-sum over its layers.

MACs and parameters are exact (analytic per layer); a latency table has the same form with
measured values. Every model evaluates a whole population in one tensor operation.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch

from onceforall.arch import Arch, SearchSpace
from onceforall.nn.spec import LayerSpec


def site_variants(space: SearchSpace, index: int) -> list[LayerSpec]:
    """The layer variants of one site, in row-major order of its genes' choices."""
    site = space.sites[index]
    choices = [space.genes[g].choices for g in site.genes]
    return [site.spec(*values) for values in itertools.product(*choices)]


def distinct_specs(space: SearchSpace) -> list[LayerSpec]:
    """Every distinct layer the subnets of `space` can contain (what a latency table measures)."""
    return list(dict.fromkeys(spec for i in range(len(space.sites)) for spec in site_variants(space, i)))


class LayerTable:
    """cost(arch) = overhead + sum over its layers of value(layer), batched over populations."""

    def __init__(
        self,
        space: SearchSpace,
        value: Callable[[LayerSpec], float],
        overhead: float = 0.0,
        dtype: torch.dtype = torch.float64,
    ):
        if not space.sites:
            raise ValueError(f"space {space.name!r} describes no layers; build it from a supernet")
        self.space, self.overhead = space, overhead
        width = max(len(site.genes) for site in space.sites) or 1
        n_sites = len(space.sites)
        self.genes = torch.zeros(n_sites, width, dtype=torch.long)
        self.strides = torch.zeros(n_sites, width, dtype=torch.long)
        self.offsets = torch.zeros(n_sites, dtype=torch.long)
        self.gates = torch.full((n_sites,), space.n_slots, dtype=torch.long)  # n_slots = always on
        values: list[float] = []
        for index, site in enumerate(space.sites):
            sizes = [len(space.genes[g].choices) for g in site.genes]
            stride = 1
            for j in reversed(range(len(sizes))):
                self.genes[index, j], self.strides[index, j] = site.genes[j], stride
                stride *= sizes[j]
            self.offsets[index] = len(values)
            if site.slot is not None:
                self.gates[index] = site.slot
            values.extend(value(spec) for spec in site_variants(space, index))
        self.values = torch.tensor(values, dtype=dtype)

    def __call__(self, archs: torch.Tensor | Arch | Sequence[Arch]) -> torch.Tensor:
        """Cost of each arch of a population tensor (or of Arch objects) as a 1-D tensor."""
        population = archs if isinstance(archs, torch.Tensor) else self.space.encode(archs)
        population = self.space._check(population).cpu()
        flat = self.offsets + (population[:, self.genes] * self.strides).sum(-1)
        active = torch.cat(
            [self.space.active(population), torch.ones(len(population), 1, dtype=torch.bool)], 1
        )
        return (self.values[flat] * active[:, self.gates]).sum(1) + self.overhead


def count_macs(space: SearchSpace, archs: torch.Tensor | Arch | Sequence[Arch]) -> torch.Tensor:
    """Multiply-accumulates of each arch (conv and linear only; FLOPs = 2 x MACs)."""
    return LayerTable(space, lambda spec: spec.macs)(archs)


def count_params(space: SearchSpace, archs: torch.Tensor | Arch | Sequence[Arch]) -> torch.Tensor:
    """Learnable parameters of each extracted subnet."""
    return LayerTable(space, lambda spec: spec.params)(archs)
