"""Traces a functional or Sequential Keras model into the mask groups of filter pruning, and runs it.

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
block, joins that conv's group), any channel merged with the input or reaching
the model's output, and the inputs and outputs of the layers named unpruned.
A layer called twice produces the same channels both times.

The trace is also a program: `run` executes the model's graph step by step,
nested models inlined, with any layer swapped for another (a cascade view's
own BatchNorm, the slim model's narrower conv) and a mask multiplied in after
every op that can turn a zero channel non-zero (*mask points*): normalization
layers, convs and dense layers unless a BatchNorm alone reads them (the mask
then sits after that BatchNorm, where the method's score gradient is taken),
biased depthwise convs, activations with f(0) != 0, adding a constant, and any
op not known to keep zeros. A masked channel is then exactly zero wherever a
layer mixes channels, so removing it changes nothing.

Tracing only reads the model; it builds nothing and changes nothing.
"""

import dataclasses
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

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
# Ops that map a zero channel to zero whatever else they do: no mask needed after them.
ZERO_KEEPING = (
    keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.PReLU, keras.layers.ELU, keras.layers.Dropout,
    keras.layers.SpatialDropout2D, keras.layers.GaussianDropout, keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D,
    keras.layers.ZeroPadding2D, keras.layers.Cropping2D, keras.layers.UpSampling2D, keras.layers.Identity,
    keras.layers.Flatten, keras.layers.Reshape, keras.layers.Concatenate, keras.layers.InputLayer,
) + MERGING
ZERO_KEEPING_ACTIVATIONS = frozenset((
    "relu", "relu6", "leaky_relu", "elu", "selu", "tanh", "silu", "swish", "gelu", "hard_silu", "hard_swish",
    "linear", "mish", "softsign",
))
ZERO_KEEPING_OPS = frozenset((
    "Multiply", "Divide", "TrueDivide", "Negative", "Abs", "Square", "Sqrt", "Relu", "Relu6", "Silu",
    "HardSilu", "Gelu", "Tanh", "Elu", "Selu", "LeakyRelu",
))
# Element-wise ops that keep zeros only when every operand is a tensor of the graph (no constant).
ZERO_KEEPING_WITHOUT_CONSTANT = frozenset(("Add", "Subtract", "Maximum", "Minimum"))
ACTIVATIONS = (keras.layers.ReLU, keras.layers.Activation, keras.layers.ELU, keras.layers.LeakyReLU,
               keras.layers.PReLU)

# Layers private to keras.applications modules, by class name: ConvNeXt's per-channel
# LayerScale, and InceptionResNetV2's `x + scale * branch`.
APPLICATION_PER_CHANNEL = frozenset(("LayerScale",))
APPLICATION_MERGING = frozenset(("CustomScaleLayer",))

HINT_COUNT = 3

Placement = Optional[Tuple[int, int]]  # (group index, channel in the group), or None: not prunable


class UnsupportedLayerError(ValueError):
    """A layer the tracer cannot follow channel by channel; the message names it and the way out."""


