"""Reading the official package's accuracy-predictor files and latency lookup tables.

Accuracy predictors (`AccuracyPredictor.load` calls `load_official_predictor` for any file that is
not in our format):

* nas/ files (`ofa.nas.accuracy_predictor.AccuracyPredictor`; keys `layers.*`, `base_acc`, plain or
  wrapped in `{"state_dict": ...}`) for the `MobileNetArchEncoder` (MobileNetV3 and ProxylessNAS)
  and the `ResNetArchEncoder`. Their one-hot layout is ours (`SearchSpace.onehot`) once the
  resolution one-hot covers the same sizes; the files do not record which sizes, see
  `load_official_predictor`.
* the tutorial's 128-input predictor (`ofa/tutorial/accuracy_predictor.py`, keys `0.*` ... `6.*`:
  60 kernel one-hots, 60 expand one-hots, 8 resolution one-hots at (R - 112) / 16; the last
  layer has a bias and there is no `base_acc`).

Either becomes an ordinary `AccuracyPredictor` for the space: its first layer keeps only the columns
of the file's input layout that the space can switch on, in the space's order. Unused columns are
always zero in the original, so the predictions are the original's; a predictor over more
resolutions (or choices) than the space's is restricted to the space's this way (our own files
too, `restrict_predictor`).

Latency: `official_latency_model` turns the official per-resolution YAML lookup tables
(`<R>_lookup_table.yaml`, `table[key]["mean"]` in ms, keys as `ofa/nas/efficiency_predictor/
latency_lookup_table.py` and `ofa/tutorial/latency_table.py` build them) into a `LayerTable` on
populations. They are another device's numbers (a phone, a GPU, ...), not measured here.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from onceforall.arch import SearchSpace, Site
from onceforall.cost import LayerTable
from onceforall.errors import LatencyTableError, PredictorError
from onceforall.nn.spec import LayerSpec
from onceforall.specialize.predictor import AccuracyPredictor, encoding_signature

# The tutorial predictor's fixed layout (ofa/tutorial/accuracy_predictor.py).
TUTORIAL_SLOTS = 20
TUTORIAL_KERNELS = {3: 0, 5: 1, 7: 2}
TUTORIAL_EXPANDS = {3: 0, 4: 1, 6: 2}
TUTORIAL_RESOLUTIONS = tuple(range(112, 225, 16))  # one-hot index (R - 112) // 16
TUTORIAL_DIM = 2 * 3 * TUTORIAL_SLOTS + len(TUTORIAL_RESOLUTIONS)

# Resolution lists the official code trains predictors on, by family and size of the one-hot:
# the elastic-resolution training sizes (128..224 step 4), `AccuracyDataset`'s default sizes, and
# the ResNet50 predictor's 8 sizes. Used only when a file's resolution one-hot is wider than the
# space's and no `trained_resolutions` is given (with a warning).
OFFICIAL_RESOLUTIONS = {
    "ofa_mbv3": (tuple(range(128, 225, 4)), (128, 160, 192, 224)),
    "ofa_proxyless": (tuple(range(128, 225, 4)), (128, 160, 192, 224)),
    "ofa_resnet50": ((128, 144, 160, 176, 192, 224, 240, 256), (128, 160, 192, 224)),
}
# Inputs besides the resolution one-hot of the official encoders with the released lists, to name
# the network a file that fits nothing probably belongs to.
OFFICIAL_WIDTHS = {
    "ofa_mbv3": ("OFA-MobileNetV3 (MobileNetArchEncoder, 20 blocks)", 120),
    "ofa_proxyless": ("OFA-ProxylessNAS (MobileNetArchEncoder 'mbv2', 21 blocks)", 126),
    "ofa_resnet50": ("OFA-ResNet50 (ResNetArchEncoder)", 74),
}


# --------------------------------------------------------------------------- accuracy predictors
def load_official_predictor(
    data: Any,
    space: SearchSpace | None,
    source: str = "the predictor file",
    trained_resolutions: Sequence[int] | None = None,
) -> AccuracyPredictor:
    """An `AccuracyPredictor` for `space` from an official predictor file's contents.

    The format is recognised from the keys and shapes. A nas/ file's resolution one-hot is read as
    `trained_resolutions` when given; otherwise as the space's resolutions when it is as wide, else
    as the official list of that width (OFFICIAL_RESOLUTIONS, with a warning). Raises
    PredictorError when the contents fit no official format or not the space.
    """
    state = _state_dict(data, source)
    if space is None:
        raise PredictorError(
            f"{source} is an official predictor file, which records no search space; "
            "pass the space, e.g. AccuracyPredictor.load(path, net.search_space())"
        )
    if _is_tutorial(state):
        return _from_tutorial(state, space, source)
    if _is_nas(state):
        return _from_nas(state, space, source, trained_resolutions)
    keys = sorted(state)
    raise PredictorError(
        f"{source} is neither an onceforall predictor nor an official one: its keys {keys[:6]}"
        f"{' ...' if len(keys) > 6 else ''} fit no known layout (official nas/ files hold 'base_acc' and "
        "'layers.N...'; the tutorial's acc_predictor.pth holds '0.weight' ... '6.bias')"
    )


def restrict_predictor(predictor: AccuracyPredictor, space: SearchSpace) -> AccuracyPredictor:
    """`predictor` (our format, trained on more choices) narrowed to `space`, whose choices it covers.

    Same space name, same genes; each of the space's choices must be one the predictor was trained
    on (typically fewer resolutions). Raises PredictorError naming the first gene that does not fit.
    """
    encoding = predictor.encoding or {}
    signature = encoding_signature(space)
    if encoding.get("version") != signature["version"]:
        raise PredictorError(
            f"the predictor's encoding version {encoding.get('version')!r} is not "
            f"{signature['version']!r}; refit it for this space"
        )
    trained = encoding.get("genes") or []
    labels = [label for label, _ in trained]
    if labels != [g.label for g in space.genes]:
        raise PredictorError(
            f"the predictor was trained on genes {labels[:4]}... ({len(labels)}), the space has "
            f"{[g.label for g in space.genes][:4]}... ({space.n_genes}); refit it for this space"
        )
    choices = [tuple(c) for _, c in trained]
    columns = _columns(space, [choices[i] for i in space.encoded_genes], source="the predictor")
    expected = sum(len(choices[i]) for i in space.encoded_genes)
    if expected != predictor.n_features:
        raise PredictorError(
            f"the predictor's {predictor.n_features} inputs do not match its recorded encoding "
            f"({expected}); the file is inconsistent, refit it"
        )
    restricted = _rebuild(predictor.state_dict(), columns, space, predictor.hidden_size, predictor.n_layers)
    restricted.metrics = predictor.metrics
    return restricted


def _state_dict(data: Any, source: str) -> dict[str, torch.Tensor]:
    """The tensors of a loaded file: `{"state_dict": ...}` unwrapped, a DataParallel prefix dropped."""
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise PredictorError(
            f"{source} is not a predictor file: expected an onceforall predictor or an official "
            f"state dict of tensors, got {type(data).__name__}"
        )
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in data.items()}


def _is_tutorial(state: Mapping[str, torch.Tensor]) -> bool:
    """nn.Sequential(Linear, ReLU, Linear, ReLU, Linear, ReLU, Linear): weights at even indices."""
    names = list(state)
    if not names or not all(k.split(".")[0].isdigit() and k.endswith((".weight", ".bias")) for k in names):
        return False
    indices = sorted({int(k.split(".")[0]) for k in names})
    expected = {f"{i}.{p}" for i in indices for p in ("weight", "bias")}
    return indices == list(range(0, 2 * len(indices), 2)) and set(names) == expected


def _is_nas(state: Mapping[str, torch.Tensor]) -> bool:
    return "base_acc" in state and any(k.startswith("layers.") for k in state)


def _mlp(
    state: Mapping[str, torch.Tensor], source: str
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """nas/ layout: the hidden (weight, bias) pairs in order and the bias-free head's weight."""
    n = 0
    while f"layers.{n}.0.weight" in state:
        n += 1
    known = {f"layers.{i}.0.{p}" for i in range(n) for p in ("weight", "bias")}
    known |= {f"layers.{n}.weight", "base_acc"}
    unknown = sorted(set(state) - known)
    lacking = sorted(known - set(state))
    if n == 0 or unknown or lacking:
        raise PredictorError(
            f"{source} looks like an official nas/ predictor (it has 'base_acc') but its layers do not "
            f"fit Linear+ReLU blocks and a bias-free head: unexpected keys {unknown[:4]}, "
            f"missing keys {lacking[:4]} ({n} hidden layers)"
        )
    hidden = [(state[f"layers.{i}.0.weight"], state[f"layers.{i}.0.bias"]) for i in range(n)]
    return hidden, state[f"layers.{n}.weight"]


