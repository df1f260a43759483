"""Slim models compute what the masked views computed, one test per topology; L1 pruning."""

import keras
import numpy as np
import pytest

from hsd_tf import architectures, costs, graph, slimming
from hsd_tf.cascade import Cascade
from hsd_tf.masks import l1_scores

from testing import beyond_setup, make_cascade, randomize
from conftest import (BEYOND, INPUT_SHAPE, PATTERNS, TOPOLOGIES, kernel_params, pattern_shared_on_uneven_branches,
                      tiny_chain)


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


@pytest.mark.parametrize("extreme", [False, True])
@pytest.mark.parametrize("pattern", [PATTERNS["shared_on_two_branches"], pattern_shared_on_uneven_branches])
def test_a_layer_shared_by_two_branches_slims_to_what_its_masked_view_computes(pattern, extreme, batch):
    """The branches' convs score differently (b's kernels are 10x a's), yet keep the same channels, as they must:
    one conv on each branch (same widths), or one conv against a concatenation of two (2 + 4 channels)."""
    images, labels = batch
    model = randomize(pattern())
    for layer in model.layers:
        if layer.name.startswith("b") and layer.weights:
            layer.set_weights([w * 10 for w in layer.get_weights()])
    cascade, _ = make_cascade(model, [0.5, 0.0])
    cascade.train_on_batch(images, labels)
    rng = np.random.RandomState(1)
    for trial in range(3):
        masks = _random_masks(cascade.trace, rng, extreme)
        _set_masks(cascade, 0, masks)
        slim = slimming.slim_view(cascade, 0)
        b_filters = sum(slim.get_layer(name).filters for name in ("b", "b1", "b2") if name in _names(slim))
        assert slim.get_layer("a").filters == b_filters == sum(m.sum() for g, m in zip(cascade.trace.groups, masks)
                                                                if "a" in g.members)
        np.testing.assert_allclose(slim(images).numpy(), cascade.view_forward(0, images, training=False)[0].numpy(),
                                   rtol=1e-4, atol=1e-4)
    slim = slimming.slim_view(cascade, 0, frozen=False)  # the masks of the scores: top-k over the merged group
    np.testing.assert_allclose(slim(images).numpy(), cascade.view_forward(0, images, frozen=False)[0].numpy(),
                               rtol=1e-4, atol=1e-4)


def _names(model):
    return {layer.name for layer in model.layers}


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


def _slim_equals_masked_after_a_step(model, images, labels, **cascade_args):
    """One cascade step on `model`, then the student's slim model against its masked view."""
    cascade = Cascade(model, [0.5, 0.0], teacher=model, **cascade_args)
    cascade.initialize_from(model)
    cascade.compile(optimizer=keras.optimizers.SGD(0.01), score_optimizer=keras.optimizers.SGD(1.0))
    cascade.train_on_batch(images, labels)
    slim = slimming.slim_view(cascade, 0, frozen=False)
    masked = cascade.view_forward(0, images, training=False, frozen=False)[0].numpy()
    assert np.abs(slim(images).numpy() - masked).max() <= 1e-5 * np.abs(masked).max()
    cost = cascade.view_costs(frozen=False)[0]
    unpruned = cascade_args.get("unpruned_layers", ())
    assert (costs.profile(slim, unpruned)["params"], costs.profile(slim, unpruned)["macs"]) == (cost["params"],
                                                                                                cost["macs"])
    assert cost["params"] < costs.profile(model, unpruned)["params"]
    return slim


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_any_model_pattern_slims_to_what_its_masked_view_computes(pattern, batch):
    images, labels = batch
    model = randomize(PATTERNS[pattern]())
    slim = _slim_equals_masked_after_a_step(model, images, labels)
    assert not any(isinstance(layer, keras.Model) for layer in slim.layers)  # nested models are inlined