class UnknownLayersError(UnsupportedLayerError):
    """`unpruned_layers` names layers the model does not have."""


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
            channel), "grouped" (an unpruned grouped conv), "separable", "transpose" or "dense".
        kernel: Kernel positions (kh x kw; 1 for dense layers).
        multiplier: Output channels per input channel of depthwise and separable kernels; a grouped
            conv's groups.
        positions: Positions the kernel is applied at, per image.
        output_size: Spatial size of the output, per image.
        inputs: Placement of each input channel.
        outputs: Placement of each output channel.
    """

    name: str
    kind: str
    kernel: int
    multiplier: int
    positions: int
    output_size: Tuple[int, ...]
    inputs: Tuple[Placement, ...]
    outputs: Tuple[Placement, ...]


@dataclasses.dataclass(frozen=True)
class Step:
    """One call of a layer or keras op of the traced model, nested models inlined.

    Attributes:
        operation: The layer or op.
        node: Its graph node, whose recorded arguments are filled in with values.
        inputs: Keys of the node's input tensors, in `node.input_tensors` order.
        outputs: Keys of its output tensors.
        channels_in: Placement of each channel of its first input.
        channels_out: Placement of each channel of its first output.
        mask: Indices into the flat mask vector (`Trace.flat_masks`) of each
            output channel when this step is a mask point, else None.
    """

    operation: object
    node: object
    inputs: Tuple[int, ...]
    outputs: Tuple[int, ...]
    channels_in: Tuple[Placement, ...]
    channels_out: Tuple[Placement, ...]
    mask: Optional[np.ndarray] = None


@dataclasses.dataclass(frozen=True)
class Trace:
    """What filter pruning needs to know about a model, and the model's program.

    Attributes:
        groups: The prunable mask groups, in the model's order.
        stems: Convs that read the model's input (kept whole; per view in a cascade).
        normalizations: Every normalization layer (per view in a cascade).
        head: Every dense layer on flat features (per view in a cascade; a dense
            layer on a spatial tensor is a 1x1 conv and is pruned like one).
        weighted: Every call of a layer with a kernel, in the model's order.
        steps: The program, in an order that computes every input before use.
        input_keys: Keys of the model's inputs.
        input_shapes: Shape of each input, without the batch axis.
        output_keys: Keys of the model's outputs.
        hints: Keys of the hint features: the outputs of the last three
            activations on spatial tensors that every path from the input to the
            output goes through (VGG's last three conv units, a ResNet's last
            three block outputs).
        hint_layers: The layers producing the hints.
        unpruned: Layers whose inputs and outputs the user keeps whole.
    """

    groups: Tuple[MaskGroup, ...]
    stems: Tuple[str, ...]
    normalizations: Tuple[str, ...]
    head: Tuple[str, ...]
    weighted: Tuple[WeightedLayer, ...] = ()
    steps: Tuple[Step, ...] = ()
    input_keys: Tuple[int, ...] = ()
    input_shapes: Tuple[Tuple[int, ...], ...] = ()
    output_keys: Tuple[int, ...] = ()
    hints: Tuple[int, ...] = ()
    hint_layers: Tuple[str, ...] = ()
    unpruned: Tuple[str, ...] = ()

    @property
    def group_names(self) -> Tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    @property
    def group_widths(self) -> List[int]:
        return [g.width for g in self.groups]

    @property
    def filter_counts(self) -> List[int]:
        """Filters one channel of each group stands for (its member convs)."""
        return [len(g.members) for g in self.groups]

    @property
    def total_filters(self) -> int:
        """Prunable filters, counting each member conv of a shared group."""
        return sum(g.width * len(g.members) for g in self.groups)

    def mask_points(self) -> List[str]:
        """Names of the ops whose outputs are masked, in program order."""
        return [step.operation.name for step in self.steps if step.mask is not None]

    def layers(self) -> Dict[str, keras.layers.Layer]:
        """Every layer of the program by name (nested models inlined; keras ops left out)."""
        return {s.operation.name: s.operation for s in self.steps if isinstance(s.operation, keras.layers.Layer)}

    def first_steps(self) -> Dict[str, Step]:
        """Layer name -> its first call."""
        result = {}
        for step in self.steps:
            result.setdefault(step.operation.name, step)
        return result


def flat_masks(group_masks: Sequence) -> tf.Tensor:
    """[1] followed by every group's mask: what a mask point's indices gather from (index 0: not prunable)."""
    return tf.concat([tf.ones([1], tf.float32)] + [tf.cast(m, tf.float32) for m in group_masks], axis=0)


def flat_indices(placements: Sequence[Placement], group_widths: Sequence[int]) -> np.ndarray:
    """Each channel's index in the flat mask vector (`flat_masks`); 0 (the constant 1) for a channel no group holds."""
    offsets = np.cumsum([1] + list(group_widths))
    return np.array([0 if c is None else offsets[c[0]] + c[1] for c in placements], np.int64)