def _check_chain(shapes: list[tuple[int, ...]], source: str) -> None:
    """Consecutive Linear layers must chain: out of one is in of the next, all hidden equally wide."""
    for (out_a, _), (_, in_b) in itertools.pairwise(shapes):
        if out_a != in_b:
            raise PredictorError(f"{source}: layer shapes {shapes} do not chain (out {out_a} vs in {in_b})")
    if len({out for out, _ in shapes[:-1]}) != 1 or shapes[-1][0] != 1:
        raise PredictorError(
            f"{source}: layer shapes {shapes} are not an MLP of equal hidden widths ending in one output"
        )


def _from_nas(
    state: Mapping[str, torch.Tensor],
    space: SearchSpace,
    source: str,
    trained_resolutions: Sequence[int] | None,
) -> AccuracyPredictor:
    hidden, head = _mlp(state, source)
    _check_chain([tuple(w.shape) for w, _ in hidden] + [tuple(head.shape)], source)
    n_features = hidden[0][0].shape[1]
    r_gene = space.field_genes("image_size")[0]
    encoded = space.encoded_genes
    others = sum(len(space.genes[i].choices) for i in encoded if i != r_gene)
    n_resolutions = n_features - others
    resolutions = _trained_resolutions(space, n_features, n_resolutions, others, source, trained_resolutions)
    choices = [resolutions if i == r_gene else space.genes[i].choices for i in encoded]
    columns = _columns(space, choices, source)
    out_state = {
        f"layers.{i}.0.{p}": t for i, (w, b) in enumerate(hidden) for p, t in (("weight", w), ("bias", b))
    }
    out_state[f"layers.{len(hidden)}.weight"] = head
    out_state["base_acc"] = state["base_acc"].reshape(1)
    return _rebuild(out_state, columns, space, hidden[0][0].shape[0], len(hidden))


