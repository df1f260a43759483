"""Traces a functional or Sequential Keras model into the mask groups of filter pruning.

Every channel of every tensor gets a label. Conv and dense layers create new
labels; per-channel layers (BatchNormalization, activations, pooling, padding,
dropout, an SE block's `Reshape((1, 1, C))`) pass them on; `Add`, `Multiply`,
`Subtract`, `Average`, `Maximum` and `Minimum` merge their inputs' labels
position by position (union-find); `Concatenate` on the channel axis joins the
label lists; `Flatten` repeats them once per position; `DepthwiseConv2D`
repeats each `depth_multiplier` times. Nested models are traced through.

A mask group is a set of channels that must be kept or dropped together: the
merged labels that the same convs produce. A channel of a group made by m convs
(a ResNet stage's residual outputs) stands for m filters. Not prunable: the
channels of the stems (the convs that read the model's input, whose filters
the method keeps), of dense layers alone (the head, which is not masked; a
dense layer whose channels merge with a conv's, as in a squeeze-and-excitation
block, joins that conv's group), and any channel merged with the input or
reaching the model's output. A layer called twice produces the same channels
both times.

This module only reads the model; it builds nothing and changes nothing.
"""

import dataclasses
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import keras

# Layers that act on each channel alone: a channel's label passes through.
PER_CHANNEL = (
    keras.layers.BatchNormalization, keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU,
    keras.layers.PReLU, keras.layers.ELU, keras.layers.Softmax, keras.layers.Dropout,
    keras.layers.SpatialDropout2D, keras.layers.GaussianNoise, keras.layers.GaussianDropout,
    keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D, keras.layers.ZeroPadding2D, keras.layers.Cropping2D,
    keras.layers.UpSampling2D, keras.layers.Rescaling, keras.layers.Normalization, keras.layers.Identity,
    keras.layers.InputLayer,
)
MERGING = (keras.layers.Add, keras.layers.Multiply, keras.layers.Subtract, keras.layers.Average,
           keras.layers.Maximum, keras.layers.Minimum)
CONVS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.SeparableConv2D,
         keras.layers.Conv2DTranspose)
NORMALIZATIONS = (keras.layers.BatchNormalization, keras.layers.LayerNormalization,
                  keras.layers.GroupNormalization)
# Element-wise keras.ops calls recorded as graph nodes (MobileNetV3's `x + 3.0`, hard-swish).
ELEMENTWISE_OPS = frozenset((
    "Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum", "Negative", "Abs", "Square",
    "Sqrt", "Relu", "Relu6", "Sigmoid", "HardSigmoid", "Silu", "HardSilu", "Gelu", "Tanh", "Elu", "Selu",
    "Softplus", "LeakyRelu",
))


# Layers private to keras.applications modules, by class name: ConvNeXt's per-channel
# LayerScale, and InceptionResNetV2's `x + scale * branch`.
APPLICATION_PER_CHANNEL = frozenset(("LayerScale",))
APPLICATION_MERGING = frozenset(("CustomScaleLayer",))


class UnsupportedLayerError(ValueError):
    """A layer the tracer cannot follow channel by channel; the message names it and the way out."""


@dataclasses.dataclass(frozen=True)
class MaskGroup:
    """Channels kept or dropped together.

    Attributes:
        name: The first member in the model's order.
        members: Layers whose output channels this group masks (each stands for one filter per channel).
        width: Channels in the group.
    """

    name: str
    members: Tuple[str, ...]
    width: int


@dataclasses.dataclass(frozen=True)
class WeightedLayer:
    """One call of a layer with a kernel, as cost accounting needs it.

    Attributes:
        name: The layer.
        kind: "conv", "depthwise" (including a conv with one group per input
            channel), "separable", "transpose" or "dense".
        kernel: Kernel positions (kh x kw; 1 for dense layers).
        multiplier: Output channels per input channel of depthwise and separable kernels.
        positions: Positions the kernel is applied at, per image.
        inputs: Per input channel: (group index, channel in the group), or None if not prunable.
        outputs: The same for the output channels.
    """

    name: str
    kind: str
    kernel: int
    multiplier: int
    positions: int
    inputs: Tuple[Optional[Tuple[int, int]], ...]
    outputs: Tuple[Optional[Tuple[int, int]], ...]


