"""Any Keras model as one flat functional graph of leaf layers and ops, at a fixed input size.

The tracer (`hsd_tf.graph`) follows channels through layers it knows. Models
people bring hide those layers one or more levels down: a keras_hub classifier
holds a backbone model, whose blocks are subclassed layers (MobileNet's
`DepthwiseConvBlock`) built from standard sublayers and `keras.ops` calls; a
transfer-learning model holds a keras.applications base; a keras_hub backbone
reads `(None, None, 3)` images. `flatten` makes all of them one plain graph:

- nested models (functional, Sequential) are inlined;
- a *composite layer* (a layer that is not Keras' own, owns no weights itself
  and whose `call` uses only layers and `keras.ops`) is inlined as the graph
  its `call` records on symbolic inputs; Keras records a node for every layer
  and op called on a `KerasTensor`, so that graph is exact. It is recorded in
  inference mode (`training=False`), and checked: the composite and its graph
  must give the same outputs on random inputs, or the composite stays a leaf.
  Training-only branches inside a composite (its own stochastic depth, say) are
  therefore not part of the flat graph. Where Keras cannot record a composite's
  sublayer as a node (keras_hub's DeiT blocks return `(outputs, None)`), every
  composite inside it is recorded as a model of its own `call` and inlined; a
  constant a composite returns (DeiT's empty attention scores) stays a constant;
- every leaf layer is cloned from its config under a name unique in the flat
  model (its own name, or prefixed by the layer holding it), called on inputs
  of the given size, and given the original's weights. A layer called twice
  is one clone called twice. A `Lambda` is shared, not cloned: Keras will not
  rebuild its function from a config.

A model that is already flat (no nested model, no composite layer, a fixed
input size, unique layer names) is returned as it is. The original is never
changed, except that an inlined composite's sublayers keep the extra node the
symbolic call recorded.
"""

import contextlib
import dataclasses
import inspect
import re
from typing import Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np

# Tolerance, relative to the largest output, within which an inlined composite must match itself.
INLINE_TOLERANCE = 1e-4


class FlattenError(ValueError):
    """A model that cannot be made into a flat graph (no fixed input size, no graph at all)."""


@dataclasses.dataclass(frozen=True)
class Flat:
    """A flat model and where its layers came from.

    Attributes:
        model: A functional model of leaf layers and ops, every input dimension but the batch fixed.
        origin: Flat layer or op name -> its path in the original model ("backbone/block_1/conv").
        holders: Name of every nested model or composite layer of the original -> the flat layer
            and op names inside it.
        opaque: Composite layers that stay leaves -> why they could not be inlined.
    """

    model: keras.Model
    origin: Dict[str, str]
    holders: Dict[str, Tuple[str, ...]]
    opaque: Dict[str, str] = dataclasses.field(default_factory=dict)


def flatten(model: keras.Model, input_shape: Optional[Sequence[int]] = None) -> Flat:
    """The model as one flat functional graph at a fixed input size.

    Args:
        model: A functional, Sequential or subclassed Keras model.
        input_shape: The shape of one input without the batch axis, for models
            whose own input has unknown dimensions (a keras_hub backbone's
            `(None, None, 3)`) or that have no input at all (subclassed).

    Returns:
        A `Flat`.

    Raises:
        FlattenError: A dimension that is unknown and not given, or a
            subclassed model that cannot be called on symbolic inputs.
    """
    graph = graph_of(model)
    shapes = _input_shapes(model, graph, input_shape)
    if graph is not None and _already_flat(graph, shapes):
        names = {op.name: op.name for op in _operations(graph)}
        return Flat(model, names, {})
    flattener = _Flattener()
    inputs = [keras.Input(shape, name=_input_name(graph, i), dtype=_input_dtype(graph, i))
              for i, shape in enumerate(shapes)]
    if graph is None:  # a subclassed model: inlined like a composite layer
        outputs = flattener.composite(model, (inputs[0],), {}, inputs, (), force=True)
    else:
        outputs = flattener.walk(graph, inputs, ())
    flat = keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs if len(outputs) > 1 else outputs[0],
                       name=model.name)
    return Flat(flat, flattener.origin, {k: tuple(v) for k, v in flattener.holders.items()}, flattener.opaque)