def _trained_resolutions(
    space: SearchSpace,
    n_features: int,
    n_resolutions: int,
    others: int,
    source: str,
    given: Sequence[int] | None,
) -> tuple[int, ...]:
    """Which sizes a nas/ file's resolution one-hot stands for (the file itself does not say)."""
    own = tuple(space.resolutions)
    if n_resolutions < 1:
        raise PredictorError(
            f"{source} has {n_features} inputs, but space {space.name!r} needs {others} besides the "
            f"resolution one-hot ({len(own)} sizes here): it is a predictor of another network or "
            f"choice lists{_other_networks(n_features, space)}"
        )
    if given is not None:
        given = tuple(int(r) for r in given)
        if len(given) != n_resolutions:
            raise PredictorError(
                f"{source} has {n_features} inputs = {others} (blocks of space {space.name!r}) + "
                f"{n_resolutions} resolutions, but trained_resolutions lists {len(given)}: {list(given)}"
            )
        return given
    if n_resolutions == len(own):
        return own  # the usual case; the file cannot tell whether the sizes are the same
    family = next((f for f in OFFICIAL_RESOLUTIONS if space.name.startswith(f)), None)
    for candidate in OFFICIAL_RESOLUTIONS.get(family, ()):
        if len(candidate) == n_resolutions and set(own) <= set(candidate):
            warnings.warn(
                f"{source}: reading its {n_resolutions} resolution inputs as the official sizes "
                f"{list(candidate)}; pass trained_resolutions=[...] if it was trained on others",
                stacklevel=5,  # the caller of AccuracyPredictor.load
            )
            return candidate
    raise PredictorError(
        f"{source} has {n_features} inputs = {others} (blocks of space {space.name!r}) + "
        f"{n_resolutions} resolutions, but the space has {len(own)} ({list(own)}): pass "
        f"trained_resolutions=[...] (the {n_resolutions} sizes it was trained on, in its encoder's "
        "image_size_list order) to use it for a subset of them, or build the space with those "
        f"resolutions{_other_networks(n_features, space)}"
    )


