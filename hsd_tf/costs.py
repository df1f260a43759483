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
        if layer.kind == "depthwise":
            weights = layer.kernel * fan_out
        elif layer.kind == "grouped":
            weights = layer.kernel * fan_in * fan_out // layer.multiplier
        elif layer.kind == "separable":
            weights = layer.kernel * fan_in * layer.multiplier + fan_in * layer.multiplier * fan_out
        else:
            weights = layer.kernel * fan_in * fan_out
        if layer.name not in counted:
            params += weights
            counted.add(layer.name)
        macs += weights * layer.positions
        layers.append({"name": layer.name, "output_size": list(layer.output_size) + [fan_out], "filters": fan_out,
                       "params": weights, "macs": weights * layer.positions})
    return {"params": params, "macs": macs, "layers": layers}


class MacModel:
    """The MACs of a traced model as a function of its masks, in TensorFlow, for MAC budgets.

    Every conv and dense call costs b x (input channels kept) x (output channels
    kept) + l_in x (inputs kept) + l_out x (outputs kept) MACs, with b, l_in and
    l_out from its kind (as `count` counts them), and a count of kept channels
    is a dot product with the flat mask vector (`graph.flat_masks`). So
    `macs(masks)` equals `count(model_trace, masks)["macs"]` for any 0/1 masks.

    Args:
        model_trace: `graph.trace(model)`.
    """

    def __init__(self, model_trace: graph.Trace):
        offsets = np.cumsum([1] + model_trace.group_widths)
        size = int(offsets[-1])
        layers = model_trace.weighted
        self.inputs = np.zeros((len(layers), size))
        self.outputs = np.zeros((len(layers), size))
        self.bilinear, self.linear_in, self.linear_out = (np.zeros(len(layers)) for _ in range(3))
        for i, layer in enumerate(layers):
            for row, channels in ((self.inputs[i], layer.inputs), (self.outputs[i], layer.outputs)):
                for channel in channels:
                    row[0 if channel is None else offsets[channel[0]] + channel[1]] += 1
            cost = layer.kernel * layer.positions
            if layer.kind == "depthwise":
                self.linear_out[i] = cost
            elif layer.kind == "separable":
                self.linear_in[i] = cost * layer.multiplier
                self.bilinear[i] = layer.multiplier * layer.positions
            elif layer.kind == "grouped":
                self.bilinear[i] = cost / layer.multiplier
            else:
                self.bilinear[i] = cost
        self.dense = float(self.macs(graph.flat_masks([np.ones(w) for w in model_trace.group_widths])))

    def macs(self, flat: tf.Tensor) -> tf.Tensor:
        """MACs per image (float64) of the model with the flat mask vector `flat` (`graph.flat_masks`)."""
        flat = tf.cast(flat, tf.float64)
        kept_in = tf.linalg.matvec(tf.constant(self.inputs), flat)
        kept_out = tf.linalg.matvec(tf.constant(self.outputs), flat)
        return tf.reduce_sum(self.bilinear * kept_in * kept_out + self.linear_in * kept_in
                             + self.linear_out * kept_out)


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
