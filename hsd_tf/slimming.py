"""Physical slimming: a view of a trained cascade as a smaller dense Keras model.

The slim model is `network.build_model(view_architecture)`: the same family
with only the kept filters. Its weights are copied from the view: its own stem
conv, BatchNorm layers and head, and the shared kernels sliced on the output
filters the view keeps *and* on the input channels the previous layer keeps.
A depthwise conv follows its input's mask. The first dense layer after a
flatten keeps the rows of the kept channels at every spatial position.

Because the mask multiplies the BatchNorm output, a masked channel is exactly
zero downstream, so the slim model computes what the masked view computes.
"""

import keras
import numpy as np

from hsd_tf import costs, network
from hsd_tf.cascade import Cascade


def slim_view(cascade, index: int, frozen=None, name=None) -> keras.Model:
    """Builds the slim dense model of view `index`.

    Args:
        cascade: A trained `hsd_tf.cascade.Cascade`.
        index: 0 for the student, i for TA i.
        frozen: Use the frozen masks; defaults to the cascade's phase choice.
        name: Model name (default: the view's name).

    Returns:
        A plain functional `keras.Model` from images to logits, with no masks,
        scores or teacher.
    """
    architecture = cascade.architecture
    view = cascade.views[index]
    keep = {g: np.flatnonzero(m > 0) for g, m in zip(architecture.group_names, cascade.hard_masks(index, frozen))}
    slim_architecture = architecture.with_widths({g: len(k) for g, k in keep.items()})
    model = network.build_model(slim_architecture, name=name or cascade.view_names[index])
    groups = architecture.channel_groups
    sizes = costs.shapes(architecture)

    def kept(group, channels):
        return keep[group] if group is not None else np.arange(channels)

    for node in architecture.nodes:
        if node.op not in ("conv", "depthwise", "dense"):
            continue
        parent = node.inputs[0]
        inputs = kept(groups[parent], sizes[parent][2])
        if node.op == "dense":
            (kernel, bias) = view.head[node.name].get_weights()
            rows = _dense_rows(architecture, parent, groups, sizes, keep)
            model.get_layer(node.name).set_weights([kernel[rows], bias])
            continue
        if node.name == architecture.stem.name:
            (kernel,) = view.stem.get_weights()
        else:
            (kernel,) = cascade.shared[f"{node.name}:conv"].get_weights()
        outputs = kept(groups[node.name], sizes[node.name][2])
        if node.op == "depthwise":
            kernel = kernel[:, :, inputs, :]
        else:
            kernel = kernel[:, :, inputs, :][..., outputs]
        model.get_layer(node.name).set_weights([kernel])
        bn = view.batch_norms[node.name].get_weights()
        model.get_layer(network.layer_name(node, "bn")).set_weights([w[outputs] for w in bn])
    return model


def l1_pruned(dense: keras.Model, architecture, prune_ratio: float, name: str = "l1_pruned",
              max_layer_prune_ratio: float = 1.0, min_layer_filters: int = 1):
    """A dense model pruned by filter L1 norm (Li et al.) and physically slimmed.

    The ranking is the one that initialises a cascade's scores (global top-k
    of layer-normalised L1 norms, within the same per-layer floor), so the
    result is a cascade's student before any training.

    Args:
        dense: Dense model of `architecture` (`network.build_model`).
        architecture: Its full-width `Architecture`.
        prune_ratio: Fraction of prunable filters removed.
        name: Model name.
        max_layer_prune_ratio: Largest fraction of one layer that may go.
        min_layer_filters: Fewest filters a layer keeps.

    Returns:
        (slim model, its `Architecture`).
    """
    cascade = Cascade(architecture, [prune_ratio], max_layer_prune_ratio=max_layer_prune_ratio,
                      min_layer_filters=min_layer_filters)
    cascade.initialize_from(dense)
    return slim_view(cascade, 0, frozen=False, name=name), cascade.view_architecture(0, frozen=False)


def _dense_rows(architecture, parent, groups, sizes, keep):
    """Kept input rows of a dense layer, in the slim model's order."""
    group = groups[parent]
    node = architecture.node(parent)
    if group is None:
        return np.arange(sizes[parent][2])
    if node.op != "flatten":
        return keep[group]
    # Flatten orders features as (row, column, channel): keep the kept
    # channels at every spatial position.
    h, w, channels = sizes[node.inputs[0]]
    channel_keep = np.zeros(channels, bool)
    channel_keep[keep[group]] = True
    return np.flatnonzero(np.tile(channel_keep, h * w))