def test_the_rehearsal_before_training_catches_a_slim_model_that_would_be_wrong(monkeypatch):
    """Slimmed to random masks before any training: a split cut at the dense model's positions is caught."""
    trace = graph.trace(randomize(PATTERNS["channel_split"]()))
    assert slimming.rehearse(trace) < 1e-5
    monkeypatch.setattr(slimming, "_slim_op", lambda step, keep: step.operation)  # the split of the dense model
    with pytest.raises(slimming.SlimmingError, match="cannot be built or run|does not compute"):
        slimming.rehearse(trace)


UNTRACEABLE = {
    "Lambda": lambda: keras.layers.Lambda(lambda t: t[..., ::-1], name="odd"),  # moves channels
    "Conv2D": lambda: keras.layers.Conv2D(6, 3, padding="same", groups=2, name="odd"),  # ties blocks of 3
}


@pytest.mark.parametrize("kind", sorted(UNTRACEABLE))
def test_an_unsupported_layer_left_unpruned_keeps_its_channels(kind, batch):
    images, labels = batch
    x = keras.Input(INPUT_SHAPE)
    y = keras.layers.Conv2D(4, 3, padding="same", name="stem")(x)
    y = keras.layers.ReLU()(keras.layers.BatchNormalization(name="a_bn")(keras.layers.Conv2D(6, 3, name="a")(y)))
    y = UNTRACEABLE[kind]()(y)
    y = keras.layers.ReLU()(keras.layers.BatchNormalization(name="b_bn")(keras.layers.Conv2D(5, 1, name="b")(y)))
    model = randomize(keras.Model(x, keras.layers.Dense(4, name="fc")(keras.layers.Flatten()(y))))
    with pytest.raises(graph.UnsupportedLayerError, match=rf"'odd' \({kind}\).*--unpruned_layers=odd"):
        Cascade(model, [0.5, 0.0])
    trace = graph.trace(model, unpruned_layers=["odd"])
    assert [g.name for g in trace.groups] == ["b"]  # a's channels feed the unpruned layer: kept whole
    slim = _slim_equals_masked_after_a_step(model, images, labels, unpruned_layers=["odd"])
    assert slim.get_layer("a").filters == 6 and slim.get_layer("b").filters < 5
    with pytest.raises(graph.UnsupportedLayerError, match="Received: \\['nope'\\]"):
        graph.trace(model, unpruned_layers=["odd", "nope"])


@pytest.mark.parametrize("pattern", sorted(BEYOND))
def test_a_model_beyond_classifiers_slims_to_what_its_masked_view_computes(pattern):
    """Sequences, volumes, tokens, several inputs and outputs, maps: one cascade step with the model's own loss,
    then every output of the slim student against its masked view, and its costs against the count."""
    model, stripped, data, task = beyond_setup(BEYOND[pattern])
    inputs, targets = next(iter(data.test))
    cascade = Cascade(stripped, [0.5, 0.0], teacher=stripped, task=task)
    cascade.initialize_from(stripped)
    cascade.compile(optimizer=keras.optimizers.SGD(0.01), score_optimizer=keras.optimizers.SGD(1.0))
    logs = cascade.train_on_batch(inputs, targets, return_dict=True)
    assert np.isfinite(logs["loss"]) and f"student_{task.log_name()}" in logs
    slim = slimming.slim_view(cascade, 0, frozen=False)
    masked = keras.tree.flatten(cascade.view_forward(0, inputs, training=False, frozen=False)[0])
    found = keras.tree.flatten(slim(graph.model_inputs(inputs)))
    assert len(found) == len(masked) == len(task.outputs)
    for f, m in zip(found, masked):
        assert f.shape == m.shape and np.abs(np.asarray(f) - np.asarray(m)).max() <= 1e-5 * np.abs(m).max()
    cost = cascade.view_costs(frozen=False)[0]
    assert (costs.profile(slim)["params"], costs.profile(slim)["macs"]) == (cost["params"], cost["macs"])
    assert cost["params"] < costs.profile(stripped)["params"]
    assert graph.kernel_weights(model) == costs.profile(stripped)["params"]