def _other_networks(n_features: int, space: SearchSpace) -> str:
    """A hint naming the official networks whose encoders `n_features` fits with a usual list of sizes."""
    usual = {len(sizes) for lists in OFFICIAL_RESOLUTIONS.values() for sizes in lists}
    fits = [
        f"{label} with {n_features - width} resolutions"
        for family, (label, width) in OFFICIAL_WIDTHS.items()
        if not space.name.startswith(family) and n_features - width in usual
    ]
    return f" (its input count fits {' or '.join(fits)})" if fits else ""


def _from_tutorial(state: Mapping[str, torch.Tensor], space: SearchSpace, source: str) -> AccuracyPredictor:
    n = len(state) // 2
    weights = [state[f"{2 * i}.weight"] for i in range(n)]
    biases = [state[f"{2 * i}.bias"] for i in range(n)]
    _check_chain([tuple(w.shape) for w in weights], source)
    if weights[0].shape[1] != TUTORIAL_DIM:
        raise PredictorError(
            f"{source} is an nn.Sequential MLP with {weights[0].shape[1]} inputs; the official tutorial "
            f"predictor has {TUTORIAL_DIM} (60 kernel + 60 expand + 8 resolution one-hots)"
        )
    columns = _tutorial_columns(space, source)
    out_state = {
        f"layers.{i}.0.{p}": t for i in range(n - 1) for p, t in (("weight", weights[i]), ("bias", biases[i]))
    }
    # The tutorial head has a bias and no base offset; ours is bias-free plus base_acc: the same sum.
    out_state[f"layers.{n - 1}.weight"] = weights[-1]
    out_state["base_acc"] = biases[-1].reshape(1)
    return _rebuild(out_state, columns, space, weights[0].shape[0], n - 1)


def _tutorial_columns(space: SearchSpace, source: str) -> torch.Tensor:
    """For each of the space's one-hot columns, its column in the tutorial's 128-input layout."""
    ks, es = space.field_genes("ks"), space.field_genes("e")
    problems = []
    if not space.name.startswith("ofa_mbv3") or len(ks) != TUTORIAL_SLOTS or len(es) != TUTORIAL_SLOTS:
        problems.append(f"it encodes an OFA-MobileNetV3 of {TUTORIAL_SLOTS} block slots")
    else:
        bad_k = sorted({c for i in ks for c in space.genes[i].choices} - set(TUTORIAL_KERNELS))
        bad_e = sorted({c for i in es for c in space.genes[i].choices} - set(TUTORIAL_EXPANDS))
        if bad_k:
            problems.append(f"kernel sizes {list(TUTORIAL_KERNELS)} only (the space has {bad_k})")
        if bad_e:
            problems.append(f"expand ratios {list(TUTORIAL_EXPANDS)} only (the space has {bad_e})")
    bad_r = [r for r in space.resolutions if r not in TUTORIAL_RESOLUTIONS]
    if bad_r:
        problems.append(
            f"resolutions {list(TUTORIAL_RESOLUTIONS)} only (the space has {bad_r}); restrict the space, "
            "e.g. net.search_space(resolutions=(160, 176, 192, 208, 224))"
        )
    if problems:
        raise PredictorError(
            f"{source} is the official tutorial predictor ({TUTORIAL_DIM} inputs), which does not fit space "
            f"{space.name!r}: " + "; ".join(problems)
        )
    columns = []
    for i in space.encoded_genes:
        gene = space.genes[i]
        for choice in gene.choices:
            if gene.field == "image_size":
                columns.append(2 * 3 * TUTORIAL_SLOTS + TUTORIAL_RESOLUTIONS.index(choice))
            elif gene.field == "ks":
                columns.append(3 * gene.position + TUTORIAL_KERNELS[choice])
            elif gene.field == "e":
                columns.append(3 * TUTORIAL_SLOTS + 3 * gene.position + TUTORIAL_EXPANDS[choice])
            else:  # cannot happen for an OFA-MobileNetV3 space: its depths are implied by zeros
                raise PredictorError(f"{source}: the tutorial layout has no input for gene {gene.label}")
    return torch.tensor(columns, dtype=torch.long)