@dataclasses.dataclass(frozen=True)
class Trace:
    """What filter pruning needs to know about a model.

    Attributes:
        groups: The prunable mask groups, in the model's order.
        stems: Convs that read the model's input (kept whole; per view in a cascade).
        normalizations: Every normalization layer (per view in a cascade).
        head: Every dense layer on flat features (per view in a cascade; a dense
            layer on a spatial tensor is a 1x1 conv and is pruned like one).
        weighted: Every call of a layer with a kernel, in the model's order.
    """

    groups: Tuple[MaskGroup, ...]
    stems: Tuple[str, ...]
    normalizations: Tuple[str, ...]
    head: Tuple[str, ...]
    weighted: Tuple[WeightedLayer, ...] = ()


class _Labels:
    """Union-find over channel labels, with the layers that produced each class."""

    def __init__(self):
        self.parent: List[int] = []
        self.producers: List[set] = []
        self.frozen: List[bool] = []

    def new(self, count: int, producer=None, frozen=False) -> List[int]:
        first = len(self.parent)
        for i in range(first, first + count):
            self.parent.append(i)
            self.producers.append({producer} if producer else set())
            self.frozen.append(frozen)
        return list(range(first, first + count))

    def find(self, label: int) -> int:
        while self.parent[label] != label:
            self.parent[label] = self.parent[self.parent[label]]
            label = self.parent[label]
        return label

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[b] = a
            self.producers[a] |= self.producers[b]
            self.frozen[a] = self.frozen[a] or self.frozen[b]

    def freeze(self, labels) -> None:
        for label in labels:
            self.frozen[self.find(label)] = True


def trace(model: keras.Model) -> Trace:
    """Mask groups, stems, normalization layers and head of a functional or Sequential model.

    Args:
        model: A built functional or Sequential Keras model.

    Returns:
        A `Trace`.

    Raises:
        UnsupportedLayerError: A layer whose channels the tracer cannot follow.
    """
    labels = _Labels()
    seen = {"stems": [], "normalizations": [], "head": [], "order": [], "produced": {}, "weighted": []}
    graph = _functional(model)
    inputs = [labels.new(int(x.shape[-1]), frozen=True) for x in graph.inputs]
    input_labels = {label for group in inputs for label in group}
    outputs = _run(graph, inputs, labels, seen, input_labels)
    for output in outputs:
        labels.freeze(output)

    order = {name: i for i, name in enumerate(seen["order"])}
    head = set(seen["head"])
    members_of: Dict[int, Tuple[str, ...]] = {}  # prunable root -> its producers, roots in order of appearance
    for label in range(len(labels.parent)):
        root = labels.find(label)
        if root in members_of or labels.frozen[root] or not labels.producers[root]:
            continue
        members = tuple(sorted(labels.producers[root], key=order.__getitem__))
        if not set(members) <= head:  # dense layers alone are the head, which is not masked
            members_of[root] = members
    widths: Dict[Tuple[str, ...], int] = {}
    for members in members_of.values():
        widths[members] = widths.get(members, 0) + 1
    groups = sorted((MaskGroup(members[0], members, width) for members, width in widths.items()),
                    key=lambda g: order[g.members[0]])
    index = {group.members: i for i, group in enumerate(groups)}
    channel: Dict[int, Tuple[int, int]] = {}  # root -> (group, channel), channels in order of appearance
    filled = [0] * len(groups)
    for root, members in members_of.items():
        channel[root] = (index[members], filled[index[members]])
        filled[index[members]] += 1

    def place(group_labels):
        return tuple(channel.get(labels.find(label)) for label in group_labels)

    weighted = tuple(WeightedLayer(name, kind, kernel, multiplier, positions, place(ins), place(outs))
                     for name, kind, kernel, multiplier, positions, ins, outs in seen["weighted"])
    return Trace(tuple(groups), tuple(seen["stems"]), tuple(seen["normalizations"]), tuple(seen["head"]),
                 weighted)