def graph_of(model):
    """The functional graph of a model (a Sequential model keeps one inside), or None for a subclassed one."""
    if isinstance(model, keras.Sequential):
        if not model.built or not hasattr(model, "_functional"):
            raise FlattenError(f"Sequential model {model.name!r} is not built; call it once or give it an Input.")
        return model._functional  # pylint: disable=protected-access
    return model if hasattr(model, "_nodes_by_depth") else None


def per_input(input_shape, count: int) -> list:
    """`input_shape` as one shape (or None) per input: a list of shapes as it is, one shape for the first input."""
    if input_shape is not None and len(input_shape) and all(
            isinstance(d, (tuple, list)) or d is None for d in input_shape):
        return list(input_shape) + [None] * (count - len(input_shape))
    return [input_shape] + [None] * (count - 1)


def _input_shapes(model, graph, input_shape) -> List[Tuple[int, ...]]:
    if graph is None:
        shape = per_input(input_shape, 1)[0]
        if shape is None:
            raise FlattenError(f"Model {model.name!r} ({type(model).__name__}) is subclassed and has no input "
                               "shape of its own; give the image size (input_shape, or --image_size).")
        return [tuple(int(d) for d in shape)]
    shapes = []
    for x, given in zip(graph.inputs, per_input(input_shape, len(graph.inputs))):
        shape = tuple(x.shape[1:])
        if any(d is None for d in shape):
            if given is None or len(given) != len(shape) or any(
                    d is not None and d != g for d, g in zip(shape, given)):
                raise FlattenError(f"Model {model.name!r} reads inputs of shape {shape}, with unknown dimensions; "
                                   f"give the image size to trace it at. Received: input_shape={input_shape}")
            shape = tuple(int(d) for d in given)
        shapes.append(shape)
    return shapes


def _input_name(graph, index):
    return None if graph is None else graph.inputs[index].name


def _input_dtype(graph, index):
    return None if graph is None else graph.inputs[index].dtype


def _operations(graph):
    for depth in sorted(graph._nodes_by_depth, reverse=True):  # pylint: disable=protected-access
        for node in graph._nodes_by_depth[depth]:  # pylint: disable=protected-access
            if node.operation is not None and not node.is_input:
                yield node.operation


def _already_flat(graph, shapes) -> bool:
    if any(tuple(x.shape[1:]) != shape for x, shape in zip(graph.inputs, shapes)):
        return False
    names = set()
    for op in _operations(graph):
        if isinstance(op, keras.Model) or is_composite(op):
            return False
        if isinstance(op, keras.layers.Layer):
            if op.name in names:
                return False
            names.add(op.name)
    return True


def own_weights(layer: keras.layers.Layer) -> list:
    """The weights a layer holds itself, not through a sublayer."""
    inner = {id(w) for sub in layer._flatten_layers(include_self=False) for w in sub.weights}  # pylint: disable=protected-access
    return [w for w in layer.weights if id(w) not in inner]


def is_composite(op) -> bool:
    """A layer of someone else's (not Keras' own) holding no weights itself: its `call` is a graph to inline."""
    if not isinstance(op, keras.layers.Layer) or isinstance(op, (keras.Model, keras.layers.Lambda)):
        return False
    if type(op).__module__.startswith("keras."):
        return False
    return not own_weights(op)