def _columns(space: SearchSpace, trained: Sequence[Sequence[float]], source: str) -> torch.Tensor:
    """Columns of the space's one-hot in a layout of the same encoded genes with `trained` choices."""
    columns, offset = [], 0
    for i, choices in zip(space.encoded_genes, trained):
        gene = space.genes[i]
        for choice in gene.choices:
            match = [j for j, c in enumerate(choices) if math.isclose(float(c), float(choice), abs_tol=1e-9)]
            if not match:
                raise PredictorError(
                    f"{source} was trained on {gene.label} in {_plain(choices)}, the space also allows "
                    f"{_plain([choice])[0]}; restrict the space to the predictor's choices or refit it"
                )
            columns.append(offset + match[0])
        offset += len(choices)
    return torch.tensor(columns, dtype=torch.long)


def _plain(values: Sequence[float]) -> list[float | int]:
    """Choices as written (a file records them as floats: 24 rather than 24.0)."""
    return [int(v) if float(v).is_integer() else float(v) for v in values]


def _rebuild(
    state: Mapping[str, torch.Tensor],
    columns: torch.Tensor,
    space: SearchSpace,
    hidden_size: int,
    n_layers: int,
) -> AccuracyPredictor:
    """Our predictor for `space` whose first layer reads `columns` of the given first layer."""
    state = dict(state)
    first = state["layers.0.0.weight"]
    if int(columns.max()) >= first.shape[1]:
        raise PredictorError(
            f"the predictor has {first.shape[1]} inputs, fewer than the layout it was read as needs"
        )
    state["layers.0.0.weight"] = first[:, columns].clone()
    net = AccuracyPredictor.for_space(space, hidden_size, n_layers)
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.eval()


# --------------------------------------------------------------------------- latency lookup tables
class OfficialLatencyModel(LayerTable):
    """Predicted latency (ms) from official lookup tables: another device's numbers, not measured here.

    A `LayerTable`: call it on a population [N, n_genes] of the space (or on Archs); the value is
    the sum of the official per-op means of the arch's layers at its resolution, as the official
    `predict_network_latency` computes it. `sources` names the YAML file of each resolution.
    """

    note = "another device's numbers (official OFA lookup table), not measured here"

    def __init__(
        self, space: SearchSpace, tables: Mapping[int, Mapping[str, float]], sources: Mapping[int, str]
    ):
        family = _latency_family(space)
        r_gene = space.field_genes("image_size")[0]
        n_classes = _classes(space)
        missing: dict[str, list[int]] = {}

        def value(op: tuple[int, LayerSpec, float | None]) -> float:
            resolution, spec, expand = op
            key = _op_key(family, spec, expand, n_classes)
            if key is None:
                return 0.0
            entry = tables[resolution].get(key)
            if entry is None:
                missing.setdefault(key, []).append(resolution)
                return math.nan
            return entry

        sites = tuple(_keyed_site(space, site, r_gene) for site in space.sites)
        super().__init__(dataclasses.replace(space, sites=sites), value)
        # The gene layout is the space's; keep the caller's space (its sites describe layers).
        self.space = space
        self.sources = dict(sources)
        if missing:
            keys = sorted(missing)
            shown = "; ".join(f"{k} (at R={sorted(set(missing[k]))})" for k in keys[:5])
            raise LatencyTableError(
                f"the official lookup tables lack {len(keys)} op keys that space {space.name!r} needs, "
                f"e.g. {shown}. Were they made for another network, width or class count "
                f"({n_classes} here), or for other resolutions? Use tables for this space's layers"
            )

    def __repr__(self) -> str:
        return f"OfficialLatencyModel({self.space.name!r}, resolutions {sorted(self.sources)}: {self.note})"