def costs(model_trace: Trace, kept: Optional[Mapping[str, Sequence[bool]]] = None) -> dict:
    """Params and MACs of the traced model, or of it with only the `kept` channels of each group.

    As `hsd_tf.costs` counts them: conv and dense kernels only (no biases, no
    normalization, no adds or pools), a removed channel removed from its
    producers' outputs and from the inputs of every layer reading it, MACs per
    image. A layer called twice has its params counted once and its MACs twice.

    Args:
        model_trace: `trace(model)`.
        kept: Group name -> one bool per channel; groups not named keep everything.

    Returns:
        `{"params": N, "macs": N}`.
    """
    keep = [list(kept[g.name]) if kept and g.name in kept else [True] * g.width for g in model_trace.groups]

    def count(channels):
        return sum(1 for c in channels if c is None or keep[c[0]][c[1]])

    params, macs, counted = 0, 0, set()
    for layer in model_trace.weighted:
        fan_in, fan_out = count(layer.inputs), count(layer.outputs)
        if layer.kind == "depthwise":
            weights = layer.kernel * fan_out
        elif layer.kind == "separable":
            weights = layer.kernel * fan_in * layer.multiplier + fan_in * layer.multiplier * fan_out
        else:
            weights = layer.kernel * fan_in * fan_out
        if layer.name not in counted:
            params += weights
            counted.add(layer.name)
        macs += weights * layer.positions
    return {"params": params, "macs": macs}


def _functional(model):
    """The functional graph of a model (a Sequential model keeps one inside)."""
    if isinstance(model, keras.Sequential):
        if not model.built:
            raise UnsupportedLayerError(
                f"Sequential model {model.name!r} is not built; call it once or give it an Input.")
        return model._functional  # pylint: disable=protected-access
    if not hasattr(model, "_nodes_by_depth"):
        raise UnsupportedLayerError(
            f"Model {model.name!r} ({type(model).__name__}) is subclassed; only functional and Sequential "
            "models have a graph to trace. Rebuild it with the functional API.")
    return model


def _run(graph, inputs: Sequence[List[int]], labels: _Labels, seen, input_labels) -> List[List[int]]:
    """Propagates labels through `graph`; returns the label lists of its outputs."""
    tensors = {id(x): group for x, group in zip(graph.inputs, inputs)}
    for depth in sorted(graph._nodes_by_depth, reverse=True):  # pylint: disable=protected-access
        for node in graph._nodes_by_depth[depth]:  # pylint: disable=protected-access
            if not node.operation or node.is_input:
                continue
            node_inputs = [tensors[id(x)] for x in node.input_tensors]
            results = _operation(node, node_inputs, labels, seen, input_labels)
            for x, result in zip(node.outputs, results):
                tensors[id(x)] = result
    return [tensors[id(x)] for x in graph.outputs]


