"""Traces any Keras model into the mask groups of filter pruning, and runs it.

The model is first made one flat graph at a fixed input size
(`hsd_tf.flatten`: nested models and composite layers inlined). Every channel
of every tensor then gets a label. Conv and dense layers create new labels;
per-channel layers (BatchNormalization, activations, pooling, padding,
dropout, resizing and augmentation, an SE block's `Reshape((1, 1, C))`) pass
them on; `Add`, `Multiply`, `Subtract`, `Average`, `Maximum` and `Minimum`
merge their inputs' labels position by position (union-find); `Concatenate`
on the channel axis joins the label lists; `Flatten` repeats them once per
position; `DepthwiseConv2D` repeats each `depth_multiplier` times.

A mask group is a set of channels that must be kept or dropped together: the
merged labels that the same convs produce. A channel of a group made by m convs
(a ResNet stage's residual outputs) stands for m filters. Not prunable: the
channels of the stems (the convs that read the model's input, whose filters
the method keeps), of dense layers alone (the head, which is not masked; a
dense layer whose channels merge with a conv's, as in a squeeze-and-excitation
block, joins that conv's group), any channel merged with the input or reaching
the model's output, and the inputs and outputs of the layers named unpruned.
A layer called twice produces the same channels both times, and reads the same
channels at every call (its inputs are merged), since one slim layer serves
every call. A layer the tracer cannot follow is kept whole when every channel
it reads is unprunable anyway (preprocessing on the image); anywhere else it
is an error that names every such layer at once.

The trace is also a program: `run` executes the flat model's graph step by
step, with any layer swapped for another (a cascade view's own BatchNorm, the
slim model's narrower conv) and a mask multiplied in after every op that can
turn a zero channel non-zero (*mask points*): normalization layers, convs and
dense layers unless a BatchNorm alone reads them (the mask then sits after
that BatchNorm, where the method's score gradient is taken), biased depthwise
convs, activations with f(0) != 0, adding a constant, and any op not known to
keep zeros. A masked channel is then exactly zero wherever a layer mixes
channels, so removing it changes nothing.

Tracing only reads the model; it changes nothing.
"""

import dataclasses
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from hsd_tf import flatten as flatten_lib

# Pooling, padding, cropping, upsampling and spatial dropout of sequences (1-D), images (2-D) and volumes (3-D):
# each channel alone, and a zero channel stays zero.
SPATIAL_PER_CHANNEL = tuple(
    getattr(keras.layers, f"{kind}{rank}D") for rank in (1, 2, 3)
    for kind in ("MaxPooling", "AveragePooling", "GlobalAveragePooling", "GlobalMaxPooling", "ZeroPadding",
                 "Cropping", "UpSampling", "SpatialDropout"))
# Layers that act on each channel alone: a channel's label passes through.
PER_CHANNEL = (
    keras.layers.BatchNormalization, keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU,
    keras.layers.PReLU, keras.layers.ELU, keras.layers.Softmax, keras.layers.Dropout,
    keras.layers.GaussianNoise, keras.layers.GaussianDropout, keras.layers.Rescaling, keras.layers.Normalization,
    keras.layers.Identity, keras.layers.InputLayer,
) + SPATIAL_PER_CHANNEL
# Spatial preprocessing and augmentation: each channel alone, and a zero channel stays zero.
SPATIAL = (
    keras.layers.Resizing, keras.layers.CenterCrop, keras.layers.RandomCrop, keras.layers.RandomFlip,
    keras.layers.RandomRotation, keras.layers.RandomZoom, keras.layers.RandomTranslation,
)
# Augmentation that acts on each channel alone but may turn a zero channel non-zero.
AUGMENTING = (keras.layers.RandomContrast, keras.layers.RandomBrightness)
MERGING = (keras.layers.Add, keras.layers.Multiply, keras.layers.Subtract, keras.layers.Average,
           keras.layers.Maximum, keras.layers.Minimum)
PLAIN_CONVS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
SEPARABLE_CONVS = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
TRANSPOSED_CONVS = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
DEPTHWISE_CONVS = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
CONVS = PLAIN_CONVS + SEPARABLE_CONVS + TRANSPOSED_CONVS
NORMALIZATIONS = (keras.layers.BatchNormalization, keras.layers.LayerNormalization,
                  keras.layers.GroupNormalization)