@contextlib.contextmanager
def _sublayers_inlined(op):
    """Within it, every composite sublayer of `op` called on symbolic inputs becomes a functional model of its `call`.

    Keras records a layer called on KerasTensors as one node, and refuses one whose `call` returns
    anything but tensors (keras_hub's `DeiTEncoderBlock` returns `(outputs, None)`). The model made
    of the sublayer's `call` (named as the sublayer, its tensor outputs only, the rest returned as
    they came) is then a nested model, which the flattener inlines like any other.
    """
    composites = {id(sub) for sub in op._flatten_layers(include_self=False) if is_composite(sub)}  # pylint: disable=protected-access
    original = keras.layers.Layer.__call__

    def call(layer, *args, **kwargs):
        tensors = [v for v in keras.tree.flatten((args, kwargs)) if isinstance(v, keras.KerasTensor)]
        if id(layer) not in composites or not tensors:
            return original(layer, *args, **kwargs)
        fresh = [keras.Input(tuple(t.shape[1:]), dtype=t.dtype) for t in tensors]
        swap = dict(zip((id(t) for t in tensors), fresh))
        inner_args, inner_kwargs = keras.tree.map_structure(
            lambda v: swap.get(id(v), v) if isinstance(v, keras.KerasTensor) else v, (args, kwargs))
        if "training" in inspect.signature(layer.call).parameters:
            inner_kwargs = {**inner_kwargs, "training": False}
        structure = layer.call(*inner_args, **inner_kwargs)
        outputs = keras.tree.flatten(structure)
        symbolic = [v for v in outputs if isinstance(v, keras.KerasTensor)]
        if not symbolic:
            return structure
        results = iter(keras.tree.flatten(keras.Model(fresh, symbolic, name=layer.name)(tensors)))
        return keras.tree.pack_sequence_as(
            structure, [next(results) if isinstance(v, keras.KerasTensor) else v for v in outputs])

    keras.layers.Layer.__call__ = call
    try:
        yield
    finally:
        keras.layers.Layer.__call__ = original


class _Flattener:
    """Re-runs a graph on new symbolic inputs, inlining nested models and composites, cloning leaves."""

    def __init__(self):
        self.clones: Dict[int, object] = {}  # id(original leaf layer) -> its clone
        self.names: set = set()
        self.origin: Dict[str, str] = {}
        self.holders: Dict[str, List[str]] = {}
        self.opaque: Dict[str, str] = {}

    def walk(self, graph, inputs: Sequence, path: Tuple[str, ...]) -> list:
        """Runs `graph` on `inputs` (new KerasTensors); returns its outputs in the flat model."""
        values = {id(x): v for x, v in zip(graph.inputs, inputs)}
        for depth in sorted(graph._nodes_by_depth, reverse=True):  # pylint: disable=protected-access
            for node in graph._nodes_by_depth[depth]:  # pylint: disable=protected-access
                op = node.operation
                if op is None or node.is_input:
                    continue
                filled = {id(x): values[id(x)] for x in node.input_tensors}
                args, kwargs = node.arguments.fill_in(filled)
                tensors = [values[id(x)] for x in node.input_tensors]
                if isinstance(op, keras.Model) and graph_of(op) is not None:
                    self.holders.setdefault(op.name, [])
                    outputs = self.walk(graph_of(op), tensors, path + (op.name,))
                elif isinstance(op, keras.Model) or is_composite(op):
                    outputs = self.composite(op, args, kwargs, tensors, path)
                else:
                    try:
                        outputs = keras.tree.flatten(self.leaf(op, path)(*args, **kwargs))
                    except Exception as error:  # pylint: disable=broad-except  (a model that cannot run at this size)
                        shapes = ", ".join(str(tuple(t.shape[1:])) for t in tensors)
                        raise FlattenError(
                            f"layer {op.name!r} ({type(op).__name__}, at {'/'.join(path + (op.name,))}) cannot run "
                            f"on inputs of shape {shapes} at this image size: {one_line(error)}") from None
                for x, value in zip(node.outputs, outputs):
                    values[id(x)] = value
        return [values[id(x)] for x in graph.outputs]

    def composite(self, op, args, kwargs, tensors, path, force=False) -> list:
        """Inlines a composite layer (or subclassed model) called with `args`, or calls it as a leaf."""
        fresh = [keras.Input(tuple(t.shape[1:]), dtype=t.dtype) for t in tensors]
        swap = dict(zip((id(t) for t in tensors), fresh))
        inner_args, inner_kwargs = keras.tree.map_structure(
            lambda v: swap.get(id(v), v) if isinstance(v, keras.KerasTensor) else v, (args, kwargs))
        if "training" in inspect.signature(op.call).parameters and "training" not in inner_kwargs:
            inner_kwargs = {**inner_kwargs, "training": False}
        why = "its graph computes something else than the layer"
        for nested in (False, True):
            try:
                with _sublayers_inlined(op) if nested else contextlib.nullcontext():
                    outputs = keras.tree.flatten(op.call(*inner_args, **inner_kwargs))
                symbolic = [i for i, v in enumerate(outputs) if isinstance(v, keras.KerasTensor)]
                graph = keras.Model(fresh, [outputs[i] for i in symbolic])
                matches = _same_function(op, graph, args, kwargs, tensors, symbolic)
            except Exception as error:  # pylint: disable=broad-except  (any failure means: not a graph we can inline)
                matches = False
                if not nested:  # the first attempt's failure says why the layer itself cannot be recorded
                    why = one_line(error)
            if matches:
                break
        if not matches:
            self.opaque[op.name] = f"{type(op).__name__}: {why}"
            if force:
                raise FlattenError(f"Model {op.name!r} ({type(op).__name__}) is subclassed and its call cannot be "
                                   "recorded as a graph of Keras layers and ops; rebuild it with the functional API.")
            return keras.tree.flatten(self.leaf(op, path)(*args, **kwargs))
        self.holders.setdefault(op.name, [])
        inlined = iter(self.walk(graph, tensors, path + (op.name,)))
        return [next(inlined) if i in symbolic else value for i, value in enumerate(outputs)]

    def leaf(self, op, path: Tuple[str, ...]):
        """The flat model's copy of a leaf layer (the op itself for keras ops and Lambdas)."""
        if not isinstance(op, keras.layers.Layer):
            self._record(op.name, op.name, path)
            return op
        if id(op) in self.clones:
            return self.clones[id(op)]
        name = op.name
        for prefix in reversed(path):
            if name not in self.names:
                break
            name = f"{prefix}_{name}"
        base, suffix = name, 1
        while name in self.names:
            name, suffix = f"{base}_{suffix}", suffix + 1
        clone = op if isinstance(op, keras.layers.Lambda) else _Clone(op, name)
        self.clones[id(op)] = clone
        self.names.add(name)
        self._record(name, op.name, path)
        return clone

    def _record(self, flat_name, name, path):
        self.origin[flat_name] = "/".join(path + (name,))
        for holder in path:
            self.holders.setdefault(holder, []).append(flat_name)


