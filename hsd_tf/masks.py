"""Binary filter masks from importance scores, with a straight-through gradient.

A view with keep ratio r keeps the top round(r x total) prunable filters,
ranked globally across all mask groups by raw score (larger = keep). Every
group first keeps its own best `floor` channels (`layer_floors`): at least
one, because a layer with no filters is not a network, and by default more,
because a layer left with one or two filters is a bottleneck that the rest of
the network cannot recover from (docs/mask_stability.md measures it). A group
shared by m convs (a ResNet stage's outputs) counts m filters per channel; its channels are taken whole, in score
order, while they fit the budget, so the kept count is exact whenever the
budget is not blocked by a multi-member channel at the boundary.

The mask multiplies the BatchNorm output. Its gradient passes straight through
to the scores (d mask / d score = 1), so the score gradient of filter n is
sum over batch and positions of dL/dY_n * Yhat_n: a first-order Taylor estimate
of the loss change when the filter is switched on or off.
"""

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf


def keep_budget(keep_ratio: float, filter_counts: Sequence[int], group_sizes: Sequence[int]) -> int:
    """round(keep_ratio x total filters), total counting each member conv."""
    total = sum(size * count for size, count in zip(group_sizes, filter_counts))
    return int(round(keep_ratio * total))


def layer_floors(group_widths: Sequence[int], max_layer_prune_ratio: float = 1.0,
                 min_layer_filters: int = 1) -> List[int]:
    """Channels each group keeps whatever the scores say.

    Like Torch-Pruning's `max_pruning_ratio`, no group loses more than
    `max_layer_prune_ratio` of its channels; and none keeps fewer than
    `min_layer_filters` (nor more than it has).

    Args:
        group_widths: Channels per mask group.
        max_layer_prune_ratio: Largest fraction of one group that may go, in (0, 1].
        min_layer_filters: Fewest channels any group keeps, at least 1.

    Returns:
        One floor per group.
    """
    return [min(width, max(1, min_layer_filters, math.ceil((1.0 - max_layer_prune_ratio) * width - 1e-9)))
            for width in group_widths]


def topk_masks(scores: Sequence[tf.Tensor], filter_counts: Sequence[int], keep_ratio: float,
               floors: Optional[Sequence[int]] = None) -> List[tf.Tensor]:
    """Global top-k binary masks, one per group.

    Args:
        scores: One float vector per mask group.
        filter_counts: Convs per group (how many filters one channel stands for).
        keep_ratio: Fraction of all prunable filters to keep, in (0, 1].
        floors: Channels each group keeps first, its best by score
            (`layer_floors`); default 1.

    Returns:
        One float32 0/1 vector per group, no gradient.

    Raises:
        ValueError: The floors alone exceed the budget.
    """
    sizes = [int(s.shape[0]) for s in scores]
    if keep_ratio >= 1.0:
        return [tf.ones([n], tf.float32) for n in sizes]
    floors = list(floors) if floors is not None else [1] * len(sizes)
    check_floors(keep_ratio, filter_counts, sizes, floors)
    flat = tf.concat([tf.cast(s, tf.float32) for s in scores], axis=0)
    weight = tf.constant(np.repeat(np.asarray(filter_counts, np.float32), sizes))
    forced = tf.concat([_top_channels(tf.cast(s, tf.float32), k, n) for s, k, n in zip(scores, floors, sizes)], axis=0)
    budget = keep_budget(keep_ratio, filter_counts, sizes) - tf.reduce_sum(forced * weight)
    candidates = tf.where(forced > 0, -np.inf, flat)
    order = tf.argsort(candidates, direction="DESCENDING", stable=True)
    free_weight = tf.gather(weight * (1.0 - forced), order)
    kept_sorted = tf.logical_and(tf.cumsum(free_weight) <= budget, free_weight > 0)
    kept = tf.gather(kept_sorted, tf.math.invert_permutation(order))
    mask = tf.maximum(forced, tf.cast(kept, tf.float32))
    return tf.split(tf.stop_gradient(mask), sizes)