# Element-wise keras.ops calls recorded as graph nodes (MobileNetV3's `x + 3.0`, hard-swish).
ELEMENTWISE_OPS = frozenset((
    "Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum", "Negative", "Abs", "Absolute",
    "Square", "Sqrt", "Relu", "Relu6", "Sigmoid", "HardSigmoid", "Silu", "HardSilu", "Gelu", "Tanh", "Elu", "Selu",
    "Softplus", "LeakyRelu", "Sign", "Exp", "Log", "Log1p", "Expm1", "Softsign", "Round", "Floor", "Ceil",
    "ReLU", "Celu", "HardTanh", "HardShrink", "SoftShrink", "TanhShrink", "Squareplus", "SparsePlus",
))
# Ops that map a zero channel to zero whatever else they do: no mask needed after them.
ZERO_KEEPING = (
    keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.PReLU, keras.layers.ELU, keras.layers.Dropout,
    keras.layers.GaussianDropout, keras.layers.Identity, keras.layers.Flatten, keras.layers.Reshape,
    keras.layers.Concatenate, keras.layers.InputLayer,
) + SPATIAL_PER_CHANNEL + MERGING + SPATIAL
ZERO_KEEPING_ACTIVATIONS = frozenset((
    "relu", "relu6", "leaky_relu", "elu", "selu", "tanh", "silu", "swish", "gelu", "hard_silu", "hard_swish",
    "linear", "mish", "softsign",
))
ZERO_KEEPING_OPS = frozenset((
    "Multiply", "Divide", "TrueDivide", "Negative", "Abs", "Absolute", "Square", "Sqrt", "Relu", "Relu6", "Silu",
    "HardSilu", "Gelu", "Tanh", "Elu", "Selu", "LeakyRelu", "Sign", "Log1p", "Expm1", "Softsign", "Round", "Floor",
    "Ceil", "ReLU", "Celu", "HardTanh", "HardShrink", "SoftShrink", "TanhShrink",
))
# Element-wise ops that keep zeros only when every operand is a tensor of the graph (no constant).
ZERO_KEEPING_WITHOUT_CONSTANT = frozenset(("Add", "Subtract", "Maximum", "Minimum"))
ACTIVATIONS = (keras.layers.ReLU, keras.layers.Activation, keras.layers.ELU, keras.layers.LeakyReLU,
               keras.layers.PReLU)

# keras.ops calls that move or reduce values along axes (`_axis_op_channels`): they follow channels when the
# channel axis is left alone, a split or a slice of it divides or selects them. All keep a zero channel zero
# (a Pad only with zeros, `_needs_mask`).
AXIS_OPS = frozenset((
    "Mean", "Sum", "Max", "Min", "Var", "Std", "Median", "Reshape", "ExpandDims", "Squeeze", "Transpose",
    "GetItem", "Split", "Pad", "Concatenate", "Cast", "Resize", "MaxPool", "AveragePool",
))

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
            channel), "grouped" (an unpruned grouped conv), "separable", "transpose", "dense", or
            "opaque" (a layer kept whole whose kernels the tracer does not follow one by one).
        kernel: Kernel positions (kh x kw; 1 for dense layers).
        multiplier: Output channels per input channel of depthwise and separable kernels; a grouped
            conv's groups.
        positions: Positions the kernel is applied at, per image.
        output_size: Spatial size of the output, per image.
        inputs: Placement of each input channel.
        outputs: Placement of each output channel.
        fixed_params: An opaque layer's kernel weights (every conv and dense kernel inside it).
        fixed_macs: An opaque layer's MACs per image, counted from its TensorFlow graph.
    """

    name: str
    kind: str
    kernel: int
    multiplier: int
    positions: int
    output_size: Tuple[int, ...]
    inputs: Tuple[Placement, ...]
    outputs: Tuple[Placement, ...]
    fixed_params: int = 0
    fixed_macs: int = 0


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
        model: The flat model traced (`hsd_tf.flatten`): the layers the program calls.
        origin: Flat layer name -> its path in the model given ("backbone/block_1/conv").
        opaque: Composite layers kept as they are (not inlined) -> why (`hsd_tf.flatten`).
    """

    def nothing_prunable(self) -> str:
        """Why a model has no prunable channels, in words (the layers kept opaque, if any)."""
        kept = "; ".join(f"{name!r} ({why[:160]})" for name, why in self.opaque.items())
        return ("the model has no prunable channels (every conv's output reaches the output, a layer that mixes "
                "channels or is kept whole)" + (f"; layers kept whole as they are: {kept}" if kept else ""))

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
    model: Optional[keras.Model] = None
    origin: Dict[str, str] = dataclasses.field(default_factory=dict)
    opaque: Dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def input_dtypes(self) -> Tuple[str, ...]:
        """Each input's dtype ("float32"; "int32" for tokens)."""
        return tuple(keras.backend.standardize_dtype(x.dtype) for x in self.model.inputs)

    @property
    def input_names(self) -> Tuple[str, ...]:
        return tuple(x.name for x in self.model.inputs)

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