def official_latency_model(
    space: SearchSpace, tables: str | Path | Mapping[int, str | Path | Mapping[str, Any]]
) -> OfficialLatencyModel:
    """A latency model (ms) for `space` from official lookup-table YAML files.

    `tables` is a folder holding `<R>_lookup_table.yaml` for each of the space's resolutions (the
    official layout, e.g. `note10/`), one YAML file used for every resolution (its keys carry the
    input sizes), or a mapping {resolution: file or already-loaded table}. Values are the files'
    `mean` entries: another device's numbers, not measured here. Raises LatencyTableError naming
    missing files or op keys.
    """
    _latency_family(space)
    per_resolution: dict[int, str | Path | Mapping[str, Any]]
    if isinstance(tables, Mapping):
        per_resolution = {int(r): t for r, t in tables.items()}
    else:
        path = Path(tables)
        if path.is_dir():
            per_resolution = {r: path / f"{r}_lookup_table.yaml" for r in space.resolutions}
            absent = [r for r, p in per_resolution.items() if not Path(p).is_file()]
            if absent:
                present = sorted(p.name for p in path.glob("*_lookup_table.yaml"))
                raise LatencyTableError(
                    f"{path} has no lookup table for resolutions {absent} of space {space.name!r} "
                    f"(expected files like {absent[0]}_lookup_table.yaml; found {present[:8]}); "
                    "restrict the space to the tables' resolutions, e.g. net.search_space(resolutions=...)"
                )
        elif path.is_file():
            per_resolution = dict.fromkeys(space.resolutions, path)
        else:
            raise LatencyTableError(f"lookup table {path} does not exist (a YAML file or a folder of them)")
    absent = [r for r in space.resolutions if r not in per_resolution]
    if absent:
        raise LatencyTableError(
            f"no lookup table given for resolutions {absent} of space {space.name!r} "
            f"(tables for {sorted(per_resolution)}); restrict the space or add the tables"
        )
    cache: dict[str, dict[str, float]] = {}
    loaded, sources = {}, {}
    for r in space.resolutions:
        table = per_resolution[r]
        if isinstance(table, Mapping):
            loaded[r], sources[r] = _means(table, f"the table given for resolution {r}"), "(in memory)"
        else:
            name = str(table)
            if name not in cache:
                cache[name] = read_lookup_table(table)
            loaded[r], sources[r] = cache[name], name
    return OfficialLatencyModel(space, loaded, sources)


