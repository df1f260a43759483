"""Export: every format written and verified on its own; a failing converter or runtime loses nothing else."""

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

from hsd_tf import export, graph, slimming

FORMATS = list(export.FORMATS)


@pytest.fixture(scope="module")
def digits():
    """A small CNN trained on scikit-learn's 8x8 digits (over 90% on the held-out images), and that split."""
    images, labels = load_digits(return_X_y=True)
    images = (images / 16).reshape(-1, 8, 8, 1).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(16, 3, padding="same"),
                              keras.layers.BatchNormalization(), keras.layers.ReLU(), keras.layers.MaxPooling2D(),
                              keras.layers.Conv2D(32, 3, padding="same"), keras.layers.ReLU(),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)], name="digits_cnn")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(images[:1400], labels[:1400], epochs=40, batch_size=64, verbose=0)
    test = tf.data.Dataset.from_tensor_slices((images[1400:], labels[1400:])).batch(100)
    return model, test, images[:200]


def test_every_format_is_written_and_verified_on_a_trained_model(digits, tmp_path):
    model, test, calibration = digits
    entries = export.export_and_verify(model, str(tmp_path), FORMATS, test, calibration)
    assert set(entries) == set(FORMATS) and not [e["error"] for e in entries.values() if "error" in e]
    keras_accuracy = export.Reference(model, test).accuracy
    assert keras_accuracy > 0.9
    assert entries["savedmodel"]["agreement"] == 1.0 and entries["tflite"]["agreement"] >= 0.99
    for fmt in FORMATS:
        assert abs(entries[fmt]["accuracy"] - keras_accuracy) <= 0.01
    assert entries["tflite_int8"]["bytes"] < entries["tflite_dynamic"]["bytes"] < entries["tflite"]["bytes"]


def test_a_converter_error_fails_that_format_and_keeps_the_others(digits, tmp_path, monkeypatch):
    model, test, calibration = digits
    convert = export._convert  # pylint: disable=protected-access

    def failing(saved_model, fmt, images):
        if fmt == "tflite_dynamic":  # the converter's own shape of error: MLIR diagnostics, many lines
            raise RuntimeError("<unknown>:0: error: loc(fused[\"StatelessRandomUniformV2:\"]): 'tf.StatelessRandom"
                               "UniformV2' op is neither a custom op nor a flex op\n<unknown>:0: note: see current "
                               "operation\n" + "noise\n" * 150)
        return convert(saved_model, fmt, images)

    monkeypatch.setattr(export, "_convert", failing)
    entries = export.export_and_verify(model, str(tmp_path), FORMATS, test, calibration)
    assert entries["tflite_dynamic"] == {"error": "conversion failed: loc(fused[\"StatelessRandomUniformV2:\"]): "
                                                  "'tf.StatelessRandomUniformV2' op is neither a custom op nor a flex op"}
    assert not os.path.exists(tmp_path / "digits_cnn_dynamic.tflite")
    for fmt in ("savedmodel", "tflite", "tflite_int8"):
        assert "error" not in entries[fmt] and os.path.exists(entries[fmt]["path"])


def test_a_runtime_that_aborts_fails_that_file_and_keeps_the_others(digits, tmp_path, monkeypatch):
    """LiteRT aborting on a file (a keras_hub ResNetV2's int8 file did) takes down only the child running it."""
    model, test, calibration = digits
    command = export.child_command
    monkeypatch.setattr(export, "child_command", lambda path, xnnpack=True: [sys.executable, "-c", "import os; os.abort()"]
                        if path.endswith("_int8.tflite") else command(path, xnnpack))
    entries = export.export_and_verify(model, str(tmp_path), FORMATS, test, calibration)
    assert entries["tflite_int8"]["error"].startswith("could not be run: LiteRT stopped with SIGABRT")
    assert os.path.exists(entries["tflite_int8"]["path"])
    for fmt in ("savedmodel", "tflite", "tflite_dynamic"):
        assert "error" not in entries[fmt]


def test_a_file_the_xnnpack_delegate_refuses_is_verified_on_the_builtin_kernels(digits, tmp_path, monkeypatch):
    """LiteRT's XNNPACK delegate refuses some int8 files ("failed to prepare"): the file is run again without it,
    verified there, and its entry says how to run it."""
    model, test, calibration = digits
    command = export.child_command
    refusal = ("import sys; sys.exit('RuntimeError: failed to create XNNPACK runtimeNode number 67 "
               "(TfLiteXNNPackDelegate) failed to prepare.')")
    started = []

    def child(path, xnnpack=True):
        started.append((os.path.basename(path), xnnpack))
        return [sys.executable, "-c", refusal] if path.endswith("_int8.tflite") and xnnpack else command(path, xnnpack)

    monkeypatch.setattr(export, "child_command", child)
    entries = export.export_and_verify(model, str(tmp_path), ["tflite", "tflite_int8"], test, calibration)
    assert started == [("digits_cnn.tflite", True), ("digits_cnn_int8.tflite", True),
                       ("digits_cnn_int8.tflite", False)]
    int8 = entries["tflite_int8"]
    assert "error" not in int8 and abs(int8["accuracy"] - entries["tflite"]["accuracy"]) <= export.MAX_ACCURACY_GAP
    assert "failed to prepare" in int8["runtime"] and "BUILTIN_WITHOUT_DEFAULT_DELEGATES" in int8["runtime"]
    assert "runtime" not in entries["tflite"]