def identity_at_inference(op) -> bool:
    """Keras' random augmentation layers (all but RandomCrop, which crops at inference too) act only in training.

    The exported students leave them out (`hsd_tf.slimming`): they would
    compute nothing, and the TFLite converter refuses some of their ops.
    """
    kind = type(op)
    return (isinstance(op, keras.layers.Layer) and kind.__module__.startswith("keras.src.layers.preprocessing")
            and kind.__name__.startswith("Random") and kind is not keras.layers.RandomCrop)


def sample_inputs(model_trace: Trace, batch: int, rng: np.random.RandomState) -> List[np.ndarray]:
    """A random batch of every input: normal floats, and integer tokens each Embedding reading them can look up."""
    readers = {}
    for step in model_trace.steps:
        if isinstance(step.operation, keras.layers.Embedding):
            for key in step.inputs:
                readers[key] = min(readers.get(key, step.operation.input_dim), step.operation.input_dim)
    samples = []
    for key, shape, dtype in zip(model_trace.input_keys, model_trace.input_shapes, model_trace.input_dtypes):
        size = (batch,) + tuple(shape)
        samples.append(rng.randint(0, readers.get(key, 2), size=size).astype(dtype) if "int" in dtype
                       else rng.normal(size=size).astype(dtype))
    return samples


def model_inputs(inputs):
    """A batch as a functional model takes it: the one tensor of a one-input model, else the list."""
    inputs = keras.tree.flatten(inputs)
    return inputs[0] if len(inputs) == 1 else inputs


def flat_masks(group_masks: Sequence) -> tf.Tensor:
    """[1] followed by every group's mask: what a mask point's indices gather from (index 0: not prunable)."""
    return tf.concat([tf.ones([1], tf.float32)] + [tf.cast(m, tf.float32) for m in group_masks], axis=0)


def flat_indices(placements: Sequence[Placement], group_widths: Sequence[int]) -> np.ndarray:
    """Each channel's index in the flat mask vector (`flat_masks`); 0 (the constant 1) for a channel no group holds."""
    offsets = np.cumsum([1] + list(group_widths))
    return np.array([0 if c is None else offsets[c[0]] + c[1] for c in placements], np.int64)


def run(model_trace: Trace, inputs: Sequence, layer_for: Optional[Callable] = None, group_masks=None,
        training=None, op_for: Optional[Callable] = None):
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
        op_for: Maps each step to the keras op to call in its place (default:
            its own); a slim model's channel split splits at its kept counts.

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
        elif op_for is not None and not isinstance(op, keras.layers.Layer):
            op = op_for(step)
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


def trace(model: keras.Model, unpruned_layers: Sequence[str] = (), input_shape: Optional[Sequence[int]] = None
          ) -> Trace:
    """Mask groups, stems, normalization layers, head and program of any Keras model.

    The model is first made one flat graph at a fixed input size
    (`hsd_tf.flatten`): nested models and composite layers are inlined, so the
    trace, its program and every name in it are the flat model's.

    Args:
        model: A built functional, Sequential or subclassed Keras model.
        unpruned_layers: Names of layers to leave whole: their input and output
            channels are not pruned, and a layer the tracer cannot follow
            channel by channel (a Lambda, a grouped conv) is accepted when named.
            A nested model or composite layer named here leaves everything inside it whole.
        input_shape: The input's shape without the batch axis, for a model whose
            own input has unknown dimensions (or a subclassed model).

    Returns:
        A `Trace`.

    Raises:
        UnsupportedLayerError: Layers whose channels the tracer cannot follow
            (all of them, in one message), a name in `unpruned_layers` that is no
            layer of the model, or a model that cannot be flattened.
    """
    try:
        flat = flatten_lib.flatten(model, input_shape)
    except flatten_lib.FlattenError as error:
        raise UnsupportedLayerError(str(error)) from None
    held = {name: set(inner) for name, inner in flat.holders.items()}
    known = set(flat.origin) | set(held) | {path.rsplit("/", 1)[-1] for path in flat.origin.values()}
    missing = set(unpruned_layers) - known
    if missing:
        raise UnknownLayersError(
            f"unpruned_layers names layers the model does not have. Received: {sorted(missing)}")
    by_original = {}
    for flat_name, path in flat.origin.items():
        by_original.setdefault(path.rsplit("/", 1)[-1], set()).add(flat_name)
    unpruned = set()
    for name in unpruned_layers:
        unpruned |= {name} | held.get(name, set()) | by_original.get(name, set())
    tracer = _Tracer(unpruned & set(flat.origin), flat.origin, flat.opaque)
    graph = flatten_lib.graph_of(flat.model)
    input_keys = [tracer.key(x) for x in graph.inputs]
    for key, x in zip(input_keys, graph.inputs):
        tracer.labels_of[key] = tracer.labels.new(_channels(x), frozen=True)
        tracer.input_labels += tracer.labels_of[key]
    tracer.run(graph)
    output_keys = [tracer.key(x) for x in graph.outputs]
    for key in output_keys:
        tracer.labels.freeze(tracer.labels_of[key])
    if tracer.unsupported:
        raise _unsupported(tracer.unsupported)
    return tracer.finish(flat, input_keys, tuple(tuple(x.shape[1:]) for x in graph.inputs), output_keys)


