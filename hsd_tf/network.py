"""Runs an architecture graph with Keras layers: the dense model and the views.

`run_graph` is the single interpreter of `Architecture` graphs. Who owns each
layer is the caller's business: the dense model creates one per node, a
cascade view borrows the shared conv kernels and uses its own stem,
BatchNorm and head layers (`hsd_tf.cascade`).
"""

from typing import Callable, Optional

import keras
import tensorflow as tf

def layer_name(node, role: str, prefix: str = "") -> str:
    """The Keras applications naming: conv1_conv -> conv1_bn, conv1_relu; x_add -> x_out."""
    base = node.name[: -len("_conv")] if node.name.endswith("_conv") else node.name
    if node.op == "add" and base.endswith("_add"):
        base = base[: -len("_add")]
    suffix = {"bn": "_bn", "pad": "_pad", "relu": "_out" if node.op == "add" else "_relu"}.get(role)
    return prefix + (base + suffix if suffix else node.name)


def make_layer(architecture, node, role: str, prefix: str = "") -> keras.layers.Layer:
    """Creates the Keras layer that plays `role` for `node`.

    Args:
        architecture: The `Architecture` the node belongs to (gives widths).
        node: The `Node`.
        role: "pad", "conv", "bn", "relu", "add", "pool", "gap", "flatten" or
            "dense".
        prefix: Prepended to the layer name (cascade views use their name).

    Returns:
        A new, unbuilt Keras layer.
    """
    name = layer_name(node, role, prefix)
    if role == "pad":
        return keras.layers.ZeroPadding2D(node.pad, name=name)
    if role == "conv":
        padding = "same" if node.pad is None else "valid"
        if node.op == "depthwise":
            return keras.layers.DepthwiseConv2D(
                node.kernel, node.strides, padding=padding, use_bias=False, name=name
            )
        return keras.layers.Conv2D(
            architecture.filters(node), node.kernel, node.strides, padding=padding,
            use_bias=False, name=name,
        )
    if role == "bn":
        # PyTorch's momentum: the paper's recipes and short runs need moving
        # statistics that follow the weights within an epoch. Synchronized
        # across replicas, so N replicas train exactly like one device on the
        # global batch; only then, as it slows a single device down 2-3x.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return keras.layers.BatchNormalization(
            momentum=0.9, epsilon=architecture.bn_epsilon, synchronized=replicas > 1, name=name
        )
    if role == "relu":
        return keras.layers.ReLU(name=name)
    if role == "add":
        return keras.layers.Add(name=name)
    if role == "pool":
        return keras.layers.MaxPooling2D(node.kernel, node.strides, name=name)
    if role == "gap":
        return keras.layers.GlobalAveragePooling2D(name=name)
    if role == "flatten":
        return keras.layers.Flatten(name=name)
    if role == "dense":
        return keras.layers.Dense(
            node.filters, activation="relu" if node.relu else None, name=name
        )
    raise ValueError(f"Unknown role {role!r}.")


def output_layer_name(node, prefix: str = "") -> str:
    """Name of the last Keras layer of a node (where its output is read)."""
    if node.op in ("conv", "depthwise", "add") and node.relu:
        return layer_name(node, "relu", prefix)
    if node.op in ("conv", "depthwise"):
        return layer_name(node, "bn", prefix)
    return prefix + node.name


def run_graph(
    architecture,
    inputs,
    layer_for: Callable,
    mask_for: Optional[Callable] = None,
    training=None,
):
    """Computes an architecture's logits and hint features.

    Args:
        architecture: The `Architecture`.
        inputs: Image batch (tensor or KerasTensor).
        layer_for: `(node, role) -> layer`.
        mask_for: `group -> mask vector or None`; applied to the BatchNorm
            output of every conv unit whose channels belong to a group.
        training: Passed to BatchNormalization.

    Returns:
        (float32 logits, [hint features in graph order]).
    """
    channel_groups = architecture.channel_groups
    values = {}
    hints = []
    for node in architecture.nodes:
        args = [values[name] for name in node.inputs]
        if node.op == "input":
            x = inputs
        elif node.op in ("conv", "depthwise"):
            x = args[0]
            if node.pad:
                x = layer_for(node, "pad")(x)
            x = layer_for(node, "conv")(x)
            x = layer_for(node, "bn")(x, training=training)
            group = channel_groups[node.name]
            mask = mask_for(group) if (mask_for is not None and group is not None) else None
            if mask is not None:
                x = x * tf.cast(mask, x.dtype)  # 16-bit activations under mixed precision
            if node.relu:
                x = layer_for(node, "relu")(x)
        elif node.op == "add":
            x = layer_for(node, "add")(args)
            if node.relu:
                x = layer_for(node, "relu")(x)
        elif node.op == "maxpool":
            x = args[0]
            if node.pad:
                x = layer_for(node, "pad")(x)
            x = layer_for(node, "pool")(x)
        else:  # gap, flatten, dense
            x = layer_for(node, "dense" if node.op == "dense" else node.op)(args[0])
        values[node.name] = x
        if node.hint:
            hints.append(x)
    logits = values[architecture.nodes[-1].name]
    if keras.backend.standardize_dtype(logits.dtype) != "float32":
        logits = keras.ops.cast(logits, "float32")  # mixed precision: softmax and losses need the range
    return logits, hints


def build_model(architecture, name: Optional[str] = None) -> keras.Model:
    """Builds the dense (unmasked) Keras functional model of an architecture.

    Layer names are the node names (see `make_layer`), so weights of the same
    family move between models by name.

    Args:
        architecture: The `Architecture`.
        name: Model name; defaults to the architecture's.

    Returns:
        A `keras.Model` from images to logits.
    """
    layers = {}

    def layer_for(node, role):
        key = (node.name, role)
        if key not in layers:
            layers[key] = make_layer(architecture, node, role)
        return layers[key]

    inputs = keras.Input(architecture.input_shape, name="images")
    logits, _ = run_graph(architecture, inputs, layer_for)
    return keras.Model(inputs, logits, name=name or architecture.name)


def feature_model(model: keras.Model, architecture) -> keras.Model:
    """Wraps a dense model to return (logits, [hint features])."""
    hints = [model.get_layer(output_layer_name(architecture.node(n))).output
             for n in architecture.hint_nodes]
    return keras.Model(model.input, [model.output, hints], name=f"{model.name}_features")
