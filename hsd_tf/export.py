"""Export of slim models: SavedModel, TFLite (float32, dynamic-range, int8), verified.

SavedModel comes from Keras' `model.export`; TFLite from the TFLite converter
reading that SavedModel, restricted to builtin ops (no Flex ops, so the files
run on the plain LiteRT runtime). Full-integer int8 calibrates on a
representative sample of the training split and has int8 input and output.
Every file is then run with LiteRT's interpreter on the test split.
"""

import os
import shutil
import tempfile
from typing import Dict, Iterable, Optional

import numpy as np

from hsd_tf import quiet

FORMATS = ("savedmodel", "tflite", "tflite_dynamic", "tflite_int8")
_TFLITE_SUFFIX = {"tflite": "", "tflite_dynamic": "_dynamic", "tflite_int8": "_int8"}


def validate_formats(formats: Iterable[str]) -> None:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"Unknown export format; expected some of {', '.join(FORMATS)}. Received: {unknown}")


def export_model(model, directory: str, formats: Iterable[str], representative_images=None) -> Dict[str, str]:
    """Writes a Keras model in the requested formats, files named after the model.

    Args:
        model: A plain Keras model from images to logits.
        directory: Output folder.
        formats: Some of `FORMATS`.
        representative_images: float32 images (N, H, W, C) for int8 calibration.

    Returns:
        Format -> path written.
    """
    formats = list(formats)
    validate_formats(formats)
    os.makedirs(directory, exist_ok=True)
    paths = {}
    scratch = None
    if "savedmodel" in formats:
        saved = os.path.join(directory, f"{model.name}_savedmodel")
        paths["savedmodel"] = saved
    else:
        scratch = tempfile.mkdtemp()
        saved = os.path.join(scratch, "savedmodel")
    model.export(saved, format="tf_saved_model", verbose=False)
    try:
        for fmt in formats:
            if fmt == "savedmodel":
                continue
            path = os.path.join(directory, f"{model.name}{_TFLITE_SUFFIX[fmt]}.tflite")
            with open(path, "wb") as f:
                f.write(_convert(saved, fmt, representative_images))
            paths[fmt] = path
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return paths


def _convert(saved_model: str, fmt: str, representative_images) -> bytes:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel  (hsd_tf.config reads FORMATS without it)

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if fmt == "tflite_dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif fmt == "tflite_int8":
        if representative_images is None:
            raise ValueError("tflite_int8 needs representative_images for calibration.")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in representative_images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with quiet.native_stderr_silenced():  # the converter's C++ settings dump, "fully_quantize: 0, ..."
        return converter.convert()


class TFLiteModel:
    """A .tflite file run with LiteRT's interpreter; float32 images in, float32 logits out.

    Args:
        path: The .tflite file.
        num_threads: Interpreter threads (None: the runtime's default).
    """

    def __init__(self, path: str, num_threads: Optional[int] = None):
        from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel

        with quiet.native_stderr_silenced():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
            self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self._batch = None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if self._batch != images.shape:
            self.interpreter.resize_tensor_input(self._input["index"], images.shape)
            self.interpreter.allocate_tensors()
            self._batch = images.shape
        if self._input["dtype"] == np.int8:
            scale, zero_point = self._input["quantization"]
            images = np.clip(np.round(images / scale + zero_point), -128, 127).astype(np.int8)
        self.interpreter.set_tensor(self._input["index"], images)
        self.interpreter.invoke()
        logits = self.interpreter.get_tensor(self._output["index"])
        if self._output["dtype"] == np.int8:
            scale, zero_point = self._output["quantization"]
            logits = (logits.astype(np.float32) - zero_point) * scale
        return logits


def predictions(model, dataset) -> np.ndarray:
    """Argmax predictions of a callable model over an (images, labels) dataset."""
    return np.concatenate([np.argmax(np.asarray(model(images.numpy())), axis=-1) for images, _ in dataset])


def labels_of(dataset) -> np.ndarray:
    return np.concatenate([labels.numpy() for _, labels in dataset])


def verify(paths: Dict[str, str], keras_model, dataset) -> Dict[str, dict]:
    """Runs every exported file on a dataset against the Keras model.

    Args:
        paths: Format -> path, from `export_model`.
        keras_model: The model that was exported.
        dataset: Evaluation (images, labels) batches.

    Returns:
        Format -> {"path", "bytes", "accuracy", "agreement"}; "keras" holds the
        Keras model's own accuracy. Agreement is the fraction of examples on
        which the file's top-1 class equals the Keras model's.
    """
    labels = labels_of(dataset)
    reference = predictions(lambda x: keras_model(x, training=False), dataset)
    report = {"keras": {"accuracy": float(np.mean(reference == labels))}}
    for fmt, path in paths.items():
        if fmt == "savedmodel":
            import tensorflow as tf  # pylint: disable=import-outside-toplevel

            loaded = tf.saved_model.load(path)
            predicted = predictions(lambda x, f=loaded.serve: f(tf.constant(x)), dataset)
        else:
            predicted = predictions(TFLiteModel(path), dataset)
        report[fmt] = {
            "path": path,
            "bytes": _size(path),
            "accuracy": float(np.mean(predicted == labels)),
            "agreement": float(np.mean(predicted == reference)),
        }
    return report


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def representative_sample(dataset, count: int = 200) -> np.ndarray:
    """Up to `count` images from a batched dataset, for int8 calibration."""
    images = []
    for batch, _ in dataset:
        images.append(batch.numpy())
        if sum(len(b) for b in images) >= count:
            break
    return np.concatenate(images)[:count]
