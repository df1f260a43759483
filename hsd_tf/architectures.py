"""Network families described as small graphs of conv units.

One `Architecture` describes a network at some per-group width. The same
description builds the dense Keras model (`hsd_tf.network.build_model`), drives
every masked view of the cascade (`hsd_tf.cascade`), and is what the cost
accounting counts (`hsd_tf.costs`). Shrinking a network is
`architecture.with_widths({group: kept})`, so any kept-filter count gives a
smaller network of the same family.

A *conv unit* is conv (or depthwise conv) -> BatchNormalization -> mask ->
optional ReLU. The output filters of every conv except the stem belong to a
*mask group*; convs whose outputs are added together (the last 1x1 conv of
every ResNet block of a stage and the stage's projection shortcut) share one
group, because a pruned channel must be pruned in every tensor of the sum.
"""

import dataclasses
from typing import Mapping, Optional, Sequence, Tuple

OPS = ("input", "conv", "depthwise", "add", "maxpool", "gap", "flatten", "dense")


@dataclasses.dataclass(frozen=True)
class Node:
    """One operation of an architecture graph.

    Attributes:
        name: Unique name; also the Keras layer name in the dense model.
        op: One of `OPS`.
        inputs: Names of the nodes feeding this one.
        filters: Output filters of the stem conv or units of a dense layer.
            Prunable convs take their width from their mask group instead.
        kernel: Kernel (or pool) size.
        strides: Stride.
        pad: `None` for "same" padding, else explicit symmetric zero padding
            followed by a "valid" op (the Keras applications layout).
        group: Mask group of a prunable conv's output filters.
        relu: Whether a ReLU follows (after BN and mask, or after an add).
        hint: Whether this node's output is a hint (feature distillation) layer.
    """

    name: str
    op: str
    inputs: Tuple[str, ...] = ()
    filters: int = 0
    kernel: int = 1
    strides: int = 1
    pad: Optional[int] = None
    group: Optional[str] = None
    relu: bool = True
    hint: bool = False


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A network graph plus the width of each mask group.

    Attributes:
        name: Family name ("vgg16", "resnet50", "mobilenet_v1").
        input_shape: (height, width, channels) of one image.
        num_classes: Classifier outputs.
        nodes: Graph nodes in topological order; the first is the input and
            the last produces the logits.
        groups: Mask group name -> number of filters, in a fixed order.
        bn_epsilon: BatchNormalization epsilon.
    """

    name: str
    input_shape: Tuple[int, int, int]
    num_classes: int
    nodes: Tuple[Node, ...]
    groups: Tuple[Tuple[str, int], ...]
    bn_epsilon: float = 1e-5

    def __post_init__(self):
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"Node names must be unique. Received: {names}")
        if self.nodes[0].op != "input":
            raise ValueError("The first node must be the input.")
        known = set()
        for node in self.nodes:
            if node.op not in OPS:
                raise ValueError(f"Unknown op {node.op!r} in node {node.name!r}.")
            for parent in node.inputs:
                if parent not in known:
                    raise ValueError(
                        f"Node {node.name!r} reads {parent!r} before it is defined."
                    )
            if node.group is not None and node.group not in self.group_sizes:
                raise ValueError(f"Node {node.name!r} has unknown group {node.group!r}.")
            known.add(node.name)
        # Validates that every add sums tensors of one mask group.
        self.channel_groups  # pylint: disable=pointless-statement

    @property
    def group_sizes(self) -> dict:
        return dict(self.groups)

    @property
    def group_names(self) -> Tuple[str, ...]:
        return tuple(name for name, _ in self.groups)

    @property
    def stem(self) -> Node:
        """The first conv: per view and never pruned."""
        return next(n for n in self.nodes if n.op == "conv")

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def filters(self, node: Node) -> int:
        """Output channels of a conv or dense node at this architecture's widths."""
        if node.group is not None:
            return self.group_sizes[node.group]
        return node.filters

    def group_members(self, group: str) -> Tuple[str, ...]:
        """Names of the convs whose output filters the group masks."""
        return tuple(n.name for n in self.nodes if n.group == group)

    @property
    def channel_groups(self) -> dict:
        """Node name -> mask group of its output channels (None: unmasked)."""
        result = {}
        for node in self.nodes:
            parents = [result[p] for p in node.inputs]
            if node.op in ("conv", "dense"):
                result[node.name] = node.group
            elif node.op == "add":
                if len(set(parents)) != 1:
                    raise ValueError(
                        f"Add {node.name!r} sums tensors of different mask groups "
                        f"{parents}; put its inputs in one group."
                    )
                result[node.name] = parents[0]
            elif node.op == "input":
                result[node.name] = None
            else:
                # Depthwise convs, pools and flatten keep their input's channels.
                result[node.name] = parents[0]
        return result

    @property
    def hint_nodes(self) -> Tuple[str, ...]:
        return tuple(n.name for n in self.nodes if n.hint)

    @property
    def total_filters(self) -> int:
        """Prunable filters, counting each conv of a shared group separately."""
        return sum(size * len(self.group_members(g)) for g, size in self.groups)

    def with_widths(self, widths: Mapping[str, int]) -> "Architecture":
        """Returns the same family with some groups narrowed.

        Args:
            widths: Group name -> new number of filters (at least 1).

        Returns:
            A new `Architecture`; groups not named keep their width.
        """
        unknown = set(widths) - set(self.group_names)
        if unknown:
            raise ValueError(f"Unknown groups {sorted(unknown)}.")
        for group, width in widths.items():
            if int(width) < 1:
                raise ValueError(f"Group {group!r} needs at least one filter. Received: {width}")
        groups = tuple((g, int(widths.get(g, size))) for g, size in self.groups)
        return dataclasses.replace(self, groups=groups)

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "nodes": [dataclasses.asdict(n) for n in self.nodes],
            "groups": [list(g) for g in self.groups],
            "bn_epsilon": self.bn_epsilon,
        }

    @classmethod
    def from_config(cls, config: dict) -> "Architecture":
        nodes = tuple(Node(**{**n, "inputs": tuple(n["inputs"])}) for n in config["nodes"])
        return cls(
            name=config["name"],
            input_shape=tuple(config["input_shape"]),
            num_classes=config["num_classes"],
            nodes=nodes,
            groups=tuple((g, int(s)) for g, s in config["groups"]),
            bn_epsilon=config["bn_epsilon"],
        )


