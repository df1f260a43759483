"""Physical slimming: any traced model, or a view of a trained cascade, as a smaller plain Keras model.

The slim model has the same layers, in the same graph, with only the kept
channels: every layer is rebuilt from its config with its width edited
(`filters`, `units`, a grouped conv's `groups`, an SE `Reshape`'s
`target_shape`), and its weights are the source's sliced on the output
channels it keeps *and* on the input channels that reach it. Nested models
are inlined. Normalization and other per-channel layers keep the weights of
their kept channels.

Because every mask point zeroes a masked channel before any layer mixes
channels (`hsd_tf.graph`), the slim model computes what the masked model
computes.
"""

import os
import tempfile
from typing import Callable, Mapping, Optional, Sequence

import keras
import numpy as np

from hsd_tf import flatten, graph
from hsd_tf.cascade import Cascade
from hsd_tf.checkpoints import TrainingError


def slim_view(cascade: Cascade, index: int, frozen=None, name=None, inference: bool = False) -> keras.Model:
    """Builds the slim dense model of a cascade's view `index`.

    Args:
        cascade: A trained `hsd_tf.cascade.Cascade`.
        index: 0 for the student, i for TA i.
        frozen: Use the frozen masks; defaults to the cascade's phase choice.
        name: Model name (default: the view's name).
        inference: Leave out the augmentation layers: the model to deploy.

    Returns:
        A plain functional `keras.Model` from images to logits, with no masks,
        scores or teacher: the view's own stems, normalizations and head, and
        the shared layers, with the view's pruned channels removed.
    """
    kept = {g: m > 0 for g, m in zip(cascade.trace.group_names, cascade.hard_masks(index, frozen))}
    return slim_model(cascade.trace, kept, cascade.layer_for(index), name or cascade.view_names[index], inference)


# Largest |slim - masked| allowed, relative to the largest masked logit: float32 rounding is far below it
# (1.4e-6 on thirteen Keras applications models), a channel cut wrongly far above it.
SLIM_TOLERANCE = 1e-3


class SlimmingError(TrainingError):
    """A slim model that does not compute what its masked view computed: nothing is exported."""


def masked_outputs(cascade: Cascade, index: int, inputs):
    """View `index`'s logits (one tensor, or one per output), computed with its frozen masks in inference mode, in
    float32.

    The reference a slim model must reproduce. A view trained in 16 bits is run
    over a float32 copy of its layers, every channel kept, with the masks
    multiplied in, so that rounding does not pass for a difference.
    """
    if keras.backend.standardize_dtype(cascade.compute_dtype) == "float32":
        return cascade.view_forward(index, inputs, training=False, frozen=True)[0]
    dense = graph.layers_by_name(slim_model(cascade.trace, {}, cascade.layer_for(index)))
    outputs, _ = graph.run(cascade.trace, keras.tree.flatten(inputs), lambda layer: dense[layer.name],
                           cascade.hard_masks(index, frozen=True), training=False)
    return outputs[0] if len(outputs) == 1 else outputs


def check_slim(slim: keras.Model, reference, inputs) -> float:
    """Checks on a batch that a slim model computes what it was built from.

    Args:
        slim: The slim model.
        reference: The outputs it must give on `inputs` (`masked_outputs`, or the dense model's own): a tensor, or
            one per output.
        inputs: A batch: one array, or one per model input.

    Returns:
        The largest |slim - reference| of an output relative to that output's largest |reference|, over the outputs.

    Raises:
        SlimmingError: Above `SLIM_TOLERANCE`.
    """
    expected = [np.asarray(r, np.float64) for r in keras.tree.flatten(reference)]
    found = [np.asarray(f, np.float64) for f in keras.tree.flatten(slim(graph.model_inputs(inputs), training=False))]
    difference = max(float(np.abs(f - e).max() / max(np.abs(e).max(), 1e-12)) for f, e in zip(found, expected))
    if not difference <= SLIM_TOLERANCE:
        raise SlimmingError(
            f"the slim {slim.name} does not compute what its masked view computed (largest difference "
            f"{difference:.3g} of the largest output, allowed {SLIM_TOLERANCE:g})")
    return difference


