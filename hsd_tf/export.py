"""Export of slim models: SavedModel, TFLite (float32, dynamic-range, int8), each verified on its own.

The SavedModel's `serve` endpoint calls the model in inference mode
explicitly: Keras' own `model.export` traces `model(x)`, which runs
BatchNormalization on batch statistics when the model holds a Resizing
layer (seen: an exported student agreeing with its Keras model on 36.7% of
the test split). TFLite files come from the TFLite converter reading that
SavedModel, restricted to builtin ops (no Flex ops, so the files run on the
plain LiteRT runtime). Full-integer int8 calibrates on a representative sample
of the training split and has int8 input and output.

Every file is then run on the test split against the Keras model: a
SavedModel in this process, a TFLite file in a child process with LiteRT
alone, so that a runtime that aborts (LiteRT verifying a file it cannot run)
fails that file and nothing else. A file LiteRT's default XNNPACK delegate
refuses ("failed to prepare", seen on int8 files of some slim students with
random weights) is run again on LiteRT's built-in kernels; if it verifies there,
it passes with a "runtime" note saying how to run it. A file fails verification when its accuracy
is more than 1 point off the Keras model's, or, for the float formats (which
must compute the same function), when its top-1 class agrees with the Keras
model's on fewer than 99% of the examples. `export_and_verify` handles each format on
its own: one that cannot be converted or fails verification is reported with
why, and the others are kept.
"""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np

from hsd_tf import quiet

FORMATS = ("savedmodel", "tflite", "tflite_dynamic", "tflite_int8")
_TFLITE_SUFFIX = {"tflite": "", "tflite_dynamic": "_dynamic", "tflite_int8": "_int8"}
MIN_AGREEMENT = 0.99
MAX_ACCURACY_GAP = 0.01
# Quantized files may flip the top-1 class of near ties (a ResNet50's int8 file commonly agrees with its float
# model on ~95% of ImageNet), so only their accuracy is held to the Keras model's; float files must also agree.
QUANTIZED = ("tflite_dynamic", "tflite_int8")


class ExportError(RuntimeError):
    """Some exported files could not be made or failed verification; everything else was written.

    Attributes:
        failures: One line per failed file: the model, the format and why.
        results: The run's results (results.json), every other export in it.
    """

    def __init__(self, failures: List[str], results: dict):
        super().__init__("\n".join(failures))
        self.failures = failures
        self.results = results


def validate_formats(formats: Iterable[str]) -> None:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"Unknown export format; expected some of {', '.join(FORMATS)}. Received: {unknown}")


def write_savedmodel(model, path: str) -> None:
    """A SavedModel whose `serve` endpoint is the model in inference mode."""
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel  (hsd_tf.config reads FORMATS without it)

    archive = keras.export.ExportArchive()
    archive.track(model)
    signature = [tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]), tf.float32)]
    archive.add_endpoint("serve", lambda images: model(images, training=False), input_signature=signature)
    with quiet.native_stderr_silenced():
        archive.write_out(path, verbose=False)


def tflite_path(directory: str, name: str, fmt: str) -> str:
    return os.path.join(directory, f"{name}{_TFLITE_SUFFIX[fmt]}.tflite")


def export_model(model, directory: str, formats: Iterable[str], representative_images=None) -> Dict[str, str]:
    """Writes a Keras model in the requested formats, files named after the model.

    Args:
        model: A plain Keras model from images to logits.
        directory: Output folder.
        formats: Some of `FORMATS`.
        representative_images: float32 images (N, H, W, C) for int8 calibration.

    Returns:
        Format -> path written.

    Raises:
        Whatever the SavedModel writer or the converter raises, at the first failure.
    """
    formats = list(formats)
    validate_formats(formats)
    os.makedirs(directory, exist_ok=True)
    saved, scratch = _savedmodel_path(model, directory, "savedmodel" in formats)
    paths = {"savedmodel": saved} if "savedmodel" in formats else {}
    try:
        write_savedmodel(model, saved)
        for fmt in formats:
            if fmt != "savedmodel":
                paths[fmt] = _write_tflite(saved, tflite_path(directory, model.name, fmt), fmt, representative_images)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return paths


