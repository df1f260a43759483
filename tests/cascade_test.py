"""The cascade's train step: Eq. 5, per-view state, the frozen teacher, masking."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from hsd_tf import graph, losses
from hsd_tf.cascade import Cascade
from hsd_tf.ratios import even_prune_ratios, validate_prune_ratios

from conftest import PATTERNS, TOPOLOGIES, tiny_chain, tiny_residual
from testing import make_cascade, randomize


def straight_through_score_grads(cascade, index, images, labels):
    """dL_index / d mask_index, computed with the masks as free variables.

    This is the straight-through score gradient of view `index` by definition
    (d mask / d score = 1), computed without the cascade's estimator or its
    gradient shifting.
    """
    hard = cascade.views[index].hard_masks(frozen=False)
    mask_vars = [tf.Variable(m) for m in hard]
    if index + 1 < len(cascade.views):
        teacher_logits, teacher_hints = cascade.view_forward(index + 1, images, training=True)
    else:
        teacher_logits, teacher_hints = cascade.teacher_forward(images)
    with tf.GradientTape() as tape:
        outputs, hints = graph.run(cascade.trace, [images], cascade.layer_for(index), mask_vars, training=True)
        logits = outputs[0]
        loss = losses.pair_loss(
            labels, logits, teacher_logits, hints, teacher_hints, hint_weight=cascade.hint_weight
        )["loss"]
    return [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, mask_vars)]


@pytest.mark.parametrize("topology", ["chain", "residual", "se", "concat"])
def test_score_gradient_is_the_teacher_views_straight_through_gradient(topology, batch):
    """Eq. 5: after one step, delta score_i = -dL_{i+1}/d mask_{i+1}; the top view's scores stay."""
    images, labels = batch
    cascade, _ = make_cascade({**TOPOLOGIES, **PATTERNS}[topology](), [0.6, 0.3, 0.0], hint_weight=0.01)
    expected = [straight_through_score_grads(cascade, i, images, labels) for i in range(3)]
    before = [[s.numpy().copy() for s in view.scores] for view in cascade.views]
    cascade.train_on_batch(images, labels)
    after = [[s.numpy() for s in view.scores] for view in cascade.views]
    for i in range(2):
        for b, a, g in zip(before[i], after[i], expected[i + 1]):
            np.testing.assert_allclose(b - a, g, rtol=1e-4, atol=1e-6)
        assert any(np.abs(g).max() > 1e-6 for g in expected[i + 1])
    for b, a in zip(before[2], after[2]):
        np.testing.assert_array_equal(b, a)


def test_student_alone_uses_its_own_gradient(batch):
    images, labels = batch
    cascade, _ = make_cascade(tiny_chain(), [0.5])
    expected = straight_through_score_grads(cascade, 0, images, labels)
    before = [s.numpy().copy() for s in cascade.views[0].scores]
    cascade.train_on_batch(images, labels)
    for b, s, g in zip(before, cascade.views[0].scores, expected):
        np.testing.assert_allclose(b - s.numpy(), g, rtol=1e-4, atol=1e-6)


def test_batchnorm_stem_and_head_are_per_view_and_kernels_shared(batch):
    images, labels = batch
    cascade, _ = make_cascade(tiny_chain(), [0.5, 0.0])
    student, top = cascade.views
    assert sorted(student.own) == sorted(top.own) == ["conv_a_bn", "conv_b_bn", "fc1", "predictions", "stem", "stem_bn"]
    for name in ("stem_bn", "conv_a_bn", "conv_b_bn"):
        assert student.own[name].moving_mean is not top.own[name].moving_mean
    assert not set(cascade.shared) & set(student.own)
    cascade.train_on_batch(images, labels)
    # Different masks see different activation statistics.
    assert not np.allclose(student.own["conv_b_bn"].moving_mean.numpy(), top.own["conv_b_bn"].moving_mean.numpy())
    # Editing the top view's head, stem and normalizations leaves the student's logits alone...
    logits_before = cascade.view_forward(0, images)[0].numpy()
    for layer in top.own.values():
        layer.set_weights([w + 1.0 for w in layer.get_weights()])
    np.testing.assert_array_equal(cascade.view_forward(0, images)[0].numpy(), logits_before)
    # ...while a shared kernel moves both views.
    top_before = cascade.view_forward(1, images)[0].numpy()
    kernel = cascade.shared["conv_b"]
    kernel.set_weights([w * 2.0 for w in kernel.get_weights()])
    assert not np.allclose(cascade.view_forward(0, images)[0].numpy(), logits_before)
    assert not np.allclose(cascade.view_forward(1, images)[0].numpy(), top_before)


