"""OFA-ResNet50 (ResNet-50-D): the elastic supernet, the static ResNets its subnets become, and its space.

Elastic: depth per stage (plus skipping the stem's residual conv), bottleneck expand ratio per
block, and width per stem layer and stage, chosen by *index* into the width-multiplier list.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from onceforall.arch import Arch, GeneTable, SearchSpace, Site
from onceforall.errors import ArchError, OFAError
from onceforall.nn.dynamic import DynamicConvLayer, DynamicLinearLayer, DynamicResNetBottleneckBlock
from onceforall.nn.ops import make_divisible, out_size
from onceforall.nn.spec import LayerSpec
from onceforall.nn.static import IdentityLayer, ResidualBlock, layer_from_config
from onceforall.spaces.common import (
    OfficialNetwork,
    Supernet,
    check_input,
    check_subnet_keywords,
    layer_config,
    layer_module_str,
    set_bn_param,
    to_list,
)

BASE_DEPTHS = (2, 2, 4, 2)
STAGE_WIDTHS = (256, 512, 1024, 2048)
STAGE_STRIDES = (1, 2, 2, 2)
# The sizes of the official ResNet50 accuracy predictor (its tutorial's `image_size_list`).
RESNET_RESOLUTIONS = (128, 144, 160, 176, 192, 224, 240, 256)
DEFAULT_LISTS = ((0, 1, 2), (0.2, 0.25, 0.35), (0.65, 0.8, 1.0))


class ResNets(OfficialNetwork):
    """A static ResNet (what `get_active_subnet` returns), built from layers or a net config."""

    BASE_DEPTH_LIST = BASE_DEPTHS
    STAGE_WIDTH_LIST = STAGE_WIDTHS

    def __init__(self, input_stem: Sequence[nn.Module], blocks: Sequence[nn.Module], classifier: nn.Module):
        super().__init__()
        self.input_stem = nn.ModuleList(input_stem)
        self.max_pooling = nn.MaxPool2d(3, 2, 1)
        self.blocks = nn.ModuleList(blocks)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.input_stem:
            x = layer(x)
        x = self.max_pooling(x)
        for block in self.blocks:
            x = block(x)
        return self.classifier(x.mean((2, 3)))

    @property
    def module_str(self) -> str:
        """The official summary: one line per layer, the pooling layers as the official net prints them."""
        lines = [layer.module_str for layer in self.input_stem] + ["max_pooling(ks=3, stride=2)"]
        lines += [block.module_str for block in self.blocks]
        return "\n".join([*lines, "MyGlobalAvgPool2d(keep_dim=False)", self.classifier.module_str])

    @property
    def config(self) -> dict[str, Any]:
        bn = next(m for m in self.modules() if isinstance(m, nn.BatchNorm2d))
        return {
            "name": "ResNets",
            "bn": {"momentum": bn.momentum, "eps": bn.eps, "ws_eps": None},
            "input_stem": [layer.config for layer in self.input_stem],
            "blocks": [block.config for block in self.blocks],
            "classifier": self.classifier.config,
        }

    @classmethod
    def build_from_config(cls, config: dict[str, Any]) -> ResNets:
        net = cls(
            [layer_from_config(layer) for layer in config["input_stem"]],
            [layer_from_config(block) for block in config["blocks"]],
            layer_from_config(config["classifier"]),
        )
        bn = config.get("bn") or {"momentum": 0.1, "eps": 1e-5}
        set_bn_param(net, bn["momentum"], bn["eps"])
        return net


class OFAResNets(Supernet):
    """The once-for-all ResNet-50-D supernet: elastic depth, expand ratio and width.

    Arguments and methods follow the official `OFAResNets`: `set_active_subnet(d, e, w)` takes
    5 depths (d[0] = stem residual conv present iff it equals max(depth_list)), 18 expand ratios
    and 6 width *indices* (stem convs 0/1 and 2, then the four stages).
    """

    BASE_DEPTH_LIST = BASE_DEPTHS
    STAGE_WIDTH_LIST = STAGE_WIDTHS

    def __init__(
        self,
        n_classes: int = 1000,
        bn_param: tuple[float, float] = (0.1, 1e-5),
        dropout_rate: float = 0.0,
        depth_list: int | Sequence[int] = 2,
        expand_ratio_list: float | Sequence[float] = 0.25,
        width_mult_list: float | Sequence[float] = 1.0,
        *,
        in_channels: int = 3,
        first_stride: int = 2,
        stage_strides: Sequence[int] = STAGE_STRIDES,
        resolutions: Sequence[int] = RESNET_RESOLUTIONS,
    ):
        super().__init__()
        self.depth_list = sorted(to_list(depth_list))
        self.expand_ratio_list = sorted(to_list(expand_ratio_list))
        self.width_mult_list = sorted(to_list(width_mult_list))
        _check_args(n_classes, in_channels, self.depth_list, self.expand_ratio_list, self.width_mult_list)
        if first_stride not in (1, 2) or len(stage_strides) != len(BASE_DEPTHS):
            raise OFAError(
                f"first_stride must be 1 or 2 and stage_strides needs {len(BASE_DEPTHS)} entries, got "
                f"{first_stride!r} and {list(stage_strides)}"
            )
        self.n_classes, self.dropout_rate, self.in_channels = n_classes, dropout_rate, in_channels
        self.first_stride, self.stage_strides = first_stride, tuple(stage_strides)
        self.resolutions = tuple(sorted(resolutions))

        stem_out = [make_divisible(64 * w) for w in self.width_mult_list]
        stem_mid = [make_divisible(c // 2) for c in stem_out]
        self.stage_widths = tuple([make_divisible(c * w) for w in self.width_mult_list] for c in STAGE_WIDTHS)
        self.input_stem = nn.ModuleList(
            [
                DynamicConvLayer([in_channels], stem_mid, 3, first_stride, act_func="relu"),
                ResidualBlock(
                    DynamicConvLayer(stem_mid, stem_mid, 3, 1, act_func="relu"),
                    IdentityLayer(max(stem_mid), max(stem_mid)),
                ),
                DynamicConvLayer(stem_mid, stem_out, 3, 1, act_func="relu"),
            ]
        )
        self.max_pooling = nn.MaxPool2d(3, 2, 1)
        blocks: list[nn.Module] = []
        self.block_group_info: list[list[int]] = []
        feature_dims, max_depth = stem_out, self.depth_list[-1]
        for base, widths, stride in zip(BASE_DEPTHS, self.stage_widths, self.stage_strides):
            self.block_group_info.append(list(range(len(blocks), len(blocks) + base + max_depth)))
            for i in range(base + max_depth):
                blocks.append(
                    DynamicResNetBottleneckBlock(
                        feature_dims, widths, self.expand_ratio_list, 3, stride if i == 0 else 1, "relu"
                    )
                )
                feature_dims = widths
        self.blocks = nn.ModuleList(blocks)
        self.classifier = DynamicLinearLayer(feature_dims, n_classes, dropout_rate=dropout_rate)
        set_bn_param(self, *bn_param)
        self.input_stem_skipping = False
        self.runtime_depth = [0] * len(BASE_DEPTHS)  # official meaning: blocks skipped at each stage's end
        self.width_index = [len(self.width_mult_list) - 1] * (len(BASE_DEPTHS) + 2)
        self.build_args = {
            "n_classes": n_classes,
            "bn_param": list(bn_param),
            "dropout_rate": dropout_rate,
            "depth_list": self.depth_list,
            "expand_ratio_list": self.expand_ratio_list,
            "width_mult_list": self.width_mult_list,
            "in_channels": in_channels,
            "first_stride": first_stride,
            "stage_strides": list(self.stage_strides),
            "resolutions": list(self.resolutions),
        }

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, self.total_stride)
        for i, layer in enumerate(self.input_stem):
            if not (i == 1 and self.input_stem_skipping):
                x = layer(x)
        x = self.max_pooling(x)
        for index in self.active_blocks():
            x = self.blocks[index](x)
        return self.classifier(x.mean((2, 3)))

    @property
    def total_stride(self) -> int:
        return self.first_stride * 2 * 2 ** sum(s == 2 for s in self.stage_strides)  # stem, max pool, stages

    @property
    def ks_list(self) -> list[int]:
        return [3]

    @property
    def grouped_block_index(self) -> list[list[int]]:
        return self.block_group_info

    def active_blocks(self) -> list[int]:
        return [
            i
            for group, skip in zip(self.block_group_info, self.runtime_depth)
            for i in group[: len(group) - skip]
        ]

    # ------------------------------------------------------------------ official control API
    def set_max_net(self) -> None:
        self.set_active_subnet(
            d=self.depth_list[-1], e=self.expand_ratio_list[-1], w=len(self.width_mult_list) - 1
        )

    def set_active_subnet(self, d: Any = None, e: Any = None, w: Any = None, **kwargs: Any) -> None:
        """Scalars apply everywhere; lists give 5 depths, 18 expand ratios and 6 width indices.

        Any other keyword is an ArchError (the official method ignores them).
        """
        check_subnet_keywords(self, kwargs, ("d", "e", "w"))
        n_stages = len(BASE_DEPTHS)
        depths = to_list(d, n_stages + 1, "d")
        ratios = to_list(e, len(self.blocks), "e")
        widths = to_list(w, n_stages + 2, "w")
        checks = [("d", depths[0], sorted({0, *self.depth_list}))]
        checks += [("d", v, self.depth_list) for v in depths[1:]]
        checks += [("e", v, self.expand_ratio_list) for v in ratios]
        checks += [("w", v, list(range(len(self.width_mult_list)))) for v in widths]
        for name, v, choices in checks:
            if v is not None and (v not in choices or (name == "w" and isinstance(v, float))):
                hint = f" (indices into width_mult_list {self.width_mult_list})" if name == "w" else ""
                raise ArchError(f"{name} = {v!r} is not allowed; choices are {tuple(choices)}{hint}")
        for block, ratio in zip(self.blocks, ratios):
            if ratio is not None:
                block.active_expand_ratio = ratio
        stem0, stem1, stem2 = self.input_stem
        if widths[0] is not None:
            stem0.active_out_channel = stem1.conv.active_out_channel = stem0.out_channel_list[widths[0]]
        if widths[1] is not None:
            stem2.active_out_channel = stem2.out_channel_list[widths[1]]
        if depths[0] is not None:
            self.input_stem_skipping = depths[0] != self.depth_list[-1]
        for stage, (group, depth, width) in enumerate(zip(self.block_group_info, depths[1:], widths[2:])):
            if depth is not None:
                self.runtime_depth[stage] = self.depth_list[-1] - depth
            if width is not None:
                for index in group:
                    self.blocks[index].active_out_channel = self.blocks[index].out_channel_list[width]
        for i, width in enumerate(widths):
            if width is not None:
                self.width_index[i] = width

    def sample_active_subnet(self) -> dict[str, list]:
        """Draw a subnet with Python's `random` (in the official order), activate and return it."""
        n_widths = range(len(self.width_mult_list))
        config = {
            "e": [random.choice(self.expand_ratio_list) for _ in self.blocks],
            "d": [random.choice([self.depth_list[-1], self.depth_list[0]])]
            + [random.choice(self.depth_list) for _ in BASE_DEPTHS],
            "w": [random.choice(list(n_widths)) for _ in range(len(BASE_DEPTHS) + 2)],
        }
        self.set_active_subnet(**config)
        return {"d": config["d"], "e": config["e"], "w": config["w"]}

    def active_arch(self, image_size: int | None = None) -> Arch:
        """The active subnet as an `Arch` at `image_size` (default: the largest resolution)."""
        size = self.resolutions[-1] if image_size is None else image_size
        max_depth = self.depth_list[-1]
        arch = Arch(
            space=self.search_space().name,
            image_size=size,
            d=(
                0 if self.input_stem_skipping else max_depth,
                *(max_depth - skip for skip in self.runtime_depth),
            ),
            e=tuple(block.active_expand_ratio for block in self.blocks),
            w=tuple(self.width_index),
        )
        return self.search_space().validate(arch)

    @torch.no_grad()
    def get_active_subnet(self, preserve_weight: bool = True) -> ResNets:
        """The active subnet as a static ResNets with the active slices of the weights."""
        stem0, stem1, stem2 = self.input_stem
        stem = [stem0.get_active_subnet(self.in_channels, preserve_weight)]
        width = stem0.active_out_channel
        if not self.input_stem_skipping:
            stem.append(
                ResidualBlock(
                    stem1.conv.get_active_subnet(width, preserve_weight), IdentityLayer(width, width)
                )
            )
        stem.append(stem2.get_active_subnet(width, preserve_weight))
        channels, blocks = stem2.active_out_channel, []
        for index in self.active_blocks():
            blocks.append(self.blocks[index].get_active_subnet(channels, preserve_weight))
            channels = self.blocks[index].active_out_channel
        subnet = ResNets(stem, blocks, self.classifier.get_active_subnet(channels, preserve_weight))
        set_bn_param(subnet, *self.bn_param)
        return subnet.to(next(self.parameters()).device).train(self.training)

    def get_active_net_config(self) -> dict[str, Any]:
        """The official `net.config` JSON of the active subnet (JSON-serialisable, unlike the original's)."""
        stem0, stem1, stem2 = self.input_stem
        width = stem0.active_out_channel
        stem = [stem0.get_active_subnet_config(self.in_channels)]
        if not self.input_stem_skipping:
            stem.append(
                {
                    "name": "ResidualBlock",
                    "conv": stem1.conv.get_active_subnet_config(width),
                    "shortcut": IdentityLayer(width, width).config,
                }
            )
        stem.append(stem2.get_active_subnet_config(width))
        channels, blocks = stem2.active_out_channel, []
        for index in self.active_blocks():
            blocks.append(self.blocks[index].get_active_subnet_config(channels))
            channels = self.blocks[index].active_out_channel
        momentum, eps = self.bn_param
        return {
            "name": "ResNets",
            "bn": {"momentum": momentum, "eps": eps, "ws_eps": None},
            "input_stem": stem,
            "blocks": blocks,
            "classifier": self.classifier.get_active_subnet_config(channels),
        }

    @property
    def module_str(self) -> str:
        """The official summary of the active subnet: one line per active layer."""
        stem = [layer for i, layer in enumerate(self.input_stem) if not (i == 1 and self.input_stem_skipping)]
        lines = [layer_module_str(layer) for layer in stem] + ["max_pooling(ks=3, stride=2)"]
        lines += [layer_module_str(self.blocks[index]) for index in self.active_blocks()]
        lines.append("MyGlobalAvgPool2d(keep_dim=False)")
        return "".join(line + "\n" for line in lines) + layer_module_str(self.classifier)

    @property
    def config(self) -> dict[str, Any]:
        """The official config of the whole supernet (every layer at its elastic ranges), JSON-serialisable."""
        stem = [layer_config(layer) for layer in self.input_stem]
        # The official stem shortcut is built from the list of stem widths, so its config holds
        # that list where a static IdentityLayer holds one number.
        widths = list(self.input_stem[0].out_channel_list)
        stem[1]["shortcut"] = {**stem[1]["shortcut"], "in_channels": widths, "out_channels": widths}
        return {
            "name": type(self).__name__,
            "bn": self.get_bn_param(),
            "input_stem": stem,
            "blocks": [layer_config(block) for block in self.blocks],
            "classifier": layer_config(self.classifier),
        }

    def re_organize_middle_weights(self, expand_ratio_stage: int = 0) -> None:
        """Sort every bottleneck's middle channels by importance (start of each elastic-width phase)."""
        for block in self.blocks:
            block.re_organize_middle_weights(expand_ratio_stage)

    @property
    def bn_param(self) -> tuple[float, float]:
        bn = self.input_stem[0].bn.bn
        return bn.momentum, bn.eps

    def make_space(self, resolutions: tuple[int, ...]) -> SearchSpace:
        return resnet_space(self, resolutions)