def _scaled(width: int, width_multiplier: float) -> int:
    return max(1, int(round(width * width_multiplier)))


class _GraphBuilder:
    """Appends nodes while remembering the last one, for chain-shaped code."""

    def __init__(self, input_shape):
        self.nodes = [Node("input", "input")]
        self.groups = {}
        self.input_shape = tuple(input_shape)

    @property
    def last(self) -> str:
        return self.nodes[-1].name

    def add(self, name, op, inputs=None, width=None, **kwargs) -> str:
        """Adds a node; `width` registers (or checks) its mask group's size."""
        if width is not None:
            group = kwargs.setdefault("group", name)
            if self.groups.setdefault(group, width) != width:
                raise ValueError(f"Group {group!r} has members of different widths.")
        if inputs is None:
            inputs = (self.last,)
        self.nodes.append(Node(name, op, tuple(inputs), **kwargs))
        return name

    def build(self, name, num_classes, **kwargs) -> Architecture:
        return Architecture(
            name=name,
            input_shape=self.input_shape,
            num_classes=num_classes,
            nodes=tuple(self.nodes),
            groups=tuple(self.groups.items()),
            **kwargs,
        )


VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16(
    input_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    width_multiplier: float = 1.0,
) -> Architecture:
    """The CIFAR VGG16: 13 conv3x3+BN, five max-pools, dense 512, dense classes.

    At 32x32 and width 1 it has 14.98M params and 313M MACs (method.md section 6).
    Hints are the last three convs.

    Args:
        input_shape: (height, width, channels).
        num_classes: Classifier outputs.
        width_multiplier: Scales every conv width and the hidden dense layer.

    Returns:
        The `Architecture`.
    """
    graph = _GraphBuilder(input_shape)
    block, index = 1, 1
    convs = [c for c in VGG16_CONFIG if c != "M"]
    conv_number = 0
    for item in VGG16_CONFIG:
        if item == "M":
            graph.add(f"block{block}_pool", "maxpool", kernel=2, strides=2, pad=0)
            block, index = block + 1, 1
            continue
        conv_number += 1
        name = f"block{block}_conv{index}"
        width = _scaled(item, width_multiplier)
        hint = conv_number > len(convs) - 3
        if conv_number == 1:
            graph.add(name, "conv", filters=width, kernel=3, hint=hint)
        else:
            graph.add(name, "conv", width=width, kernel=3, hint=hint)
        index += 1
    graph.add("flatten", "flatten")
    graph.add("fc1", "dense", filters=_scaled(512, width_multiplier))
    graph.add("predictions", "dense", filters=num_classes, relu=False)
    return graph.build("vgg16", num_classes)


RESNET50_STAGES = (("conv2", 64, 3, 1), ("conv3", 128, 4, 2), ("conv4", 256, 6, 2), ("conv5", 512, 3, 2))