def rehearse(model_trace: graph.Trace, seed: int = 0, original: Optional[keras.Model] = None) -> float:
    """Slims the model to random masks and checks the result against the masked model, before any training.

    A run would otherwise find a model it cannot slim, or cannot slim exactly,
    only after all of its training. Every group keeps a random half of its
    channels (at least one), so that uneven counts and every kind of slicing are
    exercised; the masked reference is the traced model's own program. With
    `original`, the slim model is also saved as `.keras` and loaded back: a
    student must be savable whenever the model it is pruned from is.

    Returns:
        The largest |slim - masked| relative to the largest masked output.

    Raises:
        SlimmingError: The slim model cannot be built or run, computes something else, or cannot be saved as
            `.keras` (and loaded) when `original` can.
    """
    rng = np.random.RandomState(seed)
    kept = _random_kept(model_trace, rng)
    inputs = graph.sample_inputs(model_trace, 2, rng)
    try:
        slim = slim_model(model_trace, kept, name="rehearsal")
        masks = [kept[group.name].astype("float32") for group in model_trace.groups]
        reference = graph.run(model_trace, inputs, group_masks=masks, training=False)[0]
        difference = check_slim(slim, reference, inputs)
    except SlimmingError:
        raise
    except Exception as error:  # pylint: disable=broad-except  (one line before training, not a crash after it)
        raise SlimmingError(f"the slim model cannot be built or run ({flatten.one_line(error)})") from None
    if original is not None:
        why = keras_round_trip(slim)
        if why and not keras_round_trip(original):
            raise SlimmingError(f"the slim model cannot be saved as .keras and loaded back ({why}), though the model "
                                "itself can")
    return difference


def rehearsal_model(model_trace: graph.Trace, seed: int = 0) -> keras.Model:
    """The model slimmed to the random masks `rehearse` uses, without its augmentation layers: a student to try
    the export formats on before training."""
    return slim_model(model_trace, _random_kept(model_trace, np.random.RandomState(seed)), name="rehearsal",
                      inference=True)


def _random_kept(model_trace: graph.Trace, rng) -> dict:
    """A random half of every group's channels, at least one each."""
    kept = {}
    for group in model_trace.groups:
        kept[group.name] = rng.rand(group.width) < 0.5
        kept[group.name][rng.randint(group.width)] = True
    return kept