def per_mac(scores: Sequence[tf.Tensor], channel_costs: Sequence[np.ndarray]) -> List[tf.Tensor]:
    """Scores weighed against the MACs each channel costs (`costs.MacModel.channel_costs`), for ranking.

    A positive score is divided by its channel's cost relative to the mean
    channel cost, a negative one multiplied by it, so a dearer channel always
    ranks lower: under a MAC budget a cheap channel of some use can be kept in
    place of a dear one of a little more. The paper ranks raw scores
    (`--saliency=score`); this is `--saliency=per_mac`.
    """
    mean = float(np.mean(np.concatenate([np.asarray(c, np.float64) for c in channel_costs])))
    ranked = []
    for score, cost in zip(scores, channel_costs):
        relative = tf.constant(np.maximum(np.asarray(cost, np.float64) / mean, 1e-12), score.dtype)
        ranked.append(tf.where(score >= 0, score / relative, score * relative))
    return ranked


# Rounds of `budget_masks` that fill the budget past a channel that does not fit (for the masks that freeze).
FILL_ROUNDS = 2


def budget_masks(scores: Sequence[tf.Tensor], floors: Sequence[int], mac_model, budget: float,
                 fill_rounds: int = 0) -> List[tf.Tensor]:
    """Masks keeping filters in score order while the slim model's MACs stay within a budget.

    Every group first keeps its `floors` best channels; the other channels are
    then taken in descending score order, the longest such prefix whose MACs
    (counting the removed inputs of the next layers) stay within `budget`. A
    prefix stops at the first channel that does not fit, and one channel of a
    wide early layer can cost a tenth of a small budget (VGG16's first block at
    a tenth of its MACs: a student 12% under budget). So `fill_rounds` times,
    the channels that would still fit alone (`MacModel.added_macs`) are taken
    the same way, in score order (`FILL_ROUNDS` for the masks that freeze). The
    result is greedy in score order: a dropped channel outranks a kept one only
    where it did not fit. MACs grow with every channel kept, so each prefix is
    found by bisection: about log2(channels) evaluations, all in TensorFlow.

    Args:
        scores: One float vector per mask group.
        floors: Channels each group keeps first, its best by score.
        mac_model: `costs.MacModel` of the traced model.
        budget: The most MACs the kept channels may cost.
        fill_rounds: Rounds taking channels that still fit after the first prefix.

    Returns:
        One float32 0/1 vector per group, no gradient.
    """
    sizes = [int(s.shape[0]) for s in scores]
    flat = tf.concat([tf.cast(s, tf.float32) for s in scores], axis=0)
    forced = tf.concat([_top_channels(tf.cast(s, tf.float32), k, n) for s, k, n in zip(scores, floors, sizes)], 0)
    order = tf.argsort(tf.where(forced > 0, -np.inf, flat), direction="DESCENDING", stable=True)
    position = tf.math.invert_permutation(order)  # each channel's place in the score order
    steps = max(1, math.ceil(math.log2(sum(sizes) - sum(floors) + 1)))

    def fits(kept):
        return mac_model.macs(tf.split(kept, sizes)) <= budget

    def longest_prefix(kept, candidates):
        """`kept` and the longest run of `candidates`, in score order, that fits."""
        in_order = tf.cast(tf.gather(candidates, order), tf.int32)
        rank = tf.gather(tf.cumsum(in_order, exclusive=True), position)  # place among the candidates

        def mask_of(prefix):
            return tf.maximum(kept, tf.cast(tf.logical_and(candidates, rank < prefix), tf.float32))

        low, high = tf.constant(0, tf.int32), tf.reduce_sum(in_order)
        for _ in range(steps):  # low always fits; high + 1 never does
            middle = (low + high + 1) // 2
            fit = fits(mask_of(middle))
            low, high = tf.where(fit, middle, low), tf.where(fit, high, middle - 1)
        return mask_of(low)

    kept = longest_prefix(forced, forced == 0)
    for _ in range(fill_rounds):
        slack = budget - mac_model.macs(tf.split(kept, sizes))
        still_fit = tf.logical_and(kept == 0, mac_model.added_macs(tf.split(kept, sizes)) <= slack)
        kept = longest_prefix(kept, still_fit)
    return tf.split(tf.stop_gradient(kept), sizes)


