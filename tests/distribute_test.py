"""The cascade under MirroredStrategy trains like one device on the same global batch."""

import keras
import numpy as np
import tensorflow as tf

from hsd_tf.cascade import Cascade

from testing import randomize
from conftest import INPUT_SHAPE, NUM_CLASSES, tiny_residual


def _train(strategy, teacher_weights, images, labels, steps):
    with strategy.scope():
        teacher = tiny_residual()
        teacher.set_weights(teacher_weights)
        cascade = Cascade(teacher, [0.6, 0.3, 0.0], teacher=teacher, hint_weight=0.01, mask_hysteresis=0.01)
        cascade.initialize_from(teacher)
        initial_scores = [s.numpy().copy() for s in cascade.views[0].scores]
        cascade.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                        score_optimizer=keras.optimizers.RMSprop(0.05))
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    history = cascade.fit(dataset, epochs=steps, verbose=0)
    return cascade, initial_scores, history.history


def test_mirrored_matches_one_device():
    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) >= 2
    rng = np.random.RandomState(0)
    images = rng.normal(size=(8,) + INPUT_SHAPE).astype("float32")
    labels = rng.randint(0, NUM_CLASSES, size=8).astype("int32")
    teacher_weights = randomize(tiny_residual()).get_weights()
    single, initial_scores, single_logs = _train(tf.distribute.OneDeviceStrategy(devices[0].name), teacher_weights, images, labels, 4)
    mirrored, _, mirrored_logs = _train(tf.distribute.MirroredStrategy([d.name for d in devices[:2]]), teacher_weights,
                      images, labels, 4)
    for key, layer in single.shared.items():
        for a, b in zip(layer.get_weights(), mirrored.shared[key].get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=key)
    for view_a, view_b in zip(single.views, mirrored.views):
        for a, b in zip(view_a.scores, view_b.scores):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)
        for a, b in zip(view_a.hard_masks(False), view_b.hard_masks(False)):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        for a, b in zip(view_a.get_weights(), view_b.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        for a, b in zip(view_a.last_masks, view_b.last_masks):  # the hysteresis reference, written in the step
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Mask changes are counted once, not once per replica.
    for name in ("student", "ta1"):
        assert single_logs[f"{name}_changes"] == mirrored_logs[f"{name}_changes"]
    # The comparison is not vacuous: training moved the scores.
    assert any(not np.allclose(a, b.numpy()) for a, b in zip(initial_scores, mirrored.views[0].scores))