def run(model_trace: Trace, inputs: Sequence, layer_for: Optional[Callable] = None, group_masks=None,
        training=None):
    """Runs the traced model's program.

    Args:
        model_trace: `trace(model)`.
        inputs: One value per model input (tensors, or `keras.Input`s to build
            a new functional model).
        layer_for: Maps each layer of the traced model to the layer to call
            in its place (default: itself). Keras ops are called as they are.
        group_masks: One mask vector per group (float, possibly carrying a
            gradient); multiplied in at every mask point. None: no masks.
        training: Passed to every layer that takes `training`.

    Returns:
        (outputs, hints): lists of the output values and of the hint features.
    """
    values = dict(zip(model_trace.input_keys, inputs))
    flat = flat_masks(group_masks) if group_masks is not None else None
    for step in model_trace.steps:
        filled = {id(x): values[key] for x, key in zip(step.node.input_tensors, step.inputs)}
        args, kwargs = step.node.arguments.fill_in(filled)
        op = step.operation
        if layer_for is not None and isinstance(op, keras.layers.Layer):
            op = layer_for(op)
        if training is not None and "training" in getattr(op, "_call_context_args", ()):
            kwargs["training"] = training
        results = keras.tree.flatten(op(*args, **kwargs))
        if flat is not None and step.mask is not None:
            # Cast: 16-bit activations under mixed precision.
            results[0] = results[0] * keras.ops.cast(_gather(flat, step.mask), results[0].dtype)
        values.update(zip(step.outputs, results))
    return [values[k] for k in model_trace.output_keys], [values[k] for k in model_trace.hints]


def _gather(flat: tf.Tensor, indices: np.ndarray) -> tf.Tensor:
    """flat[indices]; a slice when the indices are one run (dense gradients, no gather)."""
    first = int(indices[0])
    if np.array_equal(indices, np.arange(first, first + len(indices))):
        return flat[first:first + len(indices)]
    return tf.gather(flat, indices)


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


def trace(model: keras.Model, unpruned_layers: Sequence[str] = ()) -> Trace:
    """Mask groups, stems, normalization layers, head and program of a functional or Sequential model.

    Args:
        model: A built functional or Sequential Keras model.
        unpruned_layers: Names of layers to leave whole: their input and output
            channels are not pruned, and a layer the tracer cannot follow
            channel by channel (a Lambda, a grouped conv) is accepted when named.

    Returns:
        A `Trace`.

    Raises:
        UnsupportedLayerError: A layer whose channels the tracer cannot follow,
            or a name in `unpruned_layers` that is no layer of the model.
    """
    tracer = _Tracer(set(unpruned_layers))
    graph = _functional(model)
    input_keys = [tracer.key(0, x) for x in graph.inputs]
    for key, x in zip(input_keys, graph.inputs):
        tracer.labels_of[key] = tracer.labels.new(int(x.shape[-1]), frozen=True)
        tracer.input_labels += tracer.labels_of[key]
    output_keys = tracer.run(graph, 0)
    for key in output_keys:
        tracer.labels.freeze(tracer.labels_of[key])
    missing = set(unpruned_layers) - tracer.layer_names
    if missing:
        raise UnknownLayersError(
            f"unpruned_layers names layers the model does not have. Received: {sorted(missing)}")
    return tracer.finish(input_keys, tuple(tuple(x.shape[1:]) for x in graph.inputs), output_keys)


