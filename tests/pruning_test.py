"""hsd_tf.prune: any trained Keras model and the user's own data in, the slim student and its report out."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import hsd_tf
from hsd_tf import graph

from testing import randomize
from conftest import INPUT_SHAPE, NUM_CLASSES, pattern_se

QUICK = dict(joint_epochs=1, finetune_epochs=1, batch_size=16, recalibration_batches=2, export=[],
             tensorboard=False, verbose=0, min_layer_filters=1)


def _examples(count, seed):
    rng = np.random.RandomState(seed)
    return (rng.normal(size=(count,) + INPUT_SHAPE).astype("float32"),
            rng.randint(0, NUM_CLASSES, size=count).astype("int32"))


def test_prune_returns_a_slim_student_whose_report_is_its_own_accuracy(tmp_path):
    model = randomize(pattern_se())
    before = [w.copy() for w in model.get_weights()]
    x_test, y_test = _examples(24, 2)
    train = tf.data.Dataset.from_tensor_slices(_examples(64, 0)).batch(8)  # batched: unbatched inside
    student, report = hsd_tf.prune(model, train, _examples(24, 1), (x_test, y_test), prune_ratio=0.5, num_ta=1,
                                   model_dir=str(tmp_path / "run"), **QUICK)
    assert isinstance(student, keras.Model) and student.output_shape == (None, NUM_CLASSES)
    accuracy = float(np.mean(np.argmax(student.predict(x_test, verbose=0), -1) == y_test))
    assert report["views"][0]["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert report["views"][0]["params"] < report["teacher"]["params"]
    assert student.get_layer("body").filters < model.get_layer("body").filters
    for b, a in zip(before, model.get_weights()):  # the user's model is neither trained nor changed
        np.testing.assert_array_equal(b, a)
    # Re-running with the same model_dir finds the run finished.
    again = hsd_tf.prune(model, train, _examples(24, 1), (x_test, y_test), prune_ratio=0.5, num_ta=1,
                         model_dir=str(tmp_path / "run"), **QUICK)
    assert again.report["views"] == report["views"]


def test_prune_refuses_bad_settings_and_unsupported_layers_at_once(tmp_path):
    data = _examples(32, 0)
    with pytest.raises(ValueError, match=r"Received: \['joint_epoch'\]"):
        hsd_tf.prune(pattern_se(), data, data, model_dir=str(tmp_path), joint_epoch=1)
    x = keras.Input(INPUT_SHAPE)
    y = keras.layers.Lambda(lambda t: t[..., ::-1], name="flip")(keras.layers.Conv2D(4, 3, name="c")(x))
    with pytest.raises(graph.UnsupportedLayerError, match="'flip'"):
        hsd_tf.prune(keras.Model(x, y), data, data, model_dir=str(tmp_path))
    with pytest.raises(ValueError, match="train.s images have 2 axes; the model reads 3"):
        hsd_tf.prune(pattern_se(), (data[0][:, 0], data[1]), data, model_dir=str(tmp_path), **QUICK)