def _operation(node, inputs, labels: _Labels, seen, input_labels) -> List[List[int]]:
    """Output label lists of one graph node."""
    op = node.operation
    name = op.name
    if isinstance(op, keras.Model):
        return _run(_functional(op), inputs, labels, seen, input_labels)
    if isinstance(op, NORMALIZATIONS):
        seen["normalizations"].append(name)
    if isinstance(op, keras.layers.Conv2D) and getattr(op, "groups", 1) != 1:
        if op.groups != len(inputs[0]):
            raise _unsupported(op, f"a grouped convolution ({op.groups} groups of "
                                   f"{len(inputs[0]) // op.groups} channels) ties blocks of channels together")
        # One group per input channel is a depthwise convolution (ConvNeXt's): output o reads input o // m.
        outputs = [label for label in inputs[0] for _ in range(op.filters // op.groups)]
        _weighted(seen, node, "depthwise", inputs[0], outputs)
        return [outputs]
    if isinstance(op, CONVS + (keras.layers.Dense,)):
        kind = ("dense" if isinstance(op, keras.layers.Dense) else "separable"
                if isinstance(op, keras.layers.SeparableConv2D) else "transpose"
                if isinstance(op, keras.layers.Conv2DTranspose) else "conv")
        if id(op) in seen["produced"]:  # a layer called again: the same filters, so the same channels
            _weighted(seen, node, kind, inputs[0], seen["produced"][id(op)])
            return [seen["produced"][id(op)]]
        seen["order"].append(name)
        input_roots = {labels.find(i) for i in input_labels}
        stem = isinstance(op, CONVS) and all(labels.find(label) in input_roots for label in inputs[0])
        if stem:
            seen["stems"].append(name)
        if isinstance(op, keras.layers.Dense) and len(node.input_tensors[0].shape) == 2:
            seen["head"].append(name)  # on a spatial tensor a dense layer is a 1x1 conv (ConvNeXt's)
        seen["produced"][id(op)] = labels.new(int(node.outputs[0].shape[-1]), name, frozen=stem)
        _weighted(seen, node, kind, inputs[0], seen["produced"][id(op)])
        return [seen["produced"][id(op)]]
    if isinstance(op, keras.layers.DepthwiseConv2D):
        outputs = [label for label in inputs[0] for _ in range(op.depth_multiplier)]
        _weighted(seen, node, "depthwise", inputs[0], outputs)
        return [outputs]
    if isinstance(op, (keras.layers.LayerNormalization, keras.layers.GroupNormalization)):
        # Statistics over several channels: a masked channel would change its neighbours' output.
        labels.freeze(inputs[0])
        return [inputs[0]]
    if isinstance(op, PER_CHANNEL):
        return [inputs[0]]
    if isinstance(op, MERGING):
        return [_merge(inputs, labels)]
    if isinstance(op, keras.layers.Concatenate):
        rank = len(node.input_tensors[0].shape)
        if op.axis in (-1, rank - 1):
            return [[label for group in inputs for label in group]]
        return [_merge(inputs, labels)]
    if isinstance(op, keras.layers.Flatten):
        return [inputs[0] * math.prod(int(d) for d in node.input_tensors[0].shape[1:-1])]
    if isinstance(op, keras.layers.Reshape):
        shape = tuple(op.target_shape)
        if shape[-1] == len(inputs[0]) and all(d == 1 for d in shape[:-1]):
            return [inputs[0]]  # an SE block's (1, 1, C): the channels stay where they were
        raise _unsupported(op, f"a Reshape to {shape} moves channels off the last axis")
    if type(op).__module__.startswith("keras.src.applications."):
        if type(op).__name__ in APPLICATION_PER_CHANNEL:
            return [inputs[0]]
        if type(op).__name__ in APPLICATION_MERGING:
            return [_merge(inputs, labels)]
    if not isinstance(op, keras.layers.Layer) and type(op).__name__ in ELEMENTWISE_OPS:
        return [_merge(inputs, labels) if len(inputs) > 1 else inputs[0]]
    raise _unsupported(op, "its channels cannot be followed")


def _weighted(seen, node, kind: str, inputs, outputs) -> None:
    """Records one call of a layer with a kernel for `costs`."""
    op = node.operation
    kernel = math.prod(op.kernel_size) if hasattr(op, "kernel_size") else 1
    # A transposed conv applies its kernel at every input position; the others at every output position.
    spatial = (node.input_tensors[0] if kind == "transpose" else node.outputs[0]).shape[1:-1]
    multiplier = getattr(op, "depth_multiplier", 1) or 1
    seen["weighted"].append((op.name, kind, kernel, multiplier, math.prod(int(d) for d in spatial),
                             list(inputs), list(outputs)))


def _merge(inputs, labels: _Labels) -> List[int]:
    """Element-wise merge: the i-th channels of all inputs become one (broadcast inputs of width 1 aside)."""
    width = max(len(group) for group in inputs)
    merged = [group for group in inputs if len(group) == width]
    for group in merged[1:]:
        for a, b in zip(merged[0], group):
            labels.union(a, b)
    return merged[0]


def _unsupported(op, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(
        f"Cannot trace layer {op.name!r} ({type(op).__name__}): {why}. Rebuild the model without it, "
        "or with the layer's work done by supported layers.")