def test_frozen_teacher_never_changes(batch):
    images, labels = batch
    cascade, teacher = make_cascade(tiny_residual(), [0.5, 0.0])
    before = [w.copy() for w in teacher.get_weights()]
    for phase in ("joint", "frozen"):
        cascade.set_phase(phase)
        cascade.train_on_batch(images, labels)
    cascade.set_ladder(cascade.snapshot())
    cascade.set_phase("finetune")
    cascade.set_ladder_rung(1)  # the pre-trained teacher itself
    cascade.train_on_batch(images, labels)
    for b, a in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(b, a)
    assert not any(v is w for v in cascade.trainable_variables for w in teacher.weights)
    assert teacher.trainable  # the model handed in is not frozen either


@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
def test_masked_filter_contributes_nothing_downstream(topology, batch):
    """Whatever a masked filter's kernel and BatchNorm hold, the logits are the same."""
    images, _ = batch
    cascade, _ = make_cascade(TOPOLOGIES[topology](), [0.5, 0.0])
    logits = cascade.view_forward(0, images, training=False)[0].numpy()
    view = cascade.views[0]
    rng = np.random.RandomState(1)
    for g, group in enumerate(cascade.trace.groups):
        dropped = np.where(view.hard_masks(frozen=False)[g].numpy() == 0)[0]
        for member in group.members:
            layer = cascade.shared[member]
            (kernel,) = layer.get_weights()
            kernel[..., dropped] = rng.normal(0, 100, kernel[..., dropped].shape)
            layer.set_weights([kernel])
            bn = view.own[f"{member}_bn"]
            weights = bn.get_weights()
            for w in weights[:3]:
                w[dropped] = rng.normal(0, 100, w[dropped].shape)
            bn.set_weights(weights)
    assert sum(int((m.numpy() == 0).sum()) for m in view.hard_masks(frozen=False)) > 0
    np.testing.assert_allclose(cascade.view_forward(0, images, training=False)[0].numpy(), logits, atol=1e-5)


def test_train_step_reports_per_view_metrics(batch):
    images, labels = batch
    cascade, _ = make_cascade(tiny_chain(), [0.6, 0.3, 0.0])
    logs = cascade.train_on_batch(images, labels, return_dict=True)
    for name in ("student", "ta1", "ta2"):
        assert {f"{name}_loss", f"{name}_acc", f"{name}_kept"} <= set(logs)
    total = cascade.trace.total_filters
    assert logs["student_kept"] == pytest.approx(round(0.4 * total) / total)
    assert logs["ta2_kept"] == 1.0


def test_frozen_masks_stay_fixed_and_scores_untouched(batch):
    images, labels = batch
    cascade, _ = make_cascade(tiny_chain(), [0.5, 0.0])
    cascade.freeze_masks()
    cascade.set_phase("frozen")
    masks = [m.copy() for m in cascade.hard_masks(0)]
    scores = [s.numpy().copy() for s in cascade.views[0].scores]
    for _ in range(2):
        cascade.train_on_batch(images, labels)
    for before, after in zip(masks, cascade.hard_masks(0)):
        np.testing.assert_array_equal(before, after)
    for before, after in zip(scores, cascade.views[0].scores):
        np.testing.assert_array_equal(before, after.numpy())


