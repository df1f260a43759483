"""Mixed precision: 16-bit compute, float32 variables, logits and losses; one loss scale for both optimizers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from hsd_tf.cascade import Cascade

from testing import randomize
from conftest import INPUT_SHAPE, NUM_CLASSES, tiny_residual


@pytest.fixture
def policy():
    previous = keras.config.dtype_policy()
    yield lambda name: keras.config.set_dtype_policy(name)
    keras.config.set_dtype_policy(previous)


def _cascade(weight_optimizer=None, score_optimizer=None):
    teacher = randomize(tiny_residual())
    cascade = Cascade(teacher, [0.6, 0.3, 0.0], teacher=teacher, hint_weight=0.01)
    cascade.initialize_from(teacher)
    cascade.compile(optimizer=weight_optimizer or keras.optimizers.SGD(0.05),
                    score_optimizer=score_optimizer or keras.optimizers.RMSprop(0.05))
    return cascade


def _batch(seed=0):
    rng = np.random.RandomState(seed)
    return (rng.normal(size=(8,) + INPUT_SHAPE).astype("float32"),
            rng.randint(0, NUM_CLASSES, size=8).astype("int32"))


@pytest.mark.parametrize("name", ["mixed_bfloat16", "mixed_float16"])
def test_views_compute_in_16_bits_with_float32_variables_and_logits(policy, name):
    policy(name)
    cascade = _cascade()
    images, labels = _batch()
    logits, hints = cascade.view_forward(0, images, training=False)
    assert logits.dtype == tf.float32
    assert hints[0].dtype == tf.dtypes.as_dtype(name[len("mixed_"):])
    assert {v.dtype for v in cascade.variables if v.dtype != "int32"} == {"float32"}
    logs = cascade.train_on_batch(images, labels, return_dict=True)
    assert np.isfinite(logs["loss"]) and 0.0 <= logs["student_acc"] <= 1.0


def test_float16_keeps_one_loss_scale_for_weights_and_scores(policy):
    policy("mixed_float16")
    cascade = _cascade()
    assert isinstance(cascade.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(cascade.score_optimizer, keras.optimizers.LossScaleOptimizer)
    images, labels = _batch()
    for step in range(3):
        cascade.train_on_batch(images, labels)
    assert float(cascade.optimizer.dynamic_scale) == float(cascade.score_optimizer.dynamic_scale)
    assert int(cascade.optimizer.iterations) == int(cascade.score_optimizer.iterations) == 3


def test_float16_overflow_skips_both_steps_and_halves_both_scales(policy):
    policy("mixed_float16")
    huge = 2.0 ** 120  # any scaled gradient overflows float16
    cascade = _cascade(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.05), initial_scale=huge),
                       keras.optimizers.LossScaleOptimizer(keras.optimizers.RMSprop(0.05), initial_scale=huge))
    weights_before = [v.numpy().copy() for v in cascade.trainable_variables]
    images, labels = _batch()
    cascade.train_on_batch(images, labels)
    for before, variable in zip(weights_before, cascade.trainable_variables):
        np.testing.assert_array_equal(before, variable.numpy(), err_msg=variable.path)
    assert float(cascade.optimizer.dynamic_scale) == float(cascade.score_optimizer.dynamic_scale) == huge / 2
