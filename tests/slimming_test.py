"""Slim models compute what the masked views computed, one test per topology; L1 pruning."""

import keras
import numpy as np
import pytest

from hsd_tf import architectures, costs, slimming
from hsd_tf.cascade import Cascade
from hsd_tf.masks import l1_scores

from cascade_test import make_cascade, randomize
from conftest import TOPOLOGIES, kernel_params, tiny_chain


def _set_masks(cascade, index, masks):
    for variable, mask in zip(cascade.views[index].last_masks, masks):
        variable.assign(mask.astype("float32"))
    cascade.set_phase("frozen")


def _random_masks(model_trace, rng, extreme):
    masks = []
    for size in model_trace.group_widths:
        if extreme:  # one filter kept in every layer
            mask = np.zeros(size)
            mask[rng.randint(size)] = 1
        else:
            mask = (rng.uniform(size=size) < 0.5).astype(float)
            mask[rng.randint(size)] = 1
        masks.append(mask)
    return masks


@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
@pytest.mark.parametrize("extreme", [False, True])
def test_slim_logits_equal_masked_logits(topology, extreme, batch):
    images, labels = batch
    cascade, _ = make_cascade(TOPOLOGIES[topology](), [0.5, 0.0])
    cascade.train_on_batch(images, labels)  # per-view BN statistics that differ
    rng = np.random.RandomState(3)
    for trial in range(3):
        _set_masks(cascade, 0, _random_masks(cascade.trace, rng, extreme))
        slim = slimming.slim_view(cascade, 0)
        masked = cascade.view_forward(0, images, training=False)[0].numpy()
        np.testing.assert_allclose(slim(images).numpy(), masked, rtol=1e-4, atol=1e-4)
        cost = cascade.view_costs()[0]
        assert kernel_params(slim) == cost["params"] == costs.profile(slim)["params"]
        assert costs.profile(slim)["macs"] == cost["macs"]


def test_slim_top_view_is_the_full_network(batch):
    images, _ = batch
    cascade, _ = make_cascade(TOPOLOGIES["residual"](), [0.5, 0.0])
    slim = slimming.slim_view(cascade, 1)
    np.testing.assert_allclose(slim(images).numpy(), cascade.view_forward(1, images)[0].numpy(), rtol=1e-4, atol=1e-4)


def test_slim_vgg16_from_topk_masks(batch):
    teacher = architectures.vgg16((32, 32, 3), 4, width_multiplier=0.0625)
    cascade = Cascade(teacher, [0.7, 0.0], teacher=teacher)
    cascade.initialize_from(teacher)
    rng = np.random.RandomState(0)
    for score in cascade.views[0].scores:
        score.assign(rng.normal(size=score.shape))
    images = rng.normal(size=(3, 32, 32, 3)).astype("float32")
    slim = slimming.slim_view(cascade, 0, frozen=False)
    np.testing.assert_allclose(slim(images).numpy(), cascade.view_forward(0, images, frozen=False)[0].numpy(),
                               rtol=1e-4, atol=1e-4)


def test_slim_model_is_plain_and_round_trips_its_config():
    cascade, _ = make_cascade(TOPOLOGIES["chain"](), [0.5, 0.0])
    slim = slimming.slim_view(cascade, 0, frozen=False)
    names = {w.path for w in slim.weights}
    assert not any("score" in n or "mask" in n or "teacher" in n for n in names)
    clone = keras.Model.from_config(slim.get_config())
    assert [w.shape for w in clone.weights] == [w.shape for w in slim.weights]


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_l1_pruning_keeps_the_budget_and_the_largest_filters(ratio):
    teacher = randomize(tiny_chain())
    model, row = slimming.l1_pruned(teacher, ratio)
    total = row["filters_total"]
    assert row["filters_kept"] == round((1 - ratio) * total)
    assert (row["params"], row["macs"]) == (costs.profile(model)["params"], costs.profile(model)["macs"])
    groups = ("conv_a", "conv_b")
    scores = {g: l1_scores(teacher.get_layer(g).get_weights()[0]) for g in groups}
    kept = {g: model.get_layer(g).filters for g in groups}
    assert sum(kept.values()) == row["filters_kept"]
    # Every dropped filter scores below every kept one (layers keeping only their forced best one aside).
    ranked = [g for g in groups if kept[g] > 1]
    assert ranked
    threshold = min(np.sort(scores[g])[::-1][kept[g] - 1] for g in ranked)
    for g, s in scores.items():
        assert np.all(np.sort(s)[::-1][kept[g]:] <= threshold)
