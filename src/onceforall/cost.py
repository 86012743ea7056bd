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
    """cost(arch) = overhead + sum over its layers of value(layer), batched over populations.

    Layer values sit in one flat tensor, each site's variants in row-major order of its genes'
    choices. A population's row indices come from one small float64 matmul (exact: the indices
    are far below 2**53) and the skipped blocks' layers are zeroed by one gather of the space's
    active slots, so a call costs a handful of tensor operations whatever the space.
    """

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
        n_sites = len(space.sites)
        self.index = torch.zeros(space.n_genes, n_sites, dtype=torch.float64)
        offsets = torch.zeros(n_sites, dtype=torch.float64)
        gates: list[int | None] = []
        values: list[float] = []
        for index, site in enumerate(space.sites):
            stride = 1
            for gene in reversed(site.genes):
                self.index[gene, index] += stride
                stride *= len(space.genes[gene].choices)
            offsets[index] = len(values)
            gates.append(site.slot)
            values.extend(value(spec) for spec in site_variants(space, index))
        self.offsets = offsets
        self.values = torch.tensor(values, dtype=dtype)
        self.gated = torch.tensor([slot is not None for slot in gates], dtype=torch.bool)
        self.slots = torch.tensor([slot for slot in gates if slot is not None], dtype=torch.long)

    def __call__(self, archs: torch.Tensor | Arch | Sequence[Arch]) -> torch.Tensor:
        """Cost of each arch of a population tensor (or of Arch objects) as a 1-D tensor."""
        population = archs if isinstance(archs, torch.Tensor) else self.space.encode(archs)
        return self._cost(self.space._check(population).cpu())

    def _cost(self, population: torch.Tensor) -> torch.Tensor:
        flat = (population.double() @ self.index + self.offsets).long()
        values = self.values[flat]
        values[:, self.gated] *= self.space._active(population)[:, self.slots]
        return values.sum(1) + self.overhead


def count_macs(space: SearchSpace, archs: torch.Tensor | Arch | Sequence[Arch]) -> torch.Tensor:
    """Multiply-accumulates of each arch (conv and linear only; FLOPs = 2 x MACs)."""
    return LayerTable(space, lambda spec: spec.macs)(archs)


def count_params(space: SearchSpace, archs: torch.Tensor | Arch | Sequence[Arch]) -> torch.Tensor:
    """Learnable parameters of each extracted subnet."""
    return LayerTable(space, lambda spec: spec.params)(archs)