def export_and_verify(model, directory: str, formats: Iterable[str], dataset, representative_images=None,
                      on_entry: Optional[Callable[[str, dict], None]] = None,
                      reference: Optional["Reference"] = None) -> Dict[str, dict]:
    """Writes and verifies each format on its own; a failure is reported and the other formats are kept.

    Args:
        model: A plain Keras model from images to logits.
        directory: Output folder.
        formats: Some of `FORMATS`.
        dataset: Evaluation (images, labels) batches.
        representative_images: float32 images for int8 calibration.
        on_entry: Called with (format, entry) as soon as each format is done, so
            that a caller can record it before the next, riskier, conversion.
        reference: The model's `Reference` on `dataset`, if already computed.

    Returns:
        Format -> the entry of `verify`; a format that could not be written has
        {"error": why} instead, and one that failed verification its figures and an "error".
    """
    formats = list(formats)
    validate_formats(formats)
    os.makedirs(directory, exist_ok=True)
    reference = reference or Reference(model, dataset)
    entries = {}

    def done(fmt, entry):
        entries[fmt] = entry
        if on_entry:
            on_entry(fmt, entry)

    saved, scratch = _savedmodel_path(model, directory, "savedmodel" in formats)
    try:
        try:
            write_savedmodel(model, saved)
        except Exception as error:  # pylint: disable=broad-except  (reported per format, never lost)
            for fmt in formats:
                done(fmt, {"error": f"the SavedModel every format is made from could not be written: {why(error)}"})
            return entries
        for fmt in formats:
            try:
                path = saved if fmt == "savedmodel" else _write_tflite(
                    saved, tflite_path(directory, model.name, fmt), fmt, representative_images)
            except Exception as error:  # pylint: disable=broad-except
                done(fmt, {"error": f"conversion failed: {why(error)}"})
                continue
            done(fmt, reference.check(fmt, path))
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return entries


def verify(paths: Dict[str, str], keras_model, dataset) -> Dict[str, dict]:
    """Runs every exported file on a dataset against the Keras model.

    Args:
        paths: Format -> path, from `export_model`.
        keras_model: The model that was exported.
        dataset: Evaluation (images, labels) batches.

    Returns:
        Format -> {"path", "bytes", "accuracy", "agreement"}; "keras" holds the
        Keras model's own accuracy. Agreement is the fraction of examples on
        which the file's top-1 class equals the Keras model's. A file that
        fails (agreement under 99%, accuracy more than 1 point off, or a
        runtime that crashes on it) also has an "error" saying why.
    """
    reference = Reference(keras_model, dataset)
    report = {"keras": {"accuracy": reference.accuracy}}
    report.update((fmt, reference.check(fmt, path)) for fmt, path in paths.items())
    return report


class Reference:
    """The Keras model's labels, top-1 predictions and accuracy on a dataset (inference mode), to check files
    against."""

    def __init__(self, keras_model, dataset):
        self.dataset = dataset
        self.labels = labels_of(dataset)
        self.predicted = predictions(lambda x: keras_model(x, training=False), dataset)
        self.accuracy = float(np.mean(self.predicted == self.labels))

    def check(self, fmt: str, path: str) -> dict:
        runtime = None
        try:
            if fmt == "savedmodel":
                import tensorflow as tf  # pylint: disable=import-outside-toplevel

                loaded = tf.saved_model.load(path)
                predicted = predictions(lambda x, f=loaded.serve: f(tf.constant(x)), self.dataset)
            else:
                predicted, runtime = self._run_tflite(path)
        except Exception as error:  # pylint: disable=broad-except
            return {"path": path, "bytes": _size(path), "error": f"could not be run: {why(error)}"}
        entry = {"path": path, "bytes": _size(path), "accuracy": float(np.mean(predicted == self.labels)),
                 "agreement": float(np.mean(predicted == self.predicted))}
        if runtime:
            entry["runtime"] = runtime
        lossless = fmt not in QUANTIZED
        if (lossless and entry["agreement"] < MIN_AGREEMENT) or abs(entry["accuracy"] - self.accuracy) > MAX_ACCURACY_GAP:
            entry["error"] = (f"failed verification: accuracy {entry['accuracy']:.4f} against the Keras model's "
                              f"{self.accuracy:.4f} (needs within {MAX_ACCURACY_GAP:.2f}), top-1 class the same as the "
                              f"Keras model's on {entry['agreement']:.1%} of the test examples"
                              + (f" (needs {MIN_AGREEMENT:.0%})" if lossless else ""))
        return entry

    def _run_tflite(self, path: str):
        """Top-1 predictions of a .tflite file, and a note when only LiteRT's built-in kernels could run it."""
        try:
            with _ChildInterpreter(path) as interpreter:
                return predictions(interpreter, self.dataset), None
        except RuntimeError as error:
            if "XNNPACK" not in str(error):
                raise
            refused = str(error)
        with _ChildInterpreter(path, xnnpack=False) as interpreter:
            predicted = predictions(interpreter, self.dataset)
        return predicted, ("LiteRT's built-in kernels: the XNNPACK delegate cannot run this file "
                           f"({refused[:160]}); run it with experimental_op_resolver_type="
                           "OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES")


def _savedmodel_path(model, directory: str, keep: bool):
    """(path, scratch folder or None): the SavedModel in `directory` when asked for, else in a scratch folder."""
    if keep:
        return os.path.join(directory, f"{model.name}_savedmodel"), None
    scratch = tempfile.mkdtemp()
    return os.path.join(scratch, "savedmodel"), scratch