def test_finetune_trains_only_the_student(batch):
    images, labels = batch
    cascade, _ = make_cascade(tiny_chain(), [0.5, 0.0])
    cascade.freeze_masks()
    cascade.set_ladder(cascade.snapshot())
    cascade.set_phase("finetune")
    cascade.set_ladder_rung(0)
    top = [w.copy() for w in cascade.views[1].get_weights()]
    student = [w.numpy().copy() for w in cascade.views[0].weight_variables()]
    cascade.train_on_batch(images, labels)
    for before, after in zip(top, cascade.views[1].get_weights()):
        np.testing.assert_array_equal(before, after)
    assert any(not np.allclose(b, a.numpy()) for b, a in zip(student, cascade.views[0].weight_variables()))


def test_prune_ratio_rules():
    assert even_prune_ratios(0.6, 2) == pytest.approx([0.6, 0.3, 0.0])
    assert even_prune_ratios(0.6, 0) == [0.6]
    validate_prune_ratios([0.8, 0.8 / 1.5, 0.8 / 2.5, 0.0])
    for bad in ([], [1.0], [0.3, 0.5, 0.0], [0.6, 0.3], [-0.1]):
        with pytest.raises(ValueError, match="Received"):
            validate_prune_ratios(bad)


def test_config_round_trip():
    cascade = Cascade(tiny_residual(), [0.5, 0.0], distill_from="all", seed=4)
    clone = Cascade.from_config(cascade.get_config())
    assert clone.trace.groups == cascade.trace.groups
    assert clone.prune_ratios == cascade.prune_ratios
    assert (clone.distill_from, clone.seed) == ("all", 4)


def test_mask_changes_count_the_filters_each_score_update_switched(batch):
    """`<view>_changes` counts the filters whose kept state the step's score update flipped."""
    images, labels = batch
    cascade, _ = make_cascade(tiny_residual(), [0.6, 0.3, 0.0], score_lr=5.0)
    total = {name: 0.0 for name in cascade.view_names}
    for _ in range(3):
        before = [cascade.hard_masks(i, frozen=False) for i in range(3)]
        logs = cascade.train_on_batch(images, labels, return_dict=True)  # metrics reset every call
        for i, name in enumerate(cascade.view_names):
            after = cascade.hard_masks(i, frozen=False)
            expected = sum(np.abs(a - b).sum() * c for a, b, c in zip(after, before[i], cascade.views[i].filter_counts))
            assert logs[f"{name}_changes"] == expected
            total[name] += expected
    assert total["student"] > 0 and total["ta1"] > 0  # not vacuous: the large score steps moved the masks
    assert total["ta2"] == 0  # the top view keeps everything


def test_layer_floor_reaches_every_view(batch):
    cascade = Cascade(tiny_chain(), [0.4, 0.0], max_layer_prune_ratio=0.5, min_layer_filters=1)
    kept = cascade.kept_filters(0, frozen=False)
    assert kept["conv_a"] >= 3 and kept["conv_b"] >= 3  # ceil(0.5 x 6), ceil(0.5 x 5)
    assert cascade.view_costs(frozen=False)[0]["fewest_layer_filters"] == min(kept.values())
    assert Cascade.from_config(cascade.get_config()).views[0].floors == [3, 3]