def rebuilt(layer: keras.layers.Layer, **changes) -> keras.layers.Layer:
    """A new, unbuilt layer of `layer`'s class and config, with `changes` to the config.

    Some layers' configs hold entries their constructor does not take (several
    keras_hub layers write derived sizes, or Keras' own `trainable`, that their
    `__init__` then refuses); those entries are dropped and the layer rebuilt
    from the rest, and the copy's own config leaves them out, so that a model
    holding it can be saved and loaded (keras_hub's ViT and DeiT embeddings write
    `num_patches` and `num_positions`, which their constructors refuse).

    Raises:
        Exception: Whatever the class raises when it cannot be rebuilt from its config at all.
    """
    config = {**_config(layer), **changes}  # raises NotImplementedError for a layer that has no config
    try:
        copy = layer.__class__.from_config(config)
    except Exception:  # pylint: disable=broad-except  (whatever a constructor raises on entries it refuses)
        copy = layer.__class__.from_config({k: v for k, v in config.items() if k in _accepted(layer)})
    if not type(layer).__module__.startswith("keras."):  # Keras' own layers load their configs
        own = copy.get_config
        try:
            copy.__class__.from_config(own())
        except Exception:  # pylint: disable=broad-except
            accepted = _accepted(layer)
            copy.get_config = lambda: {k: v for k, v in own().items() if k in accepted}
    return copy


def _accepted(layer: keras.layers.Layer) -> set:
    """The config entries `layer`'s constructor takes (with Keras' base layer's, where it passes on `**kwargs`)."""
    parameters = inspect.signature(layer.__class__.__init__).parameters
    accepted = set(parameters)
    if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        accepted |= set(inspect.signature(keras.layers.Layer.__init__).parameters)
    return accepted