def read_lookup_table(path: str | Path) -> dict[str, float]:
    """{op key: mean latency (ms)} of one official lookup-table YAML file (`yaml.safe_load`)."""
    path = Path(path)
    if not path.is_file():
        raise LatencyTableError(f"lookup table {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise LatencyTableError(f"{path} is not valid YAML: {err}") from None
    return _means(data, str(path))


def _means(data: Any, source: str) -> dict[str, float]:
    """The `mean` of every entry of an official table (key -> {"mean": ms, ...})."""
    if not isinstance(data, Mapping) or not data:
        raise LatencyTableError(
            f"{source} is not an official lookup table: expected a mapping of op keys to "
            f"{{'mean': ms, ...}}, got {type(data).__name__}"
        )
    means = {}
    for key, entry in data.items():
        mean = entry.get("mean") if isinstance(entry, Mapping) else None
        try:
            means[str(key)] = float(mean)
        except (TypeError, ValueError):
            raise LatencyTableError(
                f"{source}: entry {key!r} has no numeric 'mean' (got {entry!r}); official tables map each "
                "op key to {'mean': ms, 'std': ..., ...}"
            ) from None
    return means


def _latency_family(space: SearchSpace) -> str:
    for family in ("ofa_mbv3", "ofa_proxyless"):
        if space.name.startswith(family):
            return family
    raise LatencyTableError(
        f"official lookup tables exist for OFA-MobileNetV3 and OFA-ProxylessNAS only, not space "
        f"{space.name!r}; measure a table here instead (`ofa latency build`)"
    )


def _classes(space: SearchSpace) -> int:
    """The classifier's output count (the official `Logits` keys carry it)."""
    for site in reversed(space.sites):
        if not site.genes:
            spec = site.spec()
            if spec.op == "linear":
                return spec.out_channels
    raise LatencyTableError(f"space {space.name!r} describes no classifier layer")


def _keyed_site(space: SearchSpace, site: Site, r_gene: int) -> Site:
    """`site` made to depend on the resolution, its variants (resolution, spec, expand ratio).

    Every official table is per resolution, so even a layer whose shape does not depend on it
    (the classifier) takes its value from the arch's resolution's file.
    """
    genes = site.genes if r_gene in site.genes else (r_gene, *site.genes)
    at_r = genes.index(r_gene)
    e_at = next((j for j, g in enumerate(site.genes) if space.genes[g].field == "e"), None)
    own = [genes.index(g) for g in site.genes]

    def variant(*values: Any) -> tuple[int, LayerSpec, float | None]:
        original = [values[j] for j in own]
        expand = None if e_at is None else original[e_at]
        return values[at_r], site.spec(*original), expand

    return Site(genes, site.slot, variant)


def _shape(*dims: int) -> str:
    return "x".join(str(d) for d in dims)


def _op_key(family: str, spec: LayerSpec, expand: float | None, n_classes: int) -> str | None:
    """The official lookup-table key of one layer (None: the official tables fold it into another)."""
    size_in, size_out = spec.in_size, spec.out_size
    io = (
        f"input:{_shape(size_in, size_in, spec.in_channels)}-"
        f"output:{_shape(size_out, size_out, spec.out_channels)}"
    )
    if spec.op == "mbconv":
        common = f"kernel:{spec.kernel_size}-stride:{spec.stride}-idskip:{int(spec.shortcut)}"
        if family == "ofa_mbv3":
            # MobileNetV3 keys hold the middle width (the input width for an unexpanded block)
            se, hs = int(spec.use_se), int(spec.act == "h_swish")
            return f"expanded_conv-{io}-expand:{spec.width}-{common}-se:{se}-hs:{hs}"
        # ProxylessNAS keys hold the expand ratio as "%d" writes it (truncated; 1 for the first block)
        return f"expanded_conv-{io}-expand:{int(1 if expand is None else expand)}-{common}"
    if spec.op == "conv" and spec.kernel_size == 3:
        return f"Conv-{io}"
    if spec.op == "conv" and spec.use_bn:
        return f"Conv_1-{io}"  # MBv3 final expand layer, Proxyless feature mix layer
    if spec.op == "conv":
        return f"Conv_2-{io}"  # MBv3 feature mix layer (1x1, no BN)
    channels = spec.in_channels
    if spec.op == "pool" and family == "ofa_mbv3":
        return f"AvgPool2D-input:{_shape(size_in, size_in, channels)}-output:{_shape(1, 1, channels)}"
    if spec.op == "pool":
        # Proxyless "Logits" covers the pooling and the classifier, keyed by the pooled input
        return f"Logits-input:{_shape(size_in, size_in, channels)}-output:{n_classes}"
    if spec.op == "linear" and family == "ofa_mbv3":
        return f"Logits-input:{_shape(1, 1, channels)}-output:{spec.out_channels}"
    if spec.op == "linear":
        return None
    raise LatencyTableError(f"the official lookup tables have no key for a {spec.op!r} layer ({spec})")