def test_a_file_computing_another_function_fails_verification(digits, tmp_path):
    model, test, _ = digits
    other = keras.models.clone_model(model)  # same architecture, untrained weights
    paths = export.export_model(other, str(tmp_path), ["savedmodel", "tflite"])
    report = export.verify(paths, model, test)
    for fmt in ("savedmodel", "tflite"):
        assert report[fmt]["agreement"] < 0.5
        assert report[fmt]["error"].startswith("failed verification: accuracy") and "(needs 99%)" in report[fmt]["error"]


def test_the_savedmodel_runs_in_inference_mode_even_with_a_resizing_layer(tmp_path):
    """Keras' model.export runs BatchNorm on batch statistics when a Resizing layer is inside; ours does not."""
    x = keras.Input((16, 16, 3))
    y = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(keras.layers.Resizing(8, 8)(x)))
    model = keras.Model(x, keras.layers.Dense(3)(keras.layers.Flatten()(y)))
    rng = np.random.RandomState(0)
    model.layers[3].set_weights([np.ones(4), np.zeros(4), rng.normal(3, 1, 4), rng.uniform(0.01, 0.1, 4)])
    images = rng.normal(size=(64, 16, 16, 3)).astype("float32")
    test = tf.data.Dataset.from_tensor_slices((images, np.zeros(64, np.int32))).batch(32)
    paths = export.export_model(model, str(tmp_path), ["savedmodel", "tflite"])
    loaded = tf.saved_model.load(paths["savedmodel"])
    np.testing.assert_allclose(loaded.serve(tf.constant(images[:32])).numpy(), model(images[:32], training=False),
                               rtol=1e-4, atol=1e-4)
    report = export.verify(paths, model, test)
    assert report["savedmodel"]["agreement"] == report["tflite"]["agreement"] == 1.0


def test_augmentation_layers_are_left_out_of_the_model_to_deploy(tmp_path):
    x = keras.Input((16, 16, 3))
    y = keras.layers.RandomRotation(0.1)(keras.layers.RandomFlip()(x))
    y = keras.layers.Conv2D(4, 3, name="stem")(keras.layers.RandomContrast(0.2)(y))
    y = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Conv2D(6, 3, name="body")(y)))
    model = keras.Model(x, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(y)))
    trace = graph.trace(model)
    assert trace.group_names == ("body",)
    deployed = slimming.slim_model(trace, {}, inference=True)
    assert not [layer for layer in deployed.layers if type(layer).__name__.startswith("Random")]
    images = np.random.RandomState(0).normal(size=(8, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(deployed(images, training=False), model(images, training=False), rtol=1e-5, atol=1e-5)
    test = tf.data.Dataset.from_tensor_slices((images, np.zeros(8, np.int32))).batch(8)
    entries = export.export_and_verify(deployed, str(tmp_path), ["savedmodel", "tflite"], test)
    assert entries["tflite"]["agreement"] == 1.0 and "error" not in entries["tflite"]


def test_a_model_of_several_inputs_and_outputs_is_exported_and_verified_output_by_output(tmp_path):
    """An image and integer tokens in, a class and a value out: each file maps inputs and outputs by name (TFLite
    orders its tensors otherwise), float files compute the model's outputs, the int8 file keeps tokens integers."""
    from hsd_tf import architectures, task as task_lib  # pylint: disable=import-outside-toplevel

    image, tokens = keras.Input((8, 8, 3), name="image"), keras.Input((6,), dtype="int32", name="tokens")
    y = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu")(image))
    t = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(20, 4)(tokens))
    joined = keras.layers.Concatenate()([y, t])
    model = keras.Model([image, tokens], [keras.layers.Dense(3, activation="softmax", name="kind")(joined),
                                          keras.layers.Dense(1, name="size")(joined)])
    model.compile("adam", ["sparse_categorical_crossentropy", "mse"], metrics=[["accuracy"], ["mae"]])
    rng = np.random.RandomState(0)
    images, words = rng.normal(size=(40, 8, 8, 3)).astype("float32"), rng.randint(0, 20, size=(40, 6)).astype("int32")
    targets = (rng.randint(0, 3, 40).astype("int32"), rng.normal(size=(40, 1)).astype("float32"))
    test = tf.data.Dataset.from_tensor_slices(((images, words), targets)).batch(16)
    task = task_lib.from_model(model, architectures.without_final_activations(model)[1], test.element_spec[1])
    entries = export.export_and_verify(model, str(tmp_path), FORMATS, test, [images[:20], words[:20]], task=task)
    assert not [e["error"] for e in entries.values() if "error" in e], entries
    for fmt in ("savedmodel", "tflite"):
        assert entries[fmt]["output_gap"] < 1e-5 and set(entries[fmt]["metrics"]) == {"kind_accuracy", "size_mae"}
    loaded = tf.saved_model.load(entries["savedmodel"]["path"])
    served = loaded.serve(tf.constant(images[:4]), tf.constant(words[:4]))
    np.testing.assert_allclose(served["size"], model([images[:4], words[:4]])[1], rtol=1e-5, atol=1e-6)
    interpreter = export.TFLiteModel(entries["tflite_int8"]["path"])
    assert {d["dtype"] for d in interpreter.runner.get_input_details().values()} == {np.int8, np.int32}


def test_a_classifiers_labels_are_class_indices_whether_its_targets_are_indices_or_one_hot():
    """A model compiled with categorical cross-entropy (the keras.io convnet) has one-hot targets: its exported
    files are checked against their argmax, not refused with a broadcast error after training."""
    classes = np.array([2, 0, 1, 2])
    images = np.zeros((4, 3), np.float32)
    for targets in (classes, classes[:, None], np.eye(3, dtype=np.float32)[classes]):
        dataset = tf.data.Dataset.from_tensor_slices((images, targets)).batch(3)
        np.testing.assert_array_equal(export.labels_of(dataset), classes)