def _config(layer: keras.layers.Layer) -> dict:
    """A layer's config; for one Keras writes none because an argument was an object (keras_hub builds
    `keras.layers.Identity(dtype=DTypePolicy(...))`, and Keras serializes only plain arguments), the config made
    again from the base layer's entries and the constructor's arguments, read from the attributes of their names.

    Raises:
        NotImplementedError: A layer with no config whose arguments are not all attributes.
    """
    try:
        return layer.get_config()
    except NotImplementedError:
        parameters = [p for p in inspect.signature(type(layer).__init__).parameters.values()
                      if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)][1:]
        if any(not hasattr(layer, p.name) for p in parameters):
            raise
        return {"name": layer.name, "trainable": layer.trainable,
                "dtype": keras.dtype_policies.serialize(layer.dtype_policy),
                **{p.name: getattr(layer, p.name) for p in parameters}}


class _Clone:
    """A leaf layer's clone, built and given the original's weights on its first call.

    A layer that cannot be rebuilt from its config, or whose rebuilt weights do
    not fit the original's, is used as it is.
    """

    def __init__(self, original, name):
        self.original = original
        try:
            self.layer = rebuilt(original, name=name)
            self.layer.name = name  # a config whose constructor drops the name: the flat model's names are these
        except Exception:  # pylint: disable=broad-except
            self.layer = original
        self.called = False

    def __call__(self, *args, **kwargs):
        if self.called or self.layer is self.original:
            return self.layer(*args, **kwargs)
        self.called = True
        try:
            outputs = self.layer(*args, **kwargs)
            set_weights(self.layer, self.original.get_weights())
        except Exception:  # pylint: disable=broad-except  (a rebuilt copy that differs: use the layer itself)
            self.layer = self.original
            outputs = self.layer(*args, **kwargs)
        return outputs


def set_weights(layer: keras.layers.Layer, weights) -> None:
    """`layer.set_weights(weights)`, then its state made from them where it keeps one: an adapted Normalization
    computes with constants made from its mean and variance (`finalize_state`), which Keras' own loading remakes
    and `set_weights` alone does not (the layer would go on with the statistics it was built with)."""
    layer.set_weights(weights)
    if hasattr(layer, "finalize_state"):
        layer.finalize_state()


def one_line(error: BaseException) -> str:
    """The informative line of an error: Keras' "Exception encountered when calling ..." frame and its argument
    listing and terminal colours left out."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    lines = [line.strip() for line in text.splitlines() if line.strip()
             and not line.strip().startswith(("Exception encountered when calling", "Arguments received", "•"))]
    return (lines[0] if lines else type(error).__name__)[:300]


def _same_function(op, graph, args, kwargs, tensors, symbolic) -> bool:
    """Whether the recorded graph computes what the layer computes, on random inputs (inference mode).

    Only the outputs at the positions `symbolic` are compared: the others were constants when recorded.
    """
    rng = np.random.RandomState(0)
    samples = [rng.normal(size=(2,) + tuple(t.shape[1:])).astype(keras.backend.standardize_dtype(t.dtype))
               for t in tensors]
    swap = dict(zip((id(t) for t in tensors), samples))
    real_args, real_kwargs = keras.tree.map_structure(
        lambda v: swap.get(id(v), v) if isinstance(v, keras.KerasTensor) else v, (args, kwargs))
    if "training" in inspect.signature(op.call).parameters:
        real_kwargs = {**real_kwargs, "training": False}
    every = keras.tree.flatten(op(*real_args, **real_kwargs))
    expected = [np.asarray(every[i], np.float64) for i in symbolic]
    found = [np.asarray(v, np.float64) for v in keras.tree.flatten(graph(samples, training=False))]
    if [e.shape for e in expected] != [f.shape for f in found]:
        return False
    scale = max(max((np.abs(e).max() for e in expected if e.size), default=0.0), 1e-12)
    return all(np.abs(e - f).max() <= INLINE_TOLERANCE * scale for e, f in zip(expected, found) if e.size)
