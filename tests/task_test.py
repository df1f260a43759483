"""The task: the model's own loss on logits, the distillation of every kind of output, the primary metric and its
direction, and one-line refusals."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from hsd_tf import architectures, losses, task as task_lib

from testing import beyond_setup
from conftest import BEYOND, NUM_CLASSES


def _task(model, target_spec, **given):
    stripped, activations = architectures.without_final_activations(model)
    return stripped, task_lib.from_model(model, activations, target_spec, **given)


def _dense(units, activation=None, inputs=(6,)):
    x = keras.Input(inputs)
    return keras.Model(x, keras.layers.Dense(units, activation=activation)(x))


LABELS = tf.TensorSpec((None,), tf.int32)


def test_an_uncompiled_classifier_trains_exactly_as_hsd_tf_always_did():
    """Cross-entropy on logits and KD, the very numbers of `losses.pair_loss` without a task; accuracy."""
    _, task = _task(_dense(3), LABELS)
    assert task.default_classifier and task.is_classifier and task.primary == "accuracy" and task.higher_is_better
    labels = tf.constant([0, 2])
    logits = tf.constant([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    teacher = tf.constant([[1.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
    plain = losses.pair_loss(labels, logits, teacher, kd_weight=0.4, temperature=15.0)
    tasked = losses.pair_loss(labels, logits, teacher, kd_weight=0.4, temperature=15.0, task=task)
    for key in ("ce", "kd", "loss"):
        assert float(tasked[key]) == float(plain[key])


def test_a_final_softmax_comes_off_and_the_cross_entropy_reads_logits():
    model = _dense(3, "softmax")
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    stripped, task = _task(model, LABELS)
    assert task.outputs[0].activation == "softmax" and task.outputs[0].kind == "classes"
    assert task.outputs[0].logit_loss.get_config().get("from_logits") or task.outputs[0].exact_sparse
    x = np.random.RandomState(0).normal(size=(4, 6)).astype("float32")
    labels = np.array([0, 1, 2, 1])
    # The user's loss of the user's outputs (probabilities), computed from logits.
    expected = keras.losses.sparse_categorical_crossentropy(labels, model(x))
    assert float(task.loss(labels, [stripped(x)])) == pytest.approx(float(np.mean(expected)), rel=1e-5)


def test_a_sigmoid_output_distils_as_a_two_class_distribution_per_element():
    model = _dense(2, "sigmoid")
    model.compile("sgd", "binary_crossentropy")
    _, task = _task(model, tf.TensorSpec((None, 2), tf.float32))
    assert task.outputs[0].kind == "binary" and task.primary == "loss" and not task.higher_is_better
    z, t, temperature = tf.constant([[0.5, -1.0]]), tf.constant([[2.0, 0.0]]), 4.0
    p, q = 1 / (1 + np.exp(-t.numpy() / temperature)), 1 / (1 + np.exp(-z.numpy() / temperature))
    kl = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
    assert float(task.distillation([z], [t], temperature)) == pytest.approx(temperature**2 * kl.mean(), rel=1e-5)
    assert float(task.distillation([t], [t], temperature)) == pytest.approx(0.0, abs=1e-6)


def test_a_regression_output_distils_with_its_own_loss_to_the_teachers_output():
    """The term has the task's units: mean absolute error to the teacher for a model trained on it."""
    model = _dense(1)
    model.compile("sgd", "mae", metrics=["mae"])
    _, task = _task(model, tf.TensorSpec((None, 1), tf.float32))
    assert task.outputs[0].kind == "values" and task.outputs[0].distill_with_loss
    assert task.primary == "mae" and not task.higher_is_better
    z, t = tf.constant([[1.0], [3.0]]), tf.constant([[2.0], [7.0]])
    assert float(task.distillation([z], [t], 15.0)) == pytest.approx((1.0 + 4.0) / 2)


def test_a_custom_loss_output_distils_with_the_mean_squared_error():
    def loss(y_true, y_pred):
        return keras.ops.mean(keras.ops.abs(y_true - y_pred) ** 3, axis=-1)

    model = _dense(2)
    model.compile("sgd", loss)
    _, task = _task(model, tf.TensorSpec((None, 2), tf.float32))
    assert task.outputs[0].kind == "values" and not task.outputs[0].distill_with_loss
    z, t = tf.constant([[1.0, 0.0]]), tf.constant([[3.0, 1.0]])
    assert float(task.distillation([z], [t], 15.0)) == pytest.approx((4.0 + 1.0) / 2)


def test_a_map_of_class_scores_distils_per_position():
    """Segmentation: the per-pixel KL averaged over pixels equals the image classifier's KL where every pixel is
    the same image."""
    model, _, _, task = beyond_setup(BEYOND["unet"])
    assert task.outputs[0].kind == "classes" and task.primary == "iou" and task.higher_is_better
    rng = np.random.RandomState(0)
    z, t = rng.normal(size=(2, 8, 8, NUM_CLASSES)).astype("float32"), rng.normal(size=(2, 8, 8, NUM_CLASSES))
    per_pixel = losses.distillation_loss(tf.constant(z), tf.constant(t, tf.float32), 15.0).numpy()
    assert float(task.distillation([z], [t], 15.0)) == pytest.approx(per_pixel.mean(), rel=1e-5)
    del model