class _Tracer:
    """Labels every tensor of a flat graph and records the program."""

    def __init__(self, unpruned: set, origin: Dict[str, str], opaque: Dict[str, str]):
        self.unpruned = unpruned
        self.origin = origin
        self.opaque = opaque
        self.labels = _Labels()
        self.labels_of: Dict[int, List[int]] = {}  # tensor key -> its channels' labels
        self.keys: Dict[int, int] = {}  # id(KerasTensor) -> tensor key
        self.steps: List[dict] = []
        self.stems: List[str] = []
        self.normalizations: List[str] = []
        self.head: List[str] = []
        self.order: List[str] = []  # producers in order of appearance
        self.produced: Dict[int, List[int]] = {}  # id(layer) -> its output labels
        self.first_inputs: Dict[int, List[List[int]]] = {}  # id(layer) -> the input labels of its first call
        self.weighted: List[tuple] = []
        self.input_labels: List[int] = []
        self.unsupported: List[Tuple[object, str]] = []

    def key(self, tensor) -> int:
        return self.keys.setdefault(id(tensor), len(self.keys))

    def run(self, graph) -> None:
        """Labels every tensor of `graph` (its inputs already labelled)."""
        for depth in sorted(graph._nodes_by_depth, reverse=True):  # pylint: disable=protected-access
            for node in graph._nodes_by_depth[depth]:  # pylint: disable=protected-access
                if not node.operation or node.is_input:
                    continue
                in_keys = [self.key(x) for x in node.input_tensors]
                out_keys = [self.key(x) for x in node.outputs]
                inputs = [self.labels_of[k] for k in in_keys]
                self.same_inputs_every_call(node.operation, inputs)
                try:
                    results = self.operation(node, inputs)
                except Exception as error:  # pylint: disable=broad-except  (one line, never a traceback)
                    op = node.operation
                    raise UnsupportedLayerError(
                        f"Cannot trace layer {op.name!r} ({type(op).__name__}, at "
                        f"{self.origin.get(op.name, op.name)}): {flatten_lib.one_line(error)}") from None
                for key, result in zip(out_keys, results):
                    self.labels_of[key] = result
                self.steps.append({"operation": node.operation, "node": node, "inputs": tuple(in_keys),
                                   "outputs": tuple(out_keys)})

    def same_inputs_every_call(self, op, inputs) -> None:
        """A layer called again must keep the same input channels as at its first call.

        One slim layer serves every call, with one set of kept input rows (a
        conv's kernel, a BatchNorm's statistics, a Reshape's width), so the
        channels that reach it at each call are merged position by position.
        A layer without weights that keeps each channel apart (a ReLU reused on
        two branches) needs nothing: its slim copy fits any width.
        """
        if not isinstance(op, keras.layers.Layer) or not (op.weights or isinstance(op, keras.layers.Reshape)):
            return
        first = self.first_inputs.setdefault(id(op), inputs)
        if first is inputs:
            return
        for a, b in zip(first, inputs):
            if len(a) == len(b):
                for x, y in zip(a, b):
                    self.labels.union(x, y)

    def operation(self, node, inputs) -> List[List[int]]:
        """Output label lists of one graph node.

        A layer the tracer cannot follow is kept whole when every channel it
        reads is unprunable anyway (preprocessing on the image, an op after a
        stem); otherwise it is recorded as unsupported and the trace goes on,
        so that one error can name every such layer.
        """
        op = node.operation
        name = op.name
        if isinstance(op, NORMALIZATIONS) and name not in self.normalizations:
            self.normalizations.append(name)
        if name in self.unpruned:
            return self.kept_whole(node, inputs)
        try:
            return self.supported(node, inputs)
        except _Unfollowable as why:
            if all(self.labels.frozen[self.labels.find(label)] for labels in inputs for label in labels):
                return self.kept_whole(node, inputs)
            self.unsupported.append((name, type(op).__name__, self.origin.get(name, name), str(why)))
            return [self.labels.new(_channels(x), frozen=True) for x in node.outputs]

    def kept_whole(self, node, inputs) -> List[List[int]]:
        """An unpruned layer: its input and output channels stay whole; its kernels still count."""
        op = node.operation
        for labels in inputs:
            self.labels.freeze(labels)
        if isinstance(op, PLAIN_CONVS) and op.groups not in (1, len(inputs[0])):
            outputs = self.labels.new(op.filters, frozen=True)
            self.record_weighted(node, "grouped", inputs[0], outputs)
            return [outputs]
        if isinstance(op, CONVS + DEPTHWISE_CONVS + (keras.layers.Dense,)):
            results = self.supported(node, inputs)
            for labels in results:
                self.labels.freeze(labels)
            return results
        input_roots = {self.labels.find(label) for label in self.input_labels}
        on_input = all(self.labels.find(label) in input_roots for labels in inputs for label in labels)
        outputs = [self.labels.new(_channels(x), frozen=True) for x in node.outputs]
        if on_input:  # preprocessing of the image: a conv reading its result is a stem
            self.input_labels += [label for labels in outputs for label in labels]
        self.record_opaque(node)
        return outputs

    def supported(self, node, inputs) -> List[List[int]]:
        """Output label lists of a node the tracer follows channel by channel."""
        op = node.operation
        name = op.name
        if isinstance(op, PLAIN_CONVS) and op.groups != 1:
            if op.groups != len(inputs[0]):
                raise _Unfollowable(f"a grouped convolution ({op.groups} groups of "
                                       f"{len(inputs[0]) // op.groups} channels) ties blocks of channels together")
            # One group per input channel is a depthwise convolution (ConvNeXt's): output o reads input o // m.
            outputs = [label for label in inputs[0] for _ in range(op.filters // op.groups)]
            self.record_weighted(node, "depthwise", inputs[0], outputs)
            return [outputs]
        if isinstance(op, CONVS + (keras.layers.Dense,)):
            kind = ("dense" if isinstance(op, keras.layers.Dense) else "separable"
                    if isinstance(op, SEPARABLE_CONVS) else "transpose" if isinstance(op, TRANSPOSED_CONVS) else "conv")
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
        if isinstance(op, DEPTHWISE_CONVS):
            outputs = [label for label in inputs[0] for _ in range(op.depth_multiplier)]
            self.record_weighted(node, "depthwise", inputs[0], outputs)
            return [outputs]
        if isinstance(op, (keras.layers.LayerNormalization, keras.layers.GroupNormalization)):
            # Statistics over several channels: a masked channel would change its neighbours' output.
            self.labels.freeze(inputs[0])
            return [inputs[0]]
        if isinstance(op, PER_CHANNEL + SPATIAL + AUGMENTING):
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
            # Row-major order: a reshape that keeps the last axis's size leaves every value in its channel
            # (an SE block's (1, 1, C), a transformer's (H * W, C) tokens).
            if _last_dim(node.outputs[0]) == len(inputs[0]):
                return [inputs[0]]
            raise _Unfollowable(f"a Reshape to {tuple(op.target_shape)} moves channels off the last axis")
        if type(op).__module__.startswith("keras.src.applications."):
            if type(op).__name__ in APPLICATION_PER_CHANNEL:
                return [inputs[0]]
            if type(op).__name__ in APPLICATION_MERGING:
                return [self.merge(inputs)]
        if not isinstance(op, keras.layers.Layer) and type(op).__name__ in ELEMENTWISE_OPS:
            return [self.merge(inputs) if len(inputs) > 1 else inputs[0]]
        if not isinstance(op, keras.layers.Layer) and type(op).__name__ in AXIS_OPS:
            rank = len(node.input_tensors[0].shape)
            if type(op).__name__ == "Concatenate" and op.axis % rank != rank - 1:
                return [self.merge(inputs)]  # along tokens or space: the same channels at every position
            return _axis_op_channels(node, inputs)
        if isinstance(op, keras.layers.Layer) and _acts_per_channel(node):
            return [inputs[0]]
        raise _Unfollowable("its channels cannot be followed")

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

    def record_opaque(self, node) -> None:
        """Counts the kernels and MACs of a layer kept whole as it is (nothing inside it is pruned)."""
        params = kernel_weights(node.operation) if isinstance(node.operation, keras.layers.Layer) else 0
        if params and any(None in tuple(x.shape[1:]) for x in list(node.input_tensors) + list(node.outputs)):
            why = self.opaque.get(self.origin.get(node.operation.name, "").rsplit("/", 1)[-1])
            raise ValueError("its inputs or outputs have sizes unknown at a fixed image size, so its MACs cannot be "
                             "counted" + (f"; it stays a layer of its own because {why}" if why else ""))
        if params:
            shape = tuple(int(d) for d in node.outputs[0].shape[1:-1])
            self.weighted.append((node.operation.name, "opaque", 1, 1, 1, shape, [], [], params, _graph_macs(node)))

    def finish(self, flat, input_keys, input_shapes, output_keys) -> Trace:
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
        firsts = [members[0] for members in widths]
        # Named after the first member; "+"-joined members where two groups share it (a conv whose channels a
        # merge ties to two others, in two slices).
        groups = sorted((MaskGroup(members[0] if firsts.count(members[0]) == 1 else "+".join(members), members, width)
                         for members, width in widths.items()), key=lambda g: (order[g.members[0]], g.members))
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
        weighted = tuple(WeightedLayer(name, kind, kernel, multiplier, positions, size, place(ins), place(outs), *fixed)
                         for name, kind, kernel, multiplier, positions, size, ins, outs, *fixed in self.weighted)
        hints = _hint_steps(steps, input_keys)
        return Trace(tuple(groups), tuple(self.stems), tuple(self.normalizations), tuple(self.head), weighted,
                     tuple(steps), tuple(input_keys), input_shapes, tuple(output_keys),
                     tuple(steps[i].outputs[0] for i in hints), tuple(steps[i].operation.name for i in hints),
                     tuple(sorted(self.unpruned)), flat.model, flat.origin, flat.opaque)


def _needs_mask(step: dict, consumers: Sequence) -> bool:
    """Whether an op with prunable output channels can make a zero channel non-zero (or creates channels)."""
    op = step["operation"]
    if isinstance(op, CONVS + (keras.layers.Dense,)) and getattr(op, "groups", 1) == 1:
        # A BatchNorm alone reading the conv is masked instead: the method's mask point.
        return not consumers or not all(isinstance(c, keras.layers.BatchNormalization) for c in consumers)
    if isinstance(op, DEPTHWISE_CONVS + PLAIN_CONVS):
        return bool(op.use_bias)
    if isinstance(op, ZERO_KEEPING):
        return False
    if isinstance(op, keras.layers.Activation):
        return getattr(op.activation, "__name__", "") not in ZERO_KEEPING_ACTIVATIONS
    if type(op).__module__.startswith("keras.src.applications."):
        return type(op).__name__ not in APPLICATION_PER_CHANNEL | APPLICATION_MERGING
    if not isinstance(op, keras.layers.Layer):
        name = type(op).__name__
        if name == "ReLU" and getattr(op, "threshold", 0) and getattr(op, "negative_slope", 0):
            return True  # keras.activations.relu below a threshold with a slope: 0 maps to -slope * threshold
        if name in ZERO_KEEPING_OPS:
            return False
        if name in AXIS_OPS:
            return name == "Pad" and np.any(np.asarray(pad_value(step["node"])) != 0)
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
            ("Relu", "ReLU", "Relu6", "Silu", "HardSilu", "Gelu", "Elu", "Selu", "LeakyRelu"))
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


KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")


def kernel_weights(layer: keras.layers.Layer) -> int:
    """Weights of every conv and dense kernel of a layer or model, its sublayers' included, each counted once.

    The paper's count: kernels only, no biases, no normalization. The costs of a
    dense traced model add up to this (`tests/costs_test.py`).
    """
    kernels = {id(w): math.prod(w.shape) for sub in layer._flatten_layers(include_self=True)  # pylint: disable=protected-access
               for w in sub.weights if w.name in KERNEL_NAMES}
    return int(sum(kernels.values()))


# TensorFlow ops that multiply-accumulate: every output element costs the product of the contracted sizes.
_CONTRACTING_OPS = frozenset(("Conv2D", "Conv3D", "DepthwiseConv2dNative", "Conv2DBackpropInput",
                              "Conv3DBackpropInputV2", "MatMul",
                              "BatchMatMulV2", "BatchMatMulV3", "Einsum"))


def _graph_macs(node) -> int:
    """MACs per image of one call of a layer, from the contracting ops of its TensorFlow graph at batch 1."""
    op = node.operation

    def call(*values):
        args, kwargs = node.arguments.fill_in({id(x): v for x, v in zip(node.input_tensors, values)})
        if "training" in getattr(op, "_call_context_args", ()):
            kwargs["training"] = False
        return op(*args, **kwargs)

    specs = [tf.TensorSpec((1,) + tuple(x.shape[1:]), x.dtype) for x in node.input_tensors]
    graph = tf.function(call).get_concrete_function(*specs).graph
    return int(sum(_op_macs(o) for o in graph.get_operations() if o.type in _CONTRACTING_OPS))


def _op_macs(op) -> int:
    """MACs of one contracting TensorFlow op: output elements x the size of what each output sums over."""
    shape = lambda t: [int(d) for d in t.shape]  # noqa: E731
    if op.type in ("Conv2DBackpropInput", "Conv3DBackpropInputV2"):  # transposed: each input element meets the kernel
        *window, out_channels, _ = shape(op.inputs[1])
        return math.prod(shape(op.inputs[2])) * math.prod(window) * out_channels
    out = math.prod(shape(op.outputs[0]))
    if op.type in ("Conv2D", "Conv3D"):
        return out * math.prod(shape(op.inputs[1])[:-1])
    if op.type == "DepthwiseConv2dNative":
        return out * math.prod(shape(op.inputs[1])[:-2])
    if op.type == "MatMul":
        return out * shape(op.inputs[0])[0 if op.get_attr("transpose_a") else 1]
    if op.type.startswith("BatchMatMul"):
        return out * shape(op.inputs[0])[-2 if op.get_attr("adj_x") else -1]
    equation = op.get_attr("equation").decode().replace(" ", "")
    operands, result = equation.split("->")
    sizes = {}
    for labels, tensor in zip(operands.split(","), op.inputs):
        dims = shape(tensor)
        labels = labels.replace("...", "." * (len(dims) - len(labels.replace("...", ""))))
        sizes.update((label, d) for label, d in zip(labels, dims) if label != ".")
    return out * math.prod(d for label, d in sizes.items() if label not in result)


def _last_dim(tensor) -> Optional[int]:
    return tensor.shape[-1] if len(tensor.shape) > 1 else None


def _axis_op_channels(node, inputs) -> List[List[int]]:
    """Output labels of a keras.ops call that moves or reduces values along axes (`AXIS_OPS`).

    The channel axis is the last. It is left alone when the op's axes exclude it
    (a mean over height and width, padding of the spatial axes, a class token's
    `x[:, 0]`); a split along it divides its labels, a slice selects them, a
    concatenation along it joins them. Anything else that touches it is unfollowable.
    """
    op = node.operation
    kind = type(op).__name__
    x = node.input_tensors[0]
    rank = len(x.shape)
    channel = rank - 1

    def axes(value):
        value = [value] if isinstance(value, int) else list(range(rank)) if value is None else list(value)
        return {a % rank for a in value}

    if kind == "Concatenate":  # along the channel axis (along another, `_Tracer.supported` merges)
        return [[label for labels in inputs for label in labels]]
    if kind == "Split":
        outputs = node.outputs
        if op.axis % rank == channel:
            sizes = [int(t.shape[-1]) for t in outputs]
            starts = np.cumsum([0] + sizes)
            return [inputs[0][a:b] for a, b in zip(starts[:-1], starts[1:])]
        return [inputs[0] for _ in outputs]
    if kind == "GetItem":
        key = node.arguments.args[1] if len(node.arguments.args) > 1 else node.arguments.kwargs["key"]
        if _channel_key(key, rank) is None:
            return [inputs[0]]
        # A slice's bounds are positions: once channels are removed they would select others.
        raise _Unfollowable(f"indexing {key!r} selects channels by position")
    if kind in ("Mean", "Sum", "Max", "Min", "Var", "Std", "Median"):
        touched = channel in axes(op.axis)
    elif kind == "Transpose":
        touched = op.axes is None or list(op.axes)[-1] % rank != channel
    elif kind == "Pad":
        widths = pad_widths(op, rank)
        touched = widths[channel] != (0, 0)
        if not np.all(np.isfinite(pad_value(node))):  # a masked channel times 0 would be NaN at the border
            raise _Unfollowable(f"it pads with {pad_value(node)}")
    elif kind in ("Squeeze", "ExpandDims"):
        touched = channel in axes(op.axis) if kind == "Squeeze" else False
    else:  # Reshape, Cast, Resize, MaxPool, AveragePool: the channels of the output are those of the input
        touched = False
    if touched or _last_dim(node.outputs[0]) != len(inputs[0]):
        raise _Unfollowable(f"{kind} acts along the channel axis")
    return [inputs[0] for _ in node.outputs]


def pad_widths(op, rank: int) -> List[Tuple[int, int]]:
    """A keras.ops pad's (before, after) widths, one pair per axis (one pair given applies to every axis)."""
    widths = list(op.pad_width) if len(op.pad_width) > 1 else list(op.pad_width) * rank
    return [tuple(w) for w in widths]


def pad_value(node):
    value = node.arguments.kwargs.get("constant_values")
    return 0 if value is None else value


def _channel_key(key, rank):
    """What an index `key` does to the last axis of a rank-`rank` tensor: None (nothing), else the key's part."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is None for k in key):
        raise _Unfollowable(f"indexing {key!r} adds axes")
    if Ellipsis in key:
        after = key[key.index(Ellipsis) + 1:]
        return after[-1] if after else None
    return key[rank - 1] if len(key) >= rank else None


def _acts_per_channel(node) -> bool:
    """Whether a layer the tracer does not know acts on each channel alone, checked on random inputs.

    Only for a layer with one input and one output of the same shape whose weights
    are all scalars (HGNetV2's learnable affine `scale * x + bias`, a Lambda
    `2 * t + 1`): changing one input channel must change that output channel and no
    other, for up to 16 channels spread over the axis. A layer that mixes channels
    the probe misses would still be caught before training, by slimming to random
    masks (`hsd_tf.slimming.rehearse`).
    """
    op = node.operation
    if len(node.input_tensors) != 1 or len(node.outputs) != 1 or any(math.prod(w.shape) > 1 for w in op.weights):
        return False
    shape = tuple(node.input_tensors[0].shape[1:])
    if shape != tuple(node.outputs[0].shape[1:]) or not shape or None in shape:
        return False
    rng = np.random.RandomState(0)
    x = rng.normal(size=(2,) + shape).astype("float32")
    base = np.asarray(op(x, training=False) if "training" in getattr(op, "_call_context_args", ()) else op(x))
    channels = shape[-1]
    probed = set(np.linspace(0, channels - 1, min(channels, 8)).astype(int).tolist())
    for channel in sorted(probed | set(rng.randint(0, channels, size=min(channels, 8)).tolist())):
        changed = x.copy()
        changed[..., channel] = rng.normal(size=changed[..., channel].shape)
        out = np.asarray(op(changed))
        moved = np.abs(out - base).reshape(-1, channels).max(axis=0) > 1e-6 * max(np.abs(base).max(), 1.0)
        if moved.sum() > 1 or (moved.any() and not moved[channel]):
            return False
    return True


class _Unfollowable(Exception):
    """Raised inside the tracer for an op whose channels it cannot follow; the message says why."""


def _channels(tensor) -> int:
    if len(tensor.shape) > 1 and tensor.shape[-1] is None:
        raise ValueError(f"its output has an unknown number of channels (shape {tuple(tensor.shape)})")
    return int(tensor.shape[-1]) if len(tensor.shape) > 1 else 1


def _unsupported(found: Sequence[Tuple[str, str, str, str]]) -> UnsupportedLayerError:
    """One error naming every layer the tracer could not follow: (name, type, path, why) each."""
    described = "; ".join(f"{name!r} ({kind}{', at ' + path if path != name else ''}): {why}"
                          for name, kind, path, why in found)
    names = ",".join(name for name, _, _, _ in found)
    it, them = ("it", "its") if len(found) == 1 else ("them", "their")
    return UnsupportedLayerError(
        f"Cannot trace layer{'s' * (len(found) > 1)} {described}. List {it} in unpruned_layers "
        f"(--unpruned_layers={names}) to keep {them} inputs and outputs whole, or rebuild the model with "
        "supported layers.")