def _write_tflite(saved_model: str, path: str, fmt: str, representative_images) -> str:
    content = _convert(saved_model, fmt, representative_images)
    with open(path, "wb") as f:
        f.write(content)
    return path


def _convert(saved_model: str, fmt: str, representative_images) -> bytes:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

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


def why(error: BaseException) -> str:
    """One line of an error: the converter's first diagnostic ("error: 'tf.X' op is neither a custom op ..."),
    else the message's first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    diagnostics = [line.split("error: ", 1)[1] for line in lines if "error: " in line]
    text = diagnostics[0] if diagnostics else (lines[0] if lines else type(error).__name__)
    return text[:300]


class TFLiteModel:
    """A .tflite file run with LiteRT's interpreter; float32 images in, float32 logits out.

    Args:
        path: The .tflite file.
        num_threads: Interpreter threads (None: the runtime's default).
        xnnpack: Whether LiteRT applies its default delegate (XNNPACK); False runs its built-in kernels.
    """

    def __init__(self, path: str, num_threads: Optional[int] = None, xnnpack: bool = True):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType  # pylint: disable=import-outside-toplevel

        resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        with quiet.native_stderr_silenced():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            self.interpreter = Interpreter(model_path=path, num_threads=num_threads,
                                           experimental_op_resolver_type=resolver)
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


# The child: reads image batches from stdin, writes top-1 classes to its original stdout (`send_array`).
# Native code's own prints go to stderr, so they cannot corrupt the stream.
_CHILD = """
import os, sys
import numpy as np
stream = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
from hsd_tf.export import TFLiteModel
model = TFLiteModel(sys.argv[1], xnnpack=sys.argv[2] == "xnnpack")
from hsd_tf.export import receive_array, send_array
while True:
    images = receive_array(sys.stdin.buffer)
    if images is None:
        break
    send_array(stream, np.argmax(model(images), axis=-1))
"""


def child_command(path: str, xnnpack: bool = True) -> List[str]:
    """The command of the child process that runs a .tflite file for `_ChildInterpreter`."""
    return [sys.executable, "-c", _CHILD, path, "xnnpack" if xnnpack else "builtin"]


class _ChildInterpreter:
    """A .tflite file run by LiteRT in a child process: top-1 classes of image batches.

    A runtime that aborts or crashes takes only the child down; the error then
    names the signal and the child's last line of stderr.
    """

    def __init__(self, path: str, xnnpack: bool = True):
        self.path = path
        self.log = tempfile.TemporaryFile()
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        self.process = subprocess.Popen(child_command(path, xnnpack), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.log, env=env)

    def __enter__(self):
        return self

    def __call__(self, images) -> np.ndarray:
        try:
            send_array(self.process.stdin, np.asarray(images, np.float32))
            found = receive_array(self.process.stdout)
        except OSError:  # a closed pipe: the child is gone
            found = None
        if found is None:
            raise RuntimeError(self._death())
        return found

    def _death(self) -> str:
        code = self.process.wait()
        self.log.seek(0)
        lines = [line.strip() for line in self.log.read().decode(errors="replace").splitlines() if line.strip()]
        last = f" ({lines[-1][:200]})" if lines else ""
        if code < 0:
            return f"LiteRT stopped with {signal.Signals(-code).name} while running the file{last}"
        return f"the LiteRT process exited with status {code}{last}"

    def __exit__(self, *exc):
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait()
        self.log.close()


def send_array(stream, array: np.ndarray) -> None:
    """Writes an array to a pipe: header length, a JSON header (dtype, shape), the raw bytes."""
    array = np.ascontiguousarray(array)
    header = json.dumps({"dtype": array.dtype.str, "shape": array.shape}).encode()
    stream.write(struct.pack("<I", len(header)) + header + array.tobytes())
    stream.flush()


def receive_array(stream) -> Optional[np.ndarray]:
    """Reads an array `send_array` wrote; None at the end of the stream (or if it was cut short)."""
    size = _read_exactly(stream, 4)
    header = size and _read_exactly(stream, struct.unpack("<I", size)[0])
    if not header:
        return None
    spec = json.loads(header)
    dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
    data = _read_exactly(stream, dtype.itemsize * int(np.prod(shape)))
    return None if data is None else np.frombuffer(data, dtype).reshape(shape)


def _read_exactly(stream, count: int) -> Optional[bytes]:
    chunks, left = [], count
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def predictions(model, dataset) -> np.ndarray:
    """Argmax predictions of a callable model over an (images, labels) dataset."""
    outputs = [np.asarray(model(images.numpy())) for images, _ in dataset]
    return np.concatenate([o if o.ndim == 1 else np.argmax(o, axis=-1) for o in outputs])


def labels_of(dataset) -> np.ndarray:
    return np.concatenate([labels.numpy() for _, labels in dataset])


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