@pytest.mark.parametrize("topology", ["chain", "residual"])
def test_recalibrated_batch_norm_holds_the_statistics_of_the_frozen_masks(topology, batch):
    """Recalibrated on one batch, inference mode computes what training mode computes on that batch."""
    images, labels = batch
    cascade, _ = make_cascade(TOPOLOGIES[topology](), [0.6, 0.3, 0.0], score_lr=5.0)
    for _ in range(2):  # move masks and BatchNorm statistics away from each other
        cascade.train_on_batch(images, labels)
    cascade.freeze_masks()
    cascade.set_phase("frozen")
    kernels = [w.copy() for layer in cascade.shared.values() for w in layer.get_weights()]
    stale = [cascade.view_forward(i, images, training=False)[0].numpy() for i in range(3)]
    cascade.recalibrate_batch_norm([images])
    for i in range(3):
        inference = cascade.view_forward(i, images, training=False)[0].numpy()
        batch_statistics = cascade.view_forward(i, images, training=True)[0].numpy()
        np.testing.assert_allclose(inference, batch_statistics, rtol=1e-3, atol=1e-3)
    assert any(not np.allclose(s, cascade.view_forward(i, images, training=False)[0].numpy(), atol=1e-3)
               for i, s in enumerate(stale))  # not vacuous: the statistics were stale
    assert all(layer.momentum == 0.9 for view in cascade.views for layer in view.own.values()
               if isinstance(layer, keras.layers.BatchNormalization))
    after = [w for layer in cascade.shared.values() for w in layer.get_weights()]
    assert all(np.array_equal(a, b) for a, b in zip(kernels, after))


def test_recalibration_averages_the_batches(batch):
    images, _ = batch
    cascade, _ = make_cascade(tiny_chain(), [0.5, 0.0])
    halves = [images[:3], images[3:]]
    cascade.recalibrate_batch_norm(halves)
    view = cascade.views[0]
    stem_outputs = [view.own["stem"](h).numpy() for h in halves]
    bn = view.own["stem_bn"]
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([o.mean(axis=(0, 1, 2)) for o in stem_outputs], 0),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean([o.var(axis=(0, 1, 2)) for o in stem_outputs], 0),
                               rtol=1e-3, atol=1e-5)


def test_hysteresis_keeps_a_kept_filter_until_beaten_by_the_margin():
    cascade = Cascade(tiny_chain(), [0.5, 0.0], mask_hysteresis=0.5)  # keeps 6 of 11 filters
    view = cascade.views[0]
    view.scores[0].assign([3.0, 2.0, 1.0, 0.9, 0.0, -1.0])
    view.scores[1].assign([5.0, 4.0, -2.0, -3.0, -4.0])
    first = view.hard_masks(False)
    view.remember_masks(first)
    np.testing.assert_array_equal(first[0].numpy(), [1, 1, 1, 1, 0, 0])
    view.scores[0].assign([3.0, 2.0, 1.0, 0.9, 1.3, -1.0])  # filter 4 now outranks filter 3, by less than 0.5
    np.testing.assert_array_equal(view.hard_masks(False)[0].numpy(), [1, 1, 1, 1, 0, 0])
    view.scores[0].assign([3.0, 2.0, 1.0, 0.9, 1.5, -1.0])  # by more than 0.5: it takes the place
    np.testing.assert_array_equal(view.hard_masks(False)[0].numpy(), [1, 1, 1, 0, 1, 0])


def test_mac_budgets_hold_for_every_view_and_scores_still_follow_eq5(batch):
    images, labels = batch
    teacher = randomize(tiny_residual())
    cascade = Cascade(teacher, teacher=teacher, macs_fractions=[0.4, 0.7, 1.0])
    cascade.initialize_from(teacher)
    cascade.compile(optimizer=keras.optimizers.SGD(0.01), score_optimizer=keras.optimizers.SGD(1.0))
    expected = [straight_through_score_grads(cascade, i, images, labels) for i in range(3)]
    before = [[s.numpy().copy() for s in view.scores] for view in cascade.views]
    cascade.train_on_batch(images, labels)
    for i in range(2):  # Eq. 5 is the same whatever chose the masks
        for b, a, g in zip(before[i], cascade.views[i].scores, expected[i + 1]):
            # float32 sums in another order give absolute differences of about 1e-6: against the largest element
            np.testing.assert_allclose(b - a.numpy(), g, rtol=1e-4, atol=1e-4 * np.abs(g).max() + 1e-6)
    rows = cascade.view_costs(frozen=False)
    for row, target in zip(rows, (0.4, 0.7, 1.0)):
        assert row["macs_target"] == target and row["macs_fraction"] <= target
    assert rows[0]["macs"] < rows[1]["macs"] < rows[2]["macs"]
    assert rows[2]["macs_fraction"] == 1.0 and rows[0]["prune_ratio"] > 0
    with pytest.raises(ValueError, match="Give either prune_ratios or macs_fractions"):
        Cascade(teacher, [0.5, 0.0], macs_fractions=[0.5, 1.0])