def resnet50(
    input_shape: Sequence[int] = (224, 224, 3),
    num_classes: int = 1000,
    width_multiplier: float = 1.0,
) -> Architecture:
    """ResNet50 v1 in the Keras applications layout (stride on the first 1x1).

    Node names follow `keras.applications.ResNet50`, so its ImageNet weights
    load by name. At 224x224 and width 1: 25.5M params, 3.86B MACs. The output
    convs of a stage (every block's `_3_conv` and the `_0_conv` projection)
    share the mask group `<stage>_out`. Hints are the last three block outputs.

    Args:
        input_shape: (height, width, channels).
        num_classes: Classifier outputs.
        width_multiplier: Scales every conv width.

    Returns:
        The `Architecture`.
    """
    graph = _GraphBuilder(input_shape)
    graph.add("conv1_conv", "conv", filters=_scaled(64, width_multiplier), kernel=7, strides=2, pad=3)
    graph.add("pool1_pool", "maxpool", kernel=3, strides=2, pad=1)
    total_blocks = sum(blocks for _, _, blocks, _ in RESNET50_STAGES)
    block_number = 0
    for stage, width, blocks, stride in RESNET50_STAGES:
        inner = _scaled(width, width_multiplier)
        outer = _scaled(4 * width, width_multiplier)
        out_group = f"{stage}_out"
        for b in range(1, blocks + 1):
            block_number += 1
            prefix = f"{stage}_block{b}"
            block_input = graph.last
            block_stride = stride if b == 1 else 1
            if b == 1:
                shortcut = graph.add(
                    f"{prefix}_0_conv", "conv", inputs=(block_input,), width=outer,
                    group=out_group, strides=block_stride, relu=False,
                )
            else:
                shortcut = block_input
            graph.add(f"{prefix}_1_conv", "conv", inputs=(block_input,), width=inner, strides=block_stride)
            graph.add(f"{prefix}_2_conv", "conv", width=inner, kernel=3)
            residual = graph.add(f"{prefix}_3_conv", "conv", width=outer, group=out_group, relu=False)
            graph.add(
                f"{prefix}_add", "add", inputs=(shortcut, residual),
                hint=block_number > total_blocks - 3,
            )
    graph.add("avg_pool", "gap")
    graph.add("predictions", "dense", filters=num_classes, relu=False)
    return graph.build("resnet50", num_classes, bn_epsilon=1.001e-5)


MOBILENET_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                       (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


def mobilenet_v1(
    input_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 100,
    width_multiplier: float = 1.0,
) -> Architecture:
    """MobileNetV1 with Keras applications names; only pointwise convs are masked.

    The CIFAR variant (inputs under 128 pixels) uses stride 1 in the stem so a
    32x32 image is not reduced to 1x1 before the last blocks. A depthwise conv
    keeps its input's mask. Hints are the last three pointwise convs.

    Args:
        input_shape: (height, width, channels).
        num_classes: Classifier outputs.
        width_multiplier: Scales every conv width (MobileNet's alpha).

    Returns:
        The `Architecture`.
    """
    graph = _GraphBuilder(input_shape)
    stem_stride = 1 if min(input_shape[:2]) < 128 else 2
    graph.add("conv1", "conv", filters=_scaled(32, width_multiplier), kernel=3, strides=stem_stride)
    for i, (width, stride) in enumerate(MOBILENET_V1_BLOCKS, start=1):
        graph.add(f"conv_dw_{i}", "depthwise", kernel=3, strides=stride)
        graph.add(
            f"conv_pw_{i}", "conv", width=_scaled(width, width_multiplier),
            hint=i > len(MOBILENET_V1_BLOCKS) - 3,
        )
    graph.add("global_average_pooling2d", "gap")
    graph.add("predictions", "dense", filters=num_classes, relu=False)
    return graph.build("mobilenet_v1", num_classes)


ARCHITECTURES = {"vgg16": vgg16, "resnet50": resnet50, "mobilenet_v1": mobilenet_v1}


def get(name: str, input_shape, num_classes: int, width_multiplier: float = 1.0) -> Architecture:
    """Builds a registered architecture by name.

    Args:
        name: One of `ARCHITECTURES`.
        input_shape: (height, width, channels).
        num_classes: Classifier outputs.
        width_multiplier: Scales every width; must be positive.

    Returns:
        The `Architecture`.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"Unknown arch; expected one of {sorted(ARCHITECTURES)}. Received: arch={name!r}")
    if not width_multiplier > 0:
        raise ValueError(f"width_multiplier must be positive. Received: width_multiplier={width_multiplier}")
    return ARCHITECTURES[name](tuple(input_shape), num_classes, width_multiplier)
