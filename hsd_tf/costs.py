"""Parameter and MAC counts as the paper counts them, for any traced model.

Only conv and dense weights count: no biases, no BatchNormalization, no adds
or pools. MACs are multiply-accumulates (the paper's tables call them FLOPs).
Removing a channel removes it from its producers' outputs and from the
inputs of every layer that reads it.
"""

from typing import Mapping, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from hsd_tf import graph


def profile(model: keras.Model, unpruned_layers: Sequence[str] = ()) -> dict:
    """`count` of a model's every conv and dense layer, dense.

    Args:
        model: A functional or Sequential Keras model.
        unpruned_layers: Layers the tracer is to take as they are (`graph.trace`).

    Returns:
        `{"params": N, "macs": N, "layers": [...]}` (see `count`).
    """
    return count(graph.trace(model, unpruned_layers))


def count(model_trace: graph.Trace, kept: Optional[Mapping[str, Sequence[bool]]] = None) -> dict:
    """Params and MACs of the traced model, or of it with only the `kept` channels of each group.

    As the paper counts them: conv and dense kernels only (no biases, no
    normalization, no adds or pools), a removed channel removed from its
    producers' outputs and from the inputs of every layer reading it, MACs per
    image. A layer called twice has its params counted once and its MACs twice.
    A layer kept whole that the tracer does not follow (an unpruned composite,
    attention) counts every kernel inside it and the MACs of its TensorFlow
    graph, so the dense count is the sum of the model's kernel sizes.

    Args:
        model_trace: `graph.trace(model)`.
        kept: Group name -> one bool per channel; groups not named keep everything.

    Returns:
        `{"params": N, "macs": N, "layers": [{"name", "output_size", "filters",
        "params", "macs"}, ...]}`, one layer entry per call, `output_size` as
        [spatial dims..., channels].
    """
    keep = [list(kept[g.name]) if kept and g.name in kept else [True] * g.width for g in model_trace.groups]

    def count(channels):
        return sum(1 for c in channels if c is None or keep[c[0]][c[1]])

    params, macs, counted, layers = 0, 0, set(), []
    for layer in model_trace.weighted:
        fan_in, fan_out = count(layer.inputs), count(layer.outputs)
        bilinear, linear_in, linear_out = _weight_terms(layer)
        weights = int(round(bilinear * fan_in * fan_out + linear_in * fan_in + linear_out * fan_out))
        weights += layer.fixed_params
        layer_macs = layer.fixed_macs if layer.kind == "opaque" else weights * layer.positions
        if layer.name not in counted:
            params += weights
            counted.add(layer.name)
        macs += layer_macs
        layers.append({"name": layer.name, "output_size": list(layer.output_size) + [fan_out], "filters": fan_out,
                       "params": weights, "macs": layer_macs})
    return {"params": params, "macs": macs, "layers": layers}


def _weight_terms(layer: graph.WeightedLayer):
    """(b, l_in, l_out): the call's kernel holds b x in x out + l_in x in + l_out x out weights
    for `in` input and `out` output channels kept."""
    if layer.kind == "depthwise":
        return 0, 0, layer.kernel
    if layer.kind == "separable":  # a depthwise kernel per input channel and multiplier, then a pointwise one
        return layer.multiplier, layer.kernel * layer.multiplier, 0
    if layer.kind == "grouped":
        return layer.kernel / layer.multiplier, 0, 0
    if layer.kind == "opaque":  # fixed_params and fixed_macs: nothing depends on the masks
        return 0, 0, 0
    return layer.kernel, 0, 0