def test_under_a_mac_budget_the_joint_masks_follow_the_score_order_and_the_frozen_ones_fill_the_budget():
    """VGG16 at a tenth of its MACs with its first block's filters ranked first: a joint step's mask is the score
    order's prefix, stopped at a first-block filter dearer than the slack; the mask frozen after the joint phase
    keeps it and adds the filters that still fit."""
    from hsd_tf import architectures  # pylint: disable=import-outside-toplevel

    model = architectures.get("vgg16", (32, 32, 3), 10, width_multiplier=0.125)
    cascade = Cascade(model, macs_fractions=[0.1], max_layer_prune_ratio=0.96, min_layer_filters=2)
    view = cascade.views[0]
    rng = np.random.RandomState(0)
    for score, group in zip(view.scores, cascade.trace.groups):
        score.assign(rng.uniform(size=group.width) + (10.0 if group.name.startswith("block1") else 0.0))
    budget = 0.1 * view.mac_model.dense
    joint = [m.numpy() for m in view.hard_masks(frozen=False)]
    assert float(view.mac_model.macs(joint)) < 0.95 * budget
    cascade.freeze_masks()
    frozen = [m.numpy() for m in view.hard_masks(frozen=True)]
    assert 0.99 * budget <= float(view.mac_model.macs(frozen)) <= budget
    assert all(np.all(f >= j) for f, j in zip(frozen, joint))


def test_round_to_gives_every_view_multiples_of_its_channels():
    cascade = Cascade(randomize(tiny_residual()), [0.6, 0.0], round_to=2)
    for g, width in zip(cascade.kept_filters(0, frozen=False).values(), cascade.trace.group_widths):
        assert g % 2 == 0 or g == width
    assert cascade.view_costs(frozen=False)[0]["filters_kept"] <= round(0.4 * cascade.trace.total_filters)