def _check_args(n_classes: int, in_channels: int, ds, es, ws) -> None:
    if not isinstance(n_classes, int) or n_classes <= 0:
        raise OFAError(f"n_classes must be a positive integer, got {n_classes!r}")
    if not isinstance(in_channels, int) or in_channels <= 0:
        raise OFAError(f"in_channels must be a positive integer, got {in_channels!r}")
    if any(not isinstance(d, int) or d < 0 for d in ds):
        raise OFAError(f"depths (extra blocks per stage) must be integers >= 0, got {ds}")
    if any(not e > 0 for e in es):
        raise OFAError(f"expand ratios must be positive, got {es}")
    if any(not w > 0 for w in ws):
        raise OFAError(f"width multipliers must be positive, got {ws}")


def space_name(net: OFAResNets) -> str:
    """`ofa_resnet50` for the released lists, with the lists (and input channels) appended otherwise."""
    name = "ofa_resnet50"
    lists = (tuple(net.depth_list), tuple(net.expand_ratio_list), tuple(net.width_mult_list))
    if lists != DEFAULT_LISTS:
        d, e, w = ("-".join(str(v) for v in values) for values in lists)
        name += f"_d{d}_e{e}_w{w}"
    if net.in_channels != 3:
        name += f"_in{net.in_channels}"
    if (net.first_stride, net.stage_strides) != (2, STAGE_STRIDES):
        name += f"_s{net.first_stride}{''.join(map(str, net.stage_strides))}"
    return name