class _Tracer:
    """Labels every tensor of a graph, inlining nested models, and records the program."""

    def __init__(self, unpruned: set):
        self.unpruned = unpruned
        self.labels = _Labels()
        self.labels_of: Dict[int, List[int]] = {}  # tensor key -> its channels' labels
        self.keys: Dict[Tuple[int, int], int] = {}  # (scope, id(KerasTensor)) -> tensor key
        self.scopes = 0
        self.steps: List[dict] = []
        self.stems: List[str] = []
        self.normalizations: List[str] = []
        self.head: List[str] = []
        self.order: List[str] = []  # producers in order of appearance
        self.produced: Dict[int, List[int]] = {}  # id(layer) -> its output labels
        self.weighted: List[tuple] = []
        self.layer_names: set = set()
        self.input_labels: List[int] = []

    def key(self, scope: int, tensor) -> int:
        return self.keys.setdefault((scope, id(tensor)), len(self.keys))

    def run(self, graph, scope: int) -> List[int]:
        """Labels every tensor of `graph` (its inputs already keyed in `scope`); returns its output keys."""
        for depth in sorted(graph._nodes_by_depth, reverse=True):  # pylint: disable=protected-access
            for node in graph._nodes_by_depth[depth]:  # pylint: disable=protected-access
                if not node.operation or node.is_input:
                    continue
                in_keys = [self.key(scope, x) for x in node.input_tensors]
                op = node.operation
                if isinstance(op, keras.Model):
                    inner = _functional(op)
                    self.scopes += 1
                    inner_scope = self.scopes
                    for x, key in zip(inner.inputs, in_keys):
                        self.keys[(inner_scope, id(x))] = key
                    for x, key in zip(node.outputs, self.run(inner, inner_scope)):
                        self.keys[(scope, id(x))] = key
                    continue
                self.layer_names.add(op.name)
                out_keys = [self.key(scope, x) for x in node.outputs]
                results = self.operation(node, [self.labels_of[k] for k in in_keys])
                for key, result in zip(out_keys, results):
                    self.labels_of[key] = result
                self.steps.append({"operation": op, "node": node, "inputs": tuple(in_keys),
                                   "outputs": tuple(out_keys)})
        return [self.key(scope, x) for x in graph.outputs]

    def operation(self, node, inputs) -> List[List[int]]:
        """Output label lists of one graph node."""
        op = node.operation
        name = op.name
        if isinstance(op, NORMALIZATIONS) and name not in self.normalizations:
            self.normalizations.append(name)
        if name in self.unpruned:
            for labels in inputs:
                self.labels.freeze(labels)
            if isinstance(op, keras.layers.Conv2D) and op.groups not in (1, len(inputs[0])):
                outputs = self.labels.new(op.filters, frozen=True)
                self.record_weighted(node, "grouped", inputs[0], outputs)
                return [outputs]
            if not isinstance(op, CONVS + (keras.layers.Dense, keras.layers.DepthwiseConv2D)):
                return [self.labels.new(int(x.shape[-1]), frozen=True) for x in node.outputs]
            results = self.supported(node, inputs)
            for labels in results:
                self.labels.freeze(labels)
            return results
        return self.supported(node, inputs)

    def supported(self, node, inputs) -> List[List[int]]:
        """Output label lists of a node the tracer follows channel by channel."""
        op = node.operation
        name = op.name
        if isinstance(op, keras.layers.Conv2D) and getattr(op, "groups", 1) != 1:
            if op.groups != len(inputs[0]):
                raise _unsupported(op, f"a grouped convolution ({op.groups} groups of "
                                       f"{len(inputs[0]) // op.groups} channels) ties blocks of channels together")
            # One group per input channel is a depthwise convolution (ConvNeXt's): output o reads input o // m.
            outputs = [label for label in inputs[0] for _ in range(op.filters // op.groups)]
            self.record_weighted(node, "depthwise", inputs[0], outputs)
            return [outputs]
        if isinstance(op, CONVS + (keras.layers.Dense,)):
            kind = ("dense" if isinstance(op, keras.layers.Dense) else "separable"
                    if isinstance(op, keras.layers.SeparableConv2D) else "transpose"
                    if isinstance(op, keras.layers.Conv2DTranspose) else "conv")
            if id(op) not in self.produced:  # called again, a layer gives the same filters: the same channels
                self.order.append(name)
                input_roots = {self.labels.find(label) for label in self.input_labels}
                stem = isinstance(op, CONVS) and all(self.labels.find(label) in input_roots for label in inputs[0])
                if stem:
                    self.stems.append(name)
                if isinstance(op, keras.layers.Dense) and len(node.input_tensors[0].shape) == 2:
                    self.head.append(name)  # on a spatial tensor a dense layer is a 1x1 conv (ConvNeXt's)
                self.produced[id(op)] = self.labels.new(int(node.outputs[0].shape[-1]), name, frozen=stem)
            self.record_weighted(node, kind, inputs[0], self.produced[id(op)])
            return [self.produced[id(op)]]
        if isinstance(op, keras.layers.DepthwiseConv2D):
            outputs = [label for label in inputs[0] for _ in range(op.depth_multiplier)]
            self.record_weighted(node, "depthwise", inputs[0], outputs)
            return [outputs]
        if isinstance(op, (keras.layers.LayerNormalization, keras.layers.GroupNormalization)):
            # Statistics over several channels: a masked channel would change its neighbours' output.
            self.labels.freeze(inputs[0])
            return [inputs[0]]
        if isinstance(op, PER_CHANNEL):
            return [inputs[0]]
        if isinstance(op, MERGING):
            return [self.merge(inputs)]
        if isinstance(op, keras.layers.Concatenate):
            rank = len(node.input_tensors[0].shape)
            if op.axis in (-1, rank - 1):
                return [[label for group in inputs for label in group]]
            return [self.merge(inputs)]
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
                return [self.merge(inputs)]
        if not isinstance(op, keras.layers.Layer) and type(op).__name__ in ELEMENTWISE_OPS:
            return [self.merge(inputs) if len(inputs) > 1 else inputs[0]]
        raise _unsupported(op, "its channels cannot be followed")

    def merge(self, inputs) -> List[int]:
        """Element-wise merge: the i-th channels of all inputs become one (broadcast inputs of width 1 aside)."""
        width = max(len(group) for group in inputs)
        merged = [group for group in inputs if len(group) == width]
        for group in merged[1:]:
            for a, b in zip(merged[0], group):
                self.labels.union(a, b)
        return merged[0]

    def record_weighted(self, node, kind: str, inputs, outputs) -> None:
        op = node.operation
        kernel = math.prod(op.kernel_size) if hasattr(op, "kernel_size") else 1
        # A transposed conv applies its kernel at every input position; the others at every output position.
        spatial = (node.input_tensors[0] if kind == "transpose" else node.outputs[0]).shape[1:-1]
        multiplier = op.groups if kind == "grouped" else getattr(op, "depth_multiplier", 1) or 1
        self.weighted.append((op.name, kind, kernel, multiplier, math.prod(int(d) for d in spatial),
                              tuple(int(d) for d in node.outputs[0].shape[1:-1]), list(inputs), list(outputs)))

    def finish(self, input_keys, input_shapes, output_keys) -> Trace:
        """Groups the prunable channels and places every channel of the program."""
        labels = self.labels
        order = {name: i for i, name in enumerate(self.order)}
        head = set(self.head)
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

        def place(group_labels) -> Tuple[Placement, ...]:
            return tuple(channel.get(labels.find(label)) for label in group_labels)

        consumers: Dict[int, List] = {}
        for step in self.steps:
            for key in step["inputs"]:
                consumers.setdefault(key, []).append(step["operation"])
        steps = []
        for step in self.steps:
            first_in = step["inputs"][0] if step["inputs"] else None
            channels_in = place(self.labels_of[first_in]) if first_in is not None else ()
            channels_out = place(self.labels_of[step["outputs"][0]])
            mask = None
            if any(c is not None for c in channels_out) and _needs_mask(step, consumers.get(step["outputs"][0], [])):
                mask = flat_indices(channels_out, [g.width for g in groups])
            steps.append(Step(step["operation"], step["node"], step["inputs"], step["outputs"], channels_in,
                              channels_out, mask))
        weighted = tuple(WeightedLayer(name, kind, kernel, multiplier, positions, size, place(ins), place(outs))
                         for name, kind, kernel, multiplier, positions, size, ins, outs in self.weighted)
        hints = _hint_steps(steps, input_keys)
        return Trace(tuple(groups), tuple(self.stems), tuple(self.normalizations), tuple(self.head), weighted,
                     tuple(steps), tuple(input_keys), input_shapes, tuple(output_keys),
                     tuple(steps[i].outputs[0] for i in hints), tuple(steps[i].operation.name for i in hints),
                     tuple(sorted(self.unpruned)))


def _needs_mask(step: dict, consumers: Sequence) -> bool:
    """Whether an op with prunable output channels can make a zero channel non-zero (or creates channels)."""
    op = step["operation"]
    if isinstance(op, CONVS + (keras.layers.Dense,)) and getattr(op, "groups", 1) == 1:
        # A BatchNorm alone reading the conv is masked instead: the method's mask point.
        return not consumers or not all(isinstance(c, keras.layers.BatchNormalization) for c in consumers)
    if isinstance(op, (keras.layers.DepthwiseConv2D, keras.layers.Conv2D)):
        return bool(op.use_bias)
    if isinstance(op, ZERO_KEEPING):
        return False
    if isinstance(op, keras.layers.Activation):
        return getattr(op.activation, "__name__", "") not in ZERO_KEEPING_ACTIVATIONS
    if type(op).__module__.startswith("keras.src.applications."):
        return type(op).__name__ not in APPLICATION_PER_CHANNEL | APPLICATION_MERGING
    if not isinstance(op, keras.layers.Layer):
        name = type(op).__name__
        if name in ZERO_KEEPING_OPS:
            return False
        if name in ZERO_KEEPING_WITHOUT_CONSTANT:
            return len(step["node"].input_tensors) < len(keras.tree.flatten(step["node"].arguments.args))
    return True


def _hint_steps(steps: Sequence[Step], input_keys) -> List[int]:
    """Indices of the last three activations on spatial tensors that every input-output path goes through."""
    produced_at = {key: i for i, step in enumerate(steps) for key in step.outputs}
    produced_at.update({key: -1 for key in input_keys})
    last_use = {}
    for i, step in enumerate(steps):
        for key in step.inputs:
            last_use[produced_at[key]] = max(last_use.get(produced_at[key], i), i)
    reach = last_use.get(-1, -1)  # the furthest step that reads a tensor made before the current one
    found = []
    for i, step in enumerate(steps):
        activation = isinstance(step.operation, ACTIVATIONS) or (
            not isinstance(step.operation, keras.layers.Layer) and type(step.operation).__name__ in
            ("Relu", "Relu6", "Silu", "HardSilu", "Gelu", "Elu", "Selu", "LeakyRelu"))
        if reach <= i and activation and len(step.node.outputs[0].shape) > 2 and len(step.outputs) == 1:
            found.append(i)
        reach = max(reach, last_use.get(i, i))
    return found[-HINT_COUNT:]


def describe(model_trace: Trace) -> str:
    """The mask groups and the per-view layers of a trace, as a table for the dry run."""
    lines = [f"{len(model_trace.groups)} mask groups, {model_trace.total_filters} prunable filters:",
             f"{'group':<28} {'channels':>8} {'convs':>5}  members"]
    for group in model_trace.groups:
        members = ", ".join(group.members)
        lines.append(f"{group.name:<28} {group.width:>8} {len(group.members):>5}  {members}")
    lines += [
        f"stems (per view, kept whole): {', '.join(model_trace.stems) or 'none'}",
        f"normalization layers (per view): {len(model_trace.normalizations)}",
        f"head (per view, not pruned): {', '.join(model_trace.head) or 'none'}",
        f"mask points: {len(model_trace.mask_points())}; hints: {', '.join(model_trace.hint_layers) or 'none'}",
        f"unpruned layers: {', '.join(model_trace.unpruned) or 'none'}",
    ]
    return "\n".join(lines)


def layers_by_name(model: keras.Model) -> Dict[str, keras.layers.Layer]:
    """Every layer of a model, nested models' layers included, by name."""
    result = {}
    for layer in model.layers:
        result.update(layers_by_name(layer) if isinstance(layer, keras.Model) else {layer.name: layer})
    return result


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


def _unsupported(op, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(
        f"Cannot trace layer {op.name!r} ({type(op).__name__}): {why}. List it in unpruned_layers "
        f"(--unpruned_layers={op.name}) to keep its inputs and outputs whole, or rebuild the model with "
        "supported layers.")