class MacModel:
    """The MACs of a traced model as a function of its masks, in TensorFlow, for MAC budgets.

    Every conv and dense call costs positions x (b x in x out + l_in x in +
    l_out x out) MACs (`_weight_terms`, as `count` counts them), a layer kept
    whole its fixed MACs, and a count of
    kept channels is a dot product with the flat mask vector
    (`graph.flat_masks`). So `macs(masks)` equals `count(model_trace,
    masks)["macs"]` for any 0/1 masks.

    Args:
        model_trace: `graph.trace(model)`.
    """

    def __init__(self, model_trace: graph.Trace):
        widths = model_trace.group_widths
        layers = model_trace.weighted
        size = 1 + sum(widths)
        self.inputs = np.zeros((len(layers), size))
        self.outputs = np.zeros((len(layers), size))
        terms = np.zeros((len(layers), 3))
        for i, layer in enumerate(layers):
            np.add.at(self.inputs[i], graph.flat_indices(layer.inputs, widths), 1)
            np.add.at(self.outputs[i], graph.flat_indices(layer.outputs, widths), 1)
            terms[i] = np.multiply(_weight_terms(layer), layer.positions)
        self.bilinear, self.linear_in, self.linear_out = terms.T
        self.fixed = float(sum(layer.fixed_macs for layer in layers))
        self.widths = widths
        self.dense = float(self.macs([np.ones(w) for w in widths]))

    def macs(self, group_masks) -> tf.Tensor:
        """MACs per image (float64) of the model keeping the channels of `group_masks` (one 0/1 vector per group)."""
        flat = tf.cast(graph.flat_masks(group_masks), tf.float64)
        kept_in = tf.linalg.matvec(tf.constant(self.inputs), flat)
        kept_out = tf.linalg.matvec(tf.constant(self.outputs), flat)
        return tf.reduce_sum(self.bilinear * kept_in * kept_out + self.linear_in * kept_in
                             + self.linear_out * kept_out) + self.fixed

    def added_macs(self, group_masks) -> tf.Tensor:
        """Per channel (every group's channels in order, float64): the MACs keeping it would add to the model
        of `group_masks`; exact for a channel not kept (its filter, and the next layers' inputs it feeds)."""
        flat = tf.cast(graph.flat_masks(group_masks), tf.float64)
        kept_in = tf.linalg.matvec(tf.constant(self.inputs), flat)
        kept_out = tf.linalg.matvec(tf.constant(self.outputs), flat)
        added = (tf.linalg.matvec(tf.constant(self.inputs.T), self.bilinear * kept_out + self.linear_in)
                 + tf.linalg.matvec(tf.constant(self.outputs.T), self.bilinear * kept_in + self.linear_out)
                 + tf.linalg.matvec(tf.constant((self.inputs * self.outputs).T), self.bilinear))
        return added[1:]

    def channel_costs(self) -> list:
        """Per group, the MACs each of its channels costs in the dense model: what removing it alone saves
        (its own filter and the next layers' inputs it feeds), one float64 vector per group."""
        kept_in, kept_out = self.inputs.sum(axis=1), self.outputs.sum(axis=1)
        per_flat = self.inputs.T @ (self.bilinear * kept_out + self.linear_in) + self.outputs.T @ (
            self.bilinear * kept_in + self.linear_out)
        return np.split(per_flat[1:], np.cumsum(self.widths)[:-1])

    def keeping(self, counts) -> float:
        """MACs when each group keeps `counts[g]` of its channels (a group's channels all cost alike)."""
        return float(self.macs([np.arange(w) < c for w, c in zip(self.widths, counts)]))


def format_count(value: int) -> str:
    """1234567 -> "1.23M"."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(value)


def format_table(report: dict) -> str:
    """Renders a `profile` report as a fixed-width per-layer table with totals."""
    header = f"{'layer':<22} {'output size':>16} {'filters':>8} {'params':>12} {'MACs':>14}"
    lines = [header, "-" * len(header)]
    for layer in report["layers"]:
        size = "x".join(str(d) for d in layer["output_size"])
        lines.append(
            f"{layer['name']:<22} {size:>16} {layer['filters']:>8} {layer['params']:>12,} {layer['macs']:>14,}"
        )
    lines.append("-" * len(header))
    lines.append(
        f"{'total':<22} {'':>16} {'':>8} {report['params']:>12,} {report['macs']:>14,}"
    )
    lines.append(f"params {format_count(report['params'])}, MACs {format_count(report['macs'])}")
    return "\n".join(lines)