def rounded_masks(group_masks: Sequence[tf.Tensor], scores: Sequence[tf.Tensor], multiple: int
                  ) -> List[tf.Tensor]:
    """Each group keeps its best round-down-to-`multiple` channels of those its mask keeps.

    Hardware kernels often run channel counts that are multiples of 4, 8 or
    16 faster. A group keeping k channels keeps its best multiple x floor(k /
    multiple) instead; fewer channels never break a budget. The floors
    (`rounded_floors`) keep at least one multiple, or the whole group when it is smaller.

    Args:
        group_masks: 0/1 masks, one per group, keeping each group's best channels.
        scores: The scores the masks were chosen by.
        multiple: The channel multiple, at least 1.

    Returns:
        One float32 0/1 vector per group, no gradient.
    """
    rounded = []
    for mask, score in zip(group_masks, scores):
        size = int(mask.shape[0])
        kept = tf.cast(tf.reduce_sum(mask), tf.int32)
        keep = tf.where(kept >= size, size, kept // multiple * multiple)
        rounded.append(tf.stop_gradient(_top_channels(tf.cast(score, tf.float32), keep, size)))
    return rounded


def rounded_floors(floors: Sequence[int], group_widths: Sequence[int], multiple: int) -> List[int]:
    """Floors raised to a multiple of `multiple` (or the whole group when it is smaller)."""
    return [min(width, -(-floor // multiple) * multiple) for floor, width in zip(floors, group_widths)]


def floors_overflow(keep_ratio: float, filter_counts: Sequence[int], group_widths: Sequence[int],
                    floors: Sequence[int]) -> Optional[Tuple[int, int]]:
    """(filters the floors keep, the budget) when the floors alone exceed the budget, else None."""
    floor_filters = sum(f * c for f, c in zip(floors, filter_counts))
    budget = keep_budget(keep_ratio, filter_counts, group_widths)
    return (floor_filters, budget) if keep_ratio < 1.0 and floor_filters > budget else None


def check_floors(keep_ratio: float, filter_counts: Sequence[int], group_widths: Sequence[int],
                 floors: Sequence[int]) -> None:
    """Raises ValueError when the per-group floors alone need more filters than the budget."""
    overflow = floors_overflow(keep_ratio, filter_counts, group_widths, floors)
    if overflow:
        floor_filters, budget = overflow
        raise ValueError(
            f"The per-layer floors keep {floor_filters} filters, more than the {budget} that keep ratio "
            f"{keep_ratio:g} allows; lower the floor or prune less. Received: floors={list(floors)}")


def _top_channels(scores: tf.Tensor, k: int, size: int) -> tf.Tensor:
    """0/1 vector marking the k best scores of one group."""
    indices = tf.math.top_k(scores, k=k, sorted=False).indices
    return tf.reduce_sum(tf.one_hot(indices, size), axis=0)


def straight_through(mask: tf.Tensor, scores: tf.Tensor) -> tf.Tensor:
    """Equals `mask` in the forward pass; its gradient flows to `scores` unchanged."""
    scores = tf.cast(scores, mask.dtype)
    return mask + (scores - tf.stop_gradient(scores))


def l1_scores(kernel: np.ndarray) -> np.ndarray:
    """Per-layer normalised L1 norm of each output filter of a conv or dense kernel.

    Dividing by the layer mean makes layers of different fan-in comparable in
    the global ranking, so the first mask is per-layer magnitude pruning.

    Args:
        kernel: Kernel with the output filters on the last axis ((kh, kw, in, out), (in, out), ...).

    Returns:
        float32 vector of length `out` with mean 1.
    """
    norms = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)
    return (norms / max(float(norms.mean()), 1e-12)).astype(np.float32)
