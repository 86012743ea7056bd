"""Which subnets a progressive-shrinking phase trains: per gene of the space, the choices the phase allows.

Written once over the `SearchSpace`, so every family shrinks the same way: a phase's `ks`, `expand`,
`depth` and `width` lists select the gene choices of the fields `ks`, `e`, `d` and `w`; a field the
phase leaves out stays at its largest choice. A depth gene whose choices the list does not name
(ProxylessNAS's one-block last stage; ResNet50's stem flag, choices {0, max}) takes the listed ones
it has, else its largest: so the ResNet stem is skipped only in phases whose depth list reaches 0,
the smallest depth, which keeps shrinking progressive.
"""

from __future__ import annotations

import itertools
import random

import torch

from onceforall.arch import Arch, SearchSpace
from onceforall.train.recipe import Phase

FIELDS = {"d": "depth", "e": "expand", "ks": "ks", "w": "width"}  # field -> phase key, in grid order


def allowed_choices(
    space: SearchSpace, phase: Phase, width_mult_list: list[float] | None = None
) -> list[list[int]]:
    """For each gene, the indices of the choices `phase` trains (resolution: the largest only).

    Width genes hold indices into `width_mult_list`; the phase names multipliers.
    """
    allowed = []
    for gene in space.genes:
        last = [len(gene.choices) - 1]
        listed = getattr(phase, FIELDS[gene.field]) if gene.field in FIELDS else None
        if listed is None:
            allowed.append(last)
            continue
        values = gene.choices
        if gene.field == "w" and width_mult_list is not None:
            values = tuple(width_mult_list[c] for c in gene.choices)
        picked = [i for i, v in enumerate(values) if any(abs(v - x) < 1e-9 for x in listed)]
        allowed.append(picked or last)
    return allowed


def elastic_fields(space: SearchSpace, allowed: list[list[int]]) -> list[str]:
    """The fields with more than one allowed choice somewhere (the phase's elastic dimensions)."""
    varied = {g.field for g, picks in zip(space.genes, allowed) if len(picks) > 1}
    return [f for f in FIELDS if f in varied]


def sample(space: SearchSpace, allowed: list[list[int]], seed: int) -> Arch:
    """A subnet drawn uniformly per gene among the allowed choices, a pure function of `seed`."""
    rng = random.Random(seed)
    return _decode(space, [rng.choice(picks) for picks in allowed])


def corner(space: SearchSpace, allowed: list[list[int]], largest: bool | dict[str, bool]) -> Arch:
    """The largest (or smallest) allowed subnet; a dict picks per field (others: largest)."""
    row = []
    for gene, picks in zip(space.genes, allowed):
        big = largest if isinstance(largest, bool) else largest.get(gene.field, True)
        row.append(max(picks) if big else min(picks))
    return _decode(space, row)


def corner_grid(space: SearchSpace, allowed: list[list[int]], resolutions: list[int]) -> list[Arch]:
    """{min, max} of each elastic field x {min, max} resolution: the validation grid of the original."""
    fields = elastic_fields(space, allowed)
    archs = []
    for size in sorted({min(resolutions), max(resolutions)}):
        for picks in itertools.product((False, True), repeat=len(fields)):
            arch = corner(space, allowed, dict(zip(fields, picks)))
            archs.append(space.validate(Arch(**{**arch.__dict__, "image_size": size})))
    return archs


def _decode(space: SearchSpace, row: list[int]) -> Arch:
    return space.decode(torch.tensor([row]))[0]