def test_an_adapted_normalization_keeps_its_statistics_in_every_copy():
    """Keras' Normalization computes with constants made from its adapted mean and variance: copies given its
    weights must remake them, or the cascade and the slim student would normalise with the statistics they were
    built with (a silently different model)."""
    from hsd_tf import slimming  # pylint: disable=import-outside-toplevel

    rng = np.random.RandomState(0)
    normalize = keras.layers.Normalization(axis=None)
    normalize.adapt(rng.normal(5.0, 3.0, size=(64, 12, 2)).astype("float32"))
    x = keras.Input((12, 2))
    y = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Conv1D(4, 3, name="stem")(normalize(x))))
    y = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Conv1D(6, 3, name="body")(y)))
    model = keras.Model(x, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(y)))
    signals = rng.normal(5.0, 3.0, size=(8, 12, 2)).astype("float32")
    cascade = Cascade(model, [0.5, 0.0], teacher=model)
    cascade.initialize_from(model)
    np.testing.assert_allclose(cascade.view_forward(1, signals)[0], model(signals), rtol=1e-5, atol=1e-5)
    slim = slimming.slim_view(cascade, 1, frozen=False)
    np.testing.assert_allclose(slim(signals), model(signals), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("source", ["above", "top"])
def test_each_view_learns_from_the_teacher_distill_from_names(source, batch):
    """above: view i's KD term is against view i+1 (the paper); top: every view below the full one against the
    full view (in-place distillation). The top view learns from the pre-trained teacher either way."""
    images, labels = batch
    teacher = randomize(tiny_chain(), 0)
    cascade = Cascade(tiny_chain(), [0.6, 0.3, 0.0], teacher=teacher, distill_from=source)
    cascade.initialize_from(teacher)
    cascade.compile(optimizer=keras.optimizers.SGD(0.0), score_optimizer=keras.optimizers.SGD(0.0))
    outputs = [cascade.view_forward(i, images, training=True)[0] for i in range(3)]
    teacher_logits = cascade.teacher_forward(images)[0]
    cascade.train_on_batch(images, labels)  # learning rates 0: the step's views are those above
    kd = {name: float(cascade.metric_result(f"{name}_kd")) for name in cascade.view_names}
    nearest = {"above": [outputs[1], outputs[2]], "top": [outputs[2], outputs[2]]}[source]
    for i, name in enumerate(["student", "ta1"]):
        expected = float(tf.reduce_mean(losses.distillation_loss(outputs[i], nearest[i], 15.0)))
        assert kd[name] == pytest.approx(expected, rel=1e-4)
    assert kd["ta2"] == pytest.approx(float(tf.reduce_mean(losses.distillation_loss(outputs[2], teacher_logits, 15.0))),
                                      rel=1e-4)
    if source == "top":  # not vacuous: the student's two possible teachers differ
        assert not np.allclose(outputs[1].numpy(), outputs[2].numpy(), atol=1e-3)


def test_with_every_larger_model_as_teacher_the_kept_ones_share_the_kd_term(batch):
    """distill_from="all": each step every teacher of a view is kept at random, the kept ones weigh equally, the
    nearest alone when none is kept; the draw depends on the seed and the step only, so a resumed run repeats it."""
    images, _ = batch
    teacher = randomize(tiny_chain(), 0)
    cascade = Cascade(tiny_chain(), [0.6, 0.3, 0.0], teacher=teacher, distill_from="all", seed=3)
    cascade.compile(optimizer=keras.optimizers.SGD(0.0))
    seen = set()
    for step in range(40):
        cascade.optimizer.iterations.assign(step)
        weights = [float(w) for w in cascade._teacher_weights(0, 3)]  # pylint: disable=protected-access
        assert sum(weights) == pytest.approx(1.0)
        kept = [w > 0 for w in weights]
        assert all(w == pytest.approx(1.0 / sum(kept)) for w, k in zip(weights, kept) if k)
        seen.add(tuple(kept))
        again = [float(w) for w in cascade._teacher_weights(0, 3)]  # pylint: disable=protected-access
        assert again == weights
    assert len(seen) >= 4  # the draws vary from step to step
    outputs = [cascade.view_forward(i, images, training=True) for i in range(3)]
    found = cascade._teachers(0, outputs, lambda kind: ("pretrained", kind))  # pylint: disable=protected-access
    assert found[:2] == outputs[1:] and found[2] == ("pretrained", "teacher")


def test_restarting_the_student_from_the_teacher_keeps_the_assistants_and_the_masks(batch):
    """--finetune_from=teacher: after the ladder's snapshot, the student computes what the pre-trained teacher's
    weights give under its mask; the snapshot's assistants and every mask stay as the joint training left them."""
    images, labels = batch
    cascade, teacher = make_cascade(tiny_chain(), [0.5, 0.0])
    fresh = Cascade(tiny_chain(), [0.5, 0.0], teacher=teacher)
    fresh.initialize_from(teacher)
    for _ in range(2):
        cascade.train_on_batch(images, labels)
    cascade.freeze_masks()
    snapshot = cascade.snapshot()
    ta1 = snapshot.view_forward(1, images)[0].numpy()
    masks = cascade.hard_masks(0)
    cascade.restart_student_from(teacher)
    fresh.views[0].remember_masks([tf.constant(m) for m in masks])
    fresh.set_phase("frozen")
    cascade.set_phase("frozen")
    np.testing.assert_allclose(cascade.view_forward(0, images)[0].numpy(), fresh.view_forward(0, images)[0].numpy(),
                               atol=1e-5)
    np.testing.assert_array_equal(snapshot.view_forward(1, images)[0].numpy(), ta1)
    for before, after in zip(masks, cascade.hard_masks(0)):
        np.testing.assert_array_equal(before, after)