@pytest.mark.parametrize("pattern", ["two_outputs", "dict_outputs", "unet", "autoencoder", "siamese"])
def test_metrics_are_the_users_own_evaluate(pattern):
    """Keras' own metric objects on the outputs as the user's model gives them: the figures of `model.evaluate`."""
    model, stripped, data, task = beyond_setup(BEYOND[pattern])
    ours = task.evaluate(stripped, data.test)
    theirs = model.evaluate(data.test, return_dict=True, verbose=0)
    assert set(ours) == set(task.metric_keys) and ours
    for key, value in ours.items():
        if key.endswith("loss"):  # a model compiled without metrics is measured by its loss
            key = "loss"
        assert value == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), key


def test_loss_weights_weigh_the_outputs_as_compiled():
    model, stripped, data, task = beyond_setup(BEYOND["two_outputs"])
    inputs, targets = next(iter(data.test))
    outputs = keras.tree.flatten(stripped(inputs))
    kind = keras.losses.sparse_categorical_crossentropy(targets[0], outputs[0], from_logits=True)
    size = keras.losses.mean_absolute_error(targets[1], outputs[1])
    assert float(task.loss(targets, outputs)) == pytest.approx(float(np.mean(kind) + 0.5 * np.mean(size)), rel=1e-5)
    del model


def test_the_primary_metrics_direction_comes_from_the_metric_or_is_given():
    def agreement(y_true, y_pred):
        return keras.ops.mean(keras.ops.cast(keras.ops.abs(y_true - y_pred) < 0.5, "float32"), axis=-1)

    model = _dense(1)
    model.compile("sgd", "mse", metrics=[agreement, "mae"])
    with pytest.raises(task_lib.TaskError, match="whether a higher or a lower agreement is better is not known"):
        _task(model, tf.TensorSpec((None, 1), tf.float32))
    _, task = _task(model, tf.TensorSpec((None, 1), tf.float32), metric_direction="higher")
    assert task.primary == "agreement" and task.higher_is_better and task.better(0.9, 0.8)


@pytest.mark.parametrize("given, message", [
    (dict(), "has no loss, and only a classifier"),
    (dict(loss="mse", metrics=["no_such_metric"]), "Keras knows no metric 'no_such_metric'"),
    (dict(loss="no_such_loss"), "Keras knows no loss 'no_such_loss'"),
    (dict(loss={"elsewhere": "mse"}), "loss names outputs the model does not have"),
])
def test_what_cannot_be_trained_is_refused_in_one_line(given, message):
    model = _dense(2, inputs=(4, 6))  # a value per position: no default loss
    with pytest.raises(task_lib.TaskError, match=message) as error:
        _task(model, tf.TensorSpec((None, 4, 2), tf.float32), **given)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("spec, message", [
    (tf.TensorSpec((None, 5), tf.float32), r"targets of output .* have shape \(5,\) per example; the output has shape"),
    ((tf.TensorSpec((None,), tf.int32), tf.TensorSpec((None,), tf.int32)), "2 target"),
])
def test_targets_that_do_not_fit_the_outputs_are_refused_naming_the_output(spec, message):
    model = _dense(3)
    model.compile("sgd", "mse")
    with pytest.raises(task_lib.TaskError, match=message):
        _task(model, spec)


def test_a_model_compiled_without_metrics_is_measured_by_its_loss():
    _, stripped, data, task = beyond_setup(BEYOND["autoencoder"])
    assert task.primary == "loss" and not task.higher_is_better
    inputs, targets = next(iter(data.test))
    expected = float(np.mean((keras.ops.sigmoid(stripped(inputs)) - targets) ** 2))
    assert task.evaluate(lambda x: stripped(x), data.test.take(1))["loss"] == pytest.approx(expected, rel=1e-5)
    assert math.isfinite(float(task.loss(targets, [stripped(inputs)])))


def test_a_model_that_computes_its_own_loss_is_refused_unless_a_loss_is_given():
    """keras_hub's RetinaNet matches boxes to anchors in its compute_loss: no loss of its outputs is its own."""
    class OwnLoss(keras.Model):
        def compute_loss(self, *args, **kwargs):  # pylint: disable=arguments-differ
            return super().compute_loss(*args, **kwargs)

    x = keras.Input((6,))
    model = OwnLoss(x, keras.layers.Dense(2)(x))
    model.compile("sgd", "mse")
    with pytest.raises(task_lib.TaskError, match=r"computes its loss itself \(OwnLoss.compute_loss\)"):
        _task(model, tf.TensorSpec((None, 2), tf.float32))
    _, task = _task(model, tf.TensorSpec((None, 2), tf.float32), loss="mae")
    assert task.outputs[0].loss.name == "mae"


def test_an_output_of_probabilities_distils_from_their_logits():
    """A softmax inside the model (not the last layer, so not taken off), read by a cross-entropy on probabilities:
    distillation compares the distributions, as it does on logits."""
    x = keras.Input((6,))
    probabilities = keras.layers.Softmax()(keras.layers.Dense(3)(x))
    model = keras.Model(x, keras.layers.Reshape((3,))(probabilities))
    model.compile("sgd", "sparse_categorical_crossentropy")
    _, task = _task(model, LABELS)
    assert task.outputs[0].probabilities and task.outputs[0].activation is None
    z, t = tf.constant([[1.0, 0.0, -1.0]]), tf.constant([[0.0, 2.0, 0.0]])
    expected = losses.distillation_loss(z, t, 15.0)
    found = task.distillation([tf.nn.softmax(z)], [tf.nn.softmax(t)], 15.0)
    assert float(found) == pytest.approx(float(expected[0]), rel=1e-4)