def resnet_space(net: OFAResNets, resolutions: tuple[int, ...]) -> SearchSpace:
    """Genes: [image_size, d x5, w x6, e x18] (the official encoder's one-hot order); one site per layer.

    d[0] is the stem flag with choices (0, max depth): the stem's residual conv is a one-slot
    stage without genes, present iff d[0] is the max. Stage s keeps its first base_s + d[s] blocks.
    w[0] and w[1] are the stem's middle and output widths, w[2 + s] stage s's.
    """
    n_stages, n_blocks = len(BASE_DEPTHS), len(net.blocks)
    genes = GeneTable()
    genes.add("image_size", None, resolutions, "resolution")
    genes.add("d", 0, (0, net.depth_list[-1]), "depth")
    for s in range(n_stages):
        genes.add("d", 1 + s, net.depth_list, "depth")
    for i in range(n_stages + 2):
        genes.add("w", i, range(len(net.width_mult_list)), "width")
    for j in range(n_blocks):
        genes.add("e", j, net.expand_ratio_list, "block", slot=j)
    stem_slot = n_blocks
    stages = [genes.stage(("d", 0), [stem_slot])]
    stages += [
        genes.stage(("d", 1 + s), group, base)
        for s, (base, group) in enumerate(zip(BASE_DEPTHS, net.block_group_info))
    ]
    return genes.space(space_name(net), stages, n_blocks + 1, _sites(net, genes, stem_slot))