def keras_round_trip(model: keras.Model) -> Optional[str]:
    """Why `model` cannot be saved as `.keras` and loaded back, in one line; None when it can (a model Keras loads
    only with `safe_mode=False`, holding a Lambda, counts as loaded: that is Keras' choice, not a defect)."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.keras")
        try:
            model.save(path)
            keras.saving.load_model(path)
        except Exception as error:  # pylint: disable=broad-except  (whatever Keras raises, reported in one line)
            text = " ".join(str(error).split())
            if "safe_mode" in text:
                return None
            cause = text.rsplit("Exception encountered: ", 1)  # Keras' loader ends with the error it met
            return (f"loading it: {cause[1]}" if len(cause) == 2 else text)[:300]
    return None


def l1_pruned(dense: keras.Model, prune_ratio: Optional[float] = None, name: str = "l1_pruned",
              max_layer_prune_ratio: float = 1.0, min_layer_filters: int = 1, unpruned_layers=(),
              macs_fraction: Optional[float] = None, round_to: int = 1):
    """A dense model pruned by filter L1 norm (Li et al.) and physically slimmed.

    The ranking is the one that initialises a cascade's scores (global top-k
    of layer-normalised L1 norms, within the same per-layer floor), so the
    result is a cascade's student before any training.

    Args:
        dense: The trained dense model.
        prune_ratio: Fraction of prunable filters removed.
        name: Model name.
        macs_fraction: Instead of prune_ratio: the MAC budget, a fraction of the dense model's MACs.
        round_to: Every group keeps a multiple of this many channels.
        max_layer_prune_ratio: Largest fraction of one layer that may go.
        min_layer_filters: Fewest filters a layer keeps.
        unpruned_layers: Layers whose channels stay whole.

    Returns:
        (slim model, its `Cascade.view_costs` row: filters kept, params, MACs, ...).
    """
    cascade = Cascade(dense, None if prune_ratio is None else [prune_ratio],
                      macs_fractions=None if macs_fraction is None else [macs_fraction],
                      max_layer_prune_ratio=max_layer_prune_ratio, min_layer_filters=min_layer_filters,
                      unpruned_layers=unpruned_layers, round_to=round_to)
    cascade.initialize_from(dense)
    return slim_view(cascade, 0, frozen=False, name=name), cascade.view_costs(frozen=False)[0]


def slim_model(model_trace: graph.Trace, kept: Mapping[str, Sequence[bool]], source_for: Optional[Callable] = None,
               name: str = "slim", inference: bool = False) -> keras.Model:
    """Builds the model of `model_trace` with only the kept channels of each group.

    Args:
        model_trace: `graph.trace(model)`.
        kept: Group name -> one bool per channel (groups not named keep all).
        source_for: Maps each layer of the traced model to the layer whose
            weights the slim layer takes (a cascade view's own BatchNorm, the
            shared kernels); default: itself.
        name: The model's name.
        inference: Leave out the augmentation layers (`graph.identity_at_inference`): a model to deploy.

    Returns:
        A float32 functional `keras.Model` with the same inputs and outputs.
    """
    keep = [np.asarray(kept[g.name], bool) if g.name in kept else np.ones(g.width, bool)
            for g in model_trace.groups]

    def indices(placements):
        return np.array([i for i, c in enumerate(placements) if c is None or keep[c[0]][c[1]]], np.int64)

    first = model_trace.first_steps()
    slim_layers, slices = {}, {}
    for layer_name, step in first.items():
        if isinstance(step.operation, keras.layers.Layer):
            slices[layer_name] = (indices(step.channels_in), indices(step.channels_out))
            slim_layers[layer_name] = _slim_layer(step.operation, len(slices[layer_name][1]),
                                                  len(slices[layer_name][0]), inference)
    inputs = [keras.Input(shape, dtype=dtype, name=name)
              for shape, dtype, name in zip(model_trace.input_shapes, model_trace.input_dtypes, model_trace.input_names)]
    readers = {}
    for step in model_trace.steps:
        for key in step.inputs:
            readers.setdefault(key, []).append(step.operation)
    outputs, _ = graph.run(model_trace, inputs, layer_for=lambda op: slim_layers[op.name],
                           op_for=lambda step: _edge_padding(step, readers) or _slim_op(step, keep))
    model = keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs if len(outputs) > 1 else outputs[0],
                        name=name)
    for layer_name, layer in slim_layers.items():
        source = first[layer_name].operation
        weights = (source_for(source) if source_for else source).get_weights()
        if weights and layer.weights:
            in_kept, out_kept = slices[layer_name]
            flatten.set_weights(layer, _sliced(source, weights, in_kept, out_kept, len(first[layer_name].channels_in)))
    return model


def with_final_activations(model: keras.Model, activations: Sequence[Optional[str]], keys: Sequence[str] = (),
                           structure: str = "single") -> keras.Model:
    """`model` (logits out) ending as the user's model ended: the final softmax or sigmoid of each output put back
    (`architectures.without_final_activations` took them off), its outputs named as the user's and, for a model of
    dict outputs, a dict; unchanged when there is nothing to put back or rename."""
    outputs = keras.tree.flatten(model.outputs)
    if not any(activations) and structure != "dict":
        return model
    ends = []
    for i, (output, activation) in enumerate(zip(outputs, activations)):
        name = keys[i] if i < len(keys) else None
        ends.append(keras.layers.Activation(activation, name=f"{name or model.name}_{activation}")(output)
                    if activation else output)
    result = dict(zip(keys, ends)) if structure == "dict" else ends if len(ends) > 1 else ends[0]
    return keras.Model(model.inputs if len(model.inputs) > 1 else model.inputs[0], result, name=model.name)


def _edge_padding(step: graph.Step, readers) -> Optional[Callable]:
    """A pad with -inf that only valid max pools with kernels larger than the pad read (keras_hub's ResNetV2 stem),
    as edge replication: every window then holds the edge value the padding stood next to, so each max is the same,
    and the file quantizes (-inf made LiteRT abort on the int8 file: the pad's scale became 1e36). Else None."""
    op = step.operation
    if (type(op).__name__ != "Pad" or getattr(op, "mode", "constant") != "constant"
            or not np.all(np.isneginf(graph.pad_value(step.node)))):
        return None
    rank = len(step.node.input_tensors[0].shape)
    widths = graph.pad_widths(op, rank)
    pools = readers.get(step.outputs[0], [])
    if not pools or any(widths[0]) or any(widths[-1]) or not all(
            isinstance(p, (keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D))
            and p.padding == "valid" and p.data_format == "channels_last"
            and all(max(w) < k for w, k in zip(widths[1:-1], p.pool_size)) for p in pools):
        return None
    if max(max(w) for w in widths) <= 1:  # one row or column: the mirror that includes the edge copies it
        return lambda x, **_: keras.ops.pad(x, widths, mode="symmetric")

    def edge(x, **_):
        for axis, (before, after) in enumerate(widths):
            if before or after:
                first, last = keras.ops.take(x, [0], axis=axis), keras.ops.take(x, [x.shape[axis] - 1], axis=axis)
                x = keras.ops.concatenate([first] * before + [x] + [last] * after, axis=axis)
        return x

    return edge


def _slim_op(step: graph.Step, keep):
    """A keras op of the slim model: the op itself, or one whose channel count is the slim model's.

    A split of the channel axis splits at the kept counts of each part
    (`ops.split(x, 2)` would cut a slim tensor in the wrong place); a reshape
    that names the channel count names the kept one.
    """
    op = step.operation
    rank = len(step.node.input_tensors[0].shape)
    if type(op).__name__ == "Reshape" and op.newshape[-1] not in (-1, None):
        kept_out = sum(1 for c in step.channels_out if c is None or keep[c[0]][c[1]])
        shape = tuple(op.newshape[:-1]) + (kept_out,)
        return lambda x: keras.ops.reshape(x, shape)
    if type(op).__name__ != "Split" or op.axis % rank != rank - 1:
        return op
    sizes = [int(t.shape[-1]) for t in step.node.outputs]
    kept = [sum(1 for c in step.channels_in[a:b] if c is None or keep[c[0]][c[1]])
            for a, b in zip(np.cumsum([0] + sizes[:-1]), np.cumsum(sizes))]
    points = np.cumsum(kept)[:-1].tolist()
    return lambda x: keras.ops.split(x, points, axis=op.axis)


def _slim_layer(layer, out_channels: int, in_channels: int, inference: bool) -> keras.layers.Layer:
    """A new float32 layer like `layer`, narrowed to the given channel counts (a Lambda, always unpruned: itself;
    with `inference`, an Identity for an augmentation layer)."""
    if isinstance(layer, keras.layers.Lambda):
        return layer
    if inference and graph.identity_at_inference(layer):
        return keras.layers.Identity(name=layer.name)
    if not layer.weights and not _one_group_per_channel(layer) and not isinstance(layer, keras.layers.Reshape):
        try:
            return flatten.rebuilt(layer, dtype="float32")
        except Exception:  # pylint: disable=broad-except  (a weightless layer Keras cannot rebuild: used as it is)
            return layer
    changes = {"dtype": "float32"}
    if _one_group_per_channel(layer):
        changes["groups"] = in_channels
    if isinstance(layer, graph.CONVS):
        changes["filters"] = out_channels
    elif isinstance(layer, keras.layers.Dense):
        changes["units"] = out_channels
    elif isinstance(layer, keras.layers.Reshape):
        changes["target_shape"] = tuple(layer.get_config()["target_shape"][:-1]) + (out_channels,)
    return flatten.rebuilt(layer, **changes)


def _sliced(layer, weights, in_kept, out_kept, in_width: int) -> list:
    """`layer`'s weights restricted to the kept input and output channels."""
    if _one_group_per_channel(layer):
        return [w[..., out_kept] for w in weights]  # one group per input channel: depthwise
    if isinstance(layer, graph.PLAIN_CONVS) and layer.groups != 1:
        return weights  # any other grouped conv is unpruned: its channels are all kept
    if isinstance(layer, graph.SEPARABLE_CONVS):
        depthwise, pointwise = weights[:2]
        multiplier = depthwise.shape[-1]
        rows = (in_kept[:, None] * multiplier + np.arange(multiplier)).ravel()
        return [depthwise[..., in_kept, :], pointwise[..., rows, :][..., out_kept]] + [b[out_kept] for b in weights[2:]]
    if isinstance(layer, graph.DEPTHWISE_CONVS):
        return [weights[0][..., in_kept, :]] + [b[out_kept] for b in weights[1:]]
    if isinstance(layer, graph.TRANSPOSED_CONVS):
        return [weights[0][..., out_kept, :][..., in_kept]] + [b[out_kept] for b in weights[1:]]
    if isinstance(layer, graph.CONVS + (keras.layers.Dense,)):
        return [weights[0][..., in_kept, :][..., out_kept]] + [b[out_kept] for b in weights[1:]]
    # Per-channel layers (normalization, PReLU, layer scales): the weights along the channel axis.
    return [w[..., in_kept] if w.ndim and w.shape[-1] == in_width else w for w in weights]


def _one_group_per_channel(layer) -> bool:
    """A grouped conv with one input channel per group: a depthwise conv (ConvNeXt's)."""
    return isinstance(layer, graph.PLAIN_CONVS) and layer.groups != 1 and layer.kernel.shape[-2] == 1