def _sites(net: OFAResNets, genes: GeneTable, stem_slot: int) -> list[Site]:
    """Every layer a subnet can run, as a function of the genes it depends on."""
    mid, out = net.input_stem[0].out_channel_list, net.input_stem[2].out_channel_list
    cin, n_classes, s0 = net.in_channels, net.n_classes, net.first_stride

    def size_at(r: int, stage: int) -> int:
        size = out_size(out_size(r, s0), 2)  # stem, then the max pool's stride 2
        for s in net.stage_strides[:stage]:
            size = out_size(size, s)
        return size

    r, w_mid, w_stem = "image_size", ("w", 0), ("w", 1)
    sites = [
        genes.site([r, w_mid], lambda r, a: LayerSpec("conv", r, cin, mid[a], 3, s0, act="relu")),
        genes.site(
            [r, w_mid],
            lambda r, a: LayerSpec("conv", out_size(r, s0), mid[a], mid[a], 3, 1, act="relu", shortcut=True),
            slot=stem_slot,
        ),
        genes.site(
            [r, w_mid, w_stem],
            lambda r, a, b: LayerSpec("conv", out_size(r, s0), mid[a], out[b], 3, 1, act="relu"),
        ),
        genes.site([r, w_stem], lambda r, b: LayerSpec("maxpool", out_size(r, s0), out[b], out[b], 3, 2)),
    ]
    for stage, group in enumerate(net.block_group_info):
        for pos, index in enumerate(group):
            block = net.blocks[index]
            ins, outs = block.in_channel_list, block.out_channel_list
            shortcut = isinstance(block.downsample, IdentityLayer)

            def spec(r, wi, wo, e, stage=stage, pos=pos, ins=ins, outs=outs, block=block, shortcut=shortcut):
                in_size = size_at(r, stage) if pos == 0 else size_at(r, stage + 1)
                m = make_divisible(round(outs[wo] * e))
                return LayerSpec(
                    "bottleneck",
                    in_size,
                    ins[wi],
                    outs[wo],
                    3,
                    block.stride,
                    m,
                    act="relu",
                    shortcut=shortcut,
                )

            w_out, e = ("w", 2 + stage), ("e", index)
            if pos == 0:  # the stage's first block reads the previous stage's width
                sites.append(genes.site([r, ("w", 1 + stage), w_out, e], spec, slot=index))
            else:
                sites.append(
                    genes.site([r, w_out, e], lambda r, wo, e, spec=spec: spec(r, wo, wo, e), slot=index)
                )
    last, final = ("w", 1 + len(BASE_DEPTHS)), net.stage_widths[-1]
    sites += [
        genes.site(
            [r, last], lambda r, w: LayerSpec("pool", size_at(r, len(BASE_DEPTHS)), final[w], final[w])
        ),
        genes.site([last], lambda w: LayerSpec("linear", 1, final[w], n_classes, bias=True, use_bn=False)),
    ]
    return sites
