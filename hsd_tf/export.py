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
import re
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
# A model of another task: its float files' outputs within this of the Keras model's, relative to each output's
# largest value (float32 rounding in TFLite is below 1e-5 on every model measured), and a primary metric where lower
# is better (an error) within this fraction of the Keras model's.
MAX_OUTPUT_GAP = 1e-3
MAX_RELATIVE_GAP = 0.02
# Quantized files may flip the top-1 class of near ties (a ResNet50's int8 file commonly agrees with its float
# model on ~95% of ImageNet), so only their accuracy is held to the Keras model's; float files must also agree.
QUANTIZED = ("tflite_dynamic", "tflite_int8")


class ExportError(RuntimeError):
    """Some exported files could not be made or failed verification; everything else was written.

    Attributes:
        failures: One line per failed file: the model, the format and why.
        results: The run's results (results.json), every other export in it.
        student: The slim student the run built (a Keras model), which no failed file loses.
    """

    def __init__(self, failures: List[str], results: dict, student=None):
        super().__init__("\n".join(failures))
        self.failures = failures
        self.results = results
        self.student = student


def validate_formats(formats: Iterable[str]) -> None:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"Unknown export format; expected some of {', '.join(FORMATS)}. Received: {unknown}")


def write_savedmodel(model, path: str, batch: Optional[int] = None) -> None:
    """A SavedModel whose `serve` endpoint is the model in inference mode, for batches of any size (or `batch`).

    One input and one output: a tensor in, a tensor out, as always. Several:
    the inputs named as the model's (`signature_names`), and a dict of the
    outputs by name, so that a SavedModel or TFLite signature maps each by name
    (TFLite orders its tensors otherwise than the model).
    """
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel  (hsd_tf.config reads FORMATS without it)

    archive = keras.export.ExportArchive()
    archive.track(model)
    input_names, output_names = signature_names(model)
    signature = [tf.TensorSpec((batch,) + tuple(x.shape[1:]), x.dtype, name=name)
                 for x, name in zip(model.inputs, input_names)]
    if len(model.inputs) == 1 and len(model.outputs) == 1:
        archive.add_endpoint("serve", lambda inputs: model(inputs, training=False), input_signature=signature)
    else:
        def serve(*inputs):
            outputs = keras.tree.flatten(model(list(inputs) if len(inputs) > 1 else inputs[0], training=False))
            return dict(zip(output_names, outputs))

        archive.add_endpoint("serve", serve, input_signature=signature)
    with quiet.native_stderr_silenced():
        archive.write_out(path, verbose=False)


def signature_names(model):
    """(input names, output names) of the exported signature: the model's own (`hsd_tf.task.output_keys`), made
    valid signature keys."""
    from hsd_tf.task import output_keys  # pylint: disable=import-outside-toplevel  (Keras: not at import time)

    def key(name):
        return re.sub(r"[^A-Za-z0-9_]", "_", name)
    outputs, _ = output_keys(model, len(model.outputs))
    return [key(x.name) for x in model.inputs], [key(name) for name in outputs]


def tflite_convertible(model) -> Optional[str]:
    """Why the float32 TFLite converter refuses `model` (one line: the op it has no kernel for), or None.

    A run tries its rehearsal student before training (`hsd_tf.training`), so
    that a model TFLite cannot hold (a 3-D max pool has no TFLite kernel) is
    refused in one line rather than after hours of training.
    """
    scratch = tempfile.mkdtemp()
    try:
        write_savedmodel(model, os.path.join(scratch, "savedmodel"))
        _write_tflite(model, os.path.join(scratch, "savedmodel"), os.path.join(scratch, "model.tflite"), "tflite", None)
    except Exception as error:  # pylint: disable=broad-except  (the converter's diagnostic, in one line)
        return why(error)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return None


def tflite_path(directory: str, name: str, fmt: str) -> str:
    return os.path.join(directory, f"{name}{_TFLITE_SUFFIX[fmt]}.tflite")


def export_model(model, directory: str, formats: Iterable[str], representative_images=None) -> Dict[str, str]:
    """Writes a Keras model in the requested formats, files named after the model.

    Args:
        model: A plain Keras model.
        directory: Output folder.
        formats: Some of `FORMATS`.
        representative_images: Inputs for int8 calibration: an array (N, ...), or a list of one per model input.

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
                paths[fmt] = tflite_path(directory, model.name, fmt)
                _write_tflite(model, saved, paths[fmt], fmt, _calibration(model, representative_images))
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return paths


def export_and_verify(model, directory: str, formats: Iterable[str], dataset, representative_images=None,
                      on_entry: Optional[Callable[[str, dict], None]] = None,
                      reference: Optional["Reference"] = None, task=None) -> Dict[str, dict]:
    """Writes and verifies each format on its own; a failure is reported and the other formats are kept.

    Args:
        model: A plain Keras model.
        directory: Output folder.
        formats: Some of `FORMATS`.
        dataset: Evaluation (inputs, targets) batches.
        representative_images: Inputs for int8 calibration (`representative_sample`).
        on_entry: Called with (format, entry) as soon as each format is done, so
            that a caller can record it before the next, riskier, conversion.
        reference: The model's `Reference` on `dataset`, if already computed.
        task: The model's `hsd_tf.task.Task` (default: a classifier).

    Returns:
        Format -> the entry of `verify`; a format that could not be written has
        {"error": why} instead, and one that failed verification its figures and an "error".
    """
    formats = list(formats)
    validate_formats(formats)
    os.makedirs(directory, exist_ok=True)
    reference = reference or Reference(model, dataset, task)
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
            note = None
            try:
                path = saved if fmt == "savedmodel" else tflite_path(directory, model.name, fmt)
                if fmt != "savedmodel":
                    note = _write_tflite(model, saved, path, fmt, _calibration(model, representative_images))
            except Exception as error:  # pylint: disable=broad-except
                done(fmt, {"error": f"conversion failed: {why(error)}"})
                continue
            done(fmt, dict(reference.check(fmt, path), **({"batch": note} if note else {})))
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return entries


def verify(paths: Dict[str, str], keras_model, dataset, task=None) -> Dict[str, dict]:
    """Runs every exported file on a dataset against the Keras model.

    Args:
        paths: Format -> path, from `export_model`.
        keras_model: The model that was exported.
        dataset: Evaluation (inputs, targets) batches.
        task: The model's `hsd_tf.task.Task` (default: a classifier).

    Returns:
        Format -> the entry of `Reference.check`; "keras" holds the Keras model's own figures.
    """
    reference = Reference(keras_model, dataset, task)
    report = {"keras": reference.figures()}
    report.update((fmt, reference.check(fmt, path)) for fmt, path in paths.items())
    return report


class Reference:
    """The Keras model's outputs and figures on a dataset (inference mode), to check files against.

    A classifier (the default) is checked as it always was: its top-1 class
    agrees with the Keras model's on at least `MIN_AGREEMENT` of the examples
    (float files) and its accuracy is within `MAX_ACCURACY_GAP`. Any other
    task: a float file's every output is within `MAX_OUTPUT_GAP` of the Keras
    model's, relative to that output's largest value, and the primary metric
    (`hsd_tf.task`) within `MAX_ACCURACY_GAP` for a metric where higher is
    better, `MAX_RELATIVE_GAP` of the Keras model's for one where lower is
    (an error); a quantized file, the metric only.

    Args:
        keras_model: The model exported (its outputs as the user's model gives them).
        dataset: Evaluation (inputs, targets) batches.
        task: The model's `hsd_tf.task.Task`; None: a classifier of one output.
    """

    def __init__(self, keras_model, dataset, task=None):
        self.dataset = dataset
        self.names = signature_names(keras_model)
        self.task = task if task is not None and not task.is_classifier else None
        from hsd_tf.graph import model_inputs  # pylint: disable=import-outside-toplevel  (TensorFlow: not at import time)

        self.outputs = outputs_of(lambda inputs: keras_model(model_inputs(inputs), training=False), dataset)
        if self.task is None:
            self.labels = labels_of(dataset)
            self.predicted = _top1(self.outputs[0])
            self.accuracy = float(np.mean(self.predicted == self.labels))
        else:
            self.metrics = self._metrics(self.outputs)

    def figures(self) -> dict:
        """The Keras model's own: its accuracy, or its metrics and primary metric."""
        if self.task is None:
            return {"accuracy": self.accuracy}
        return {"metric": self.metrics[self.task.primary], "metrics": self.metrics}

    def _metrics(self, outputs) -> dict:
        """The task's metrics of outputs (already activated) against the dataset's targets."""
        metrics = self.task.new_metrics()
        start = 0
        for batch in self.dataset:
            _, targets, weights = _unpack(batch)
            size = int(np.shape(_flat_values(targets)[0])[0])
            found = [o[start:start + size] for o in outputs]
            metrics.update_state(self.task.structured(self.task.flat(targets)), self.task.structured(found),
                                 sample_weight=weights)
            start += size
        return {name: float(value) for name, value in metrics.result().items()}

    def check(self, fmt: str, path: str) -> dict:
        runtime = None
        try:
            if fmt == "savedmodel":
                import tensorflow as tf  # pylint: disable=import-outside-toplevel

                loaded = tf.saved_model.load(path)  # held: its variables live as long as it does
                found = outputs_of(lambda inputs: loaded.serve(*[tf.constant(x) for x in _flat_inputs(inputs)]),
                                   self.dataset)
            else:
                found, runtime = self._run_tflite(path)
        except Exception as error:  # pylint: disable=broad-except
            return {"path": path, "bytes": _size(path), "error": f"could not be run: {why(error)}"}
        entry = {"path": path, "bytes": _size(path)}
        lossless = fmt not in QUANTIZED
        if self.task is None:
            predicted = _top1(found[0])
            entry.update(accuracy=float(np.mean(predicted == self.labels)),
                         agreement=float(np.mean(predicted == self.predicted)))
            failed = ((lossless and entry["agreement"] < MIN_AGREEMENT)
                      or abs(entry["accuracy"] - self.accuracy) > MAX_ACCURACY_GAP)
            why_failed = (f"accuracy {entry['accuracy']:.4f} against the Keras model's {self.accuracy:.4f} (needs "
                          f"within {MAX_ACCURACY_GAP:.2f}), top-1 class the same as the Keras model's on "
                          f"{entry['agreement']:.1%} of the test examples" + (f" (needs {MIN_AGREEMENT:.0%})"
                                                                              if lossless else ""))
        else:
            metrics = self._metrics(found)
            name, value, expected = self.task.primary, metrics[self.task.primary], self.metrics[self.task.primary]
            entry.update(metric=value, metrics=metrics, output_gap=output_gap(found, self.outputs))
            allowed = (MAX_ACCURACY_GAP if self.task.higher_is_better
                       else MAX_RELATIVE_GAP * max(abs(expected), 1e-12))
            failed = abs(value - expected) > allowed or (lossless and entry["output_gap"] > MAX_OUTPUT_GAP)
            why_failed = (f"{name} {value:.4g} against the Keras model's {expected:.4g} (needs within {allowed:.3g}), "
                          f"outputs within {entry['output_gap']:.2g} of the Keras model's, relative to their largest "
                          "value" + (f" (needs {MAX_OUTPUT_GAP:g})" if lossless else ""))
        if runtime:
            entry["runtime"] = runtime
        if failed:
            entry["error"] = f"failed verification: {why_failed}"
        return entry

    def _run_tflite(self, path: str):
        """The outputs of a .tflite file, and a note when only LiteRT's built-in kernels could run it."""
        try:
            with _ChildInterpreter(path, names=self.names) as interpreter:
                return outputs_of(interpreter, self.dataset), None
        except RuntimeError as error:
            if "XNNPACK" not in str(error):
                raise
            refused = str(error)
        with _ChildInterpreter(path, xnnpack=False, names=self.names) as interpreter:
            found = outputs_of(interpreter, self.dataset)
        return found, ("LiteRT's built-in kernels: the XNNPACK delegate cannot run this file "
                       f"({refused[:160]}); run it with experimental_op_resolver_type="
                       "OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES")


def output_gap(found, expected) -> float:
    """The largest |found - expected| of an output relative to that output's largest |expected|, over the outputs."""
    return max(float(np.abs(np.asarray(f, np.float64) - np.asarray(e, np.float64)).max()
                     / max(float(np.abs(e).max()), 1e-12)) for f, e in zip(found, expected))


def _savedmodel_path(model, directory: str, keep: bool):
    """(path, scratch folder or None): the SavedModel in `directory` when asked for, else in a scratch folder."""
    if keep:
        return os.path.join(directory, f"{model.name}_savedmodel"), None
    scratch = tempfile.mkdtemp()
    return os.path.join(scratch, "savedmodel"), scratch


def _calibration(model, representative_images):
    """int8 calibration inputs as `_convert` takes them: the array of a one-input model, else a dict by the
    signature's input names."""
    if representative_images is None or not isinstance(representative_images, (list, tuple)):
        return representative_images
    return dict(zip(signature_names(model)[0], representative_images))


def _write_tflite(model, saved_model: str, path: str, fmt: str, representative_images) -> Optional[str]:
    """Converts the SavedModel of `model` to `path`; None, or a note when only a signature of batch 1 converts.

    Where the model's graph leaves a spatial size unknown for a batch of unknown size (Keras' UpSampling2D repeats
    with dynamic shapes; the convs after it then have no static height), the converter refuses those ops. A
    signature of batch 1 gives every shape statically; the file then takes one example at a time
    (`TFLiteModel` feeds it so), as a phone runs it.
    """
    try:
        content = _convert(saved_model, fmt, representative_images)
        note = None
    except Exception as error:  # pylint: disable=broad-except  (the dynamic-batch file's error, if batch 1 fails too)
        scratch = tempfile.mkdtemp()
        try:
            write_savedmodel(model, os.path.join(scratch, "savedmodel"), batch=1)
            content = _convert(os.path.join(scratch, "savedmodel"), fmt, representative_images)
        except Exception:  # pylint: disable=broad-except
            raise error from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        note = f"1: a batch of any size did not convert ({why(error)}); the file takes one example at a time"
    with open(path, "wb") as f:
        f.write(content)
    return note


def _convert(saved_model: str, fmt: str, representative_images) -> bytes:
    """The .tflite bytes of a SavedModel. `representative_images`: for int8 calibration, an array of inputs, or a
    dict of them by signature input name (a model of several inputs: TFLite orders its tensors otherwise)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if fmt == "tflite_dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif fmt == "tflite_int8":
        if representative_images is None:
            raise ValueError("tflite_int8 needs representative_images for calibration.")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if isinstance(representative_images, dict):
            count = len(next(iter(representative_images.values())))
            converter.representative_dataset = lambda: ({name: values[i:i + 1] for name, values in
                                                         representative_images.items()} for i in range(count))
        else:
            converter.representative_dataset = lambda: ([image[None]] for image in representative_images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8  # float inputs only: integer tokens stay integers
        converter.inference_output_type = tf.int8
    with quiet.native_stderr_silenced():  # the converter's C++ settings dump, "fully_quantize: 0, ..."
        return converter.convert()


def why(error: BaseException) -> str:
    """One line of an error: the converter's first diagnostic ("error: 'tf.X' op is neither a custom op ..."),
    else the whole message on one line (Keras' own explain themselves over several)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    diagnostics = [line.split("error: ", 1)[1] for line in lines if "error: " in line]
    if diagnostics:
        text = diagnostics[0]
        if len(text) > 300 and text.startswith("loc("):  # a long location first: what it says comes after it
            depth = 0
            for i, character in enumerate(text):
                depth += {"(": 1, ")": -1}.get(character, 0)
                if depth == 0 and character == ")":
                    text = text[i + 1:].lstrip(": ")
                    break
        return text[:300]
    return (" ".join(lines) if lines else type(error).__name__)[:600]


class TFLiteModel:
    """A .tflite file run with LiteRT's interpreter: float32 inputs in (integer tokens as integers), float32
    outputs out (int8 files quantized and dequantized here).

    A file of one input and one output runs on the interpreter's tensors; one of
    several, on its signature, each input and output by name, in the order of
    their names (`signature_names` makes them; TFLite orders its tensors
    otherwise than the model).

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
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        self.runner = None
        if len(inputs) > 1 or len(outputs) > 1:
            self.runner = self.interpreter.get_signature_runner()
            self._inputs = dict(sorted(self.runner.get_input_details().items()))
            self._outputs = dict(sorted(self.runner.get_output_details().items()))
        else:
            self._input, self._output = inputs[0], outputs[0]
        # A file converted for batch 1 (`_write_tflite`) takes one example at a time.
        self.one_at_a_time = all(detail["shape_signature"][0] == 1 for detail in inputs)
        self._batch = None

    def __call__(self, *inputs: np.ndarray):
        """One array per input (in the order of the signature's input names) -> the output, or one per output
        (in the order of their names)."""
        if self.one_at_a_time and len(inputs[0]) != 1:
            results = [self(*[x[i:i + 1] for x in inputs]) for i in range(len(inputs[0]))]
            if isinstance(results[0], list):
                return [np.concatenate(parts) for parts in zip(*results)]
            return np.concatenate(results)
        if self.runner is not None:
            feed = {name: _quantized(x, detail) for (name, detail), x in zip(self._inputs.items(), inputs)}
            found = self.runner(**feed)
            return [_dequantized(found[name], detail) for name, detail in self._outputs.items()]
        images = _quantized(inputs[0], self._input)
        if self._batch != images.shape:
            self.interpreter.resize_tensor_input(self._input["index"], images.shape)
            self.interpreter.allocate_tensors()
            self._batch = images.shape
        self.interpreter.set_tensor(self._input["index"], images)
        self.interpreter.invoke()
        return _dequantized(self.interpreter.get_tensor(self._output["index"]), self._output)


def _quantized(values, detail) -> np.ndarray:
    """An input as the file takes it: float32, integers as they are, or int8 by the input's quantization."""
    values = np.asarray(values)
    if detail["dtype"] == np.int8:
        scale, zero_point = detail["quantization"]
        return np.clip(np.round(values.astype(np.float32) / scale + zero_point), -128, 127).astype(np.int8)
    return values.astype(detail["dtype"])


def _dequantized(values, detail) -> np.ndarray:
    if detail["dtype"] == np.int8:
        scale, zero_point = detail["quantization"]
        return (values.astype(np.float32) - zero_point) * scale
    return values


# The child: reads batches (a count, then one array per input, in the order of the signature's input names) from
# stdin, writes the outputs the same way to its original stdout (`send_arrays`). Native code's own prints go to
# stderr, so they cannot corrupt the stream.
_CHILD = """
import os, sys
import numpy as np
stream = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
from hsd_tf.export import TFLiteModel
model = TFLiteModel(sys.argv[1], xnnpack=sys.argv[2] == "xnnpack")
from hsd_tf.export import receive_arrays, send_arrays
while True:
    inputs = receive_arrays(sys.stdin.buffer)
    if inputs is None:
        break
    outputs = model(*inputs)
    send_arrays(stream, outputs if isinstance(outputs, list) else [outputs])
"""


def child_command(path: str, xnnpack: bool = True) -> List[str]:
    """The command of the child process that runs a .tflite file for `_ChildInterpreter`."""
    return [sys.executable, "-c", _CHILD, path, "xnnpack" if xnnpack else "builtin"]


class _ChildInterpreter:
    """A .tflite file run by LiteRT in a child process: the outputs of batches of inputs.

    A runtime that aborts or crashes takes only the child down; the error then
    names the signal and the child's last line of stderr.
    """

    def __init__(self, path: str, xnnpack: bool = True, names=None):
        self.path = path
        # The model's input and output names, by which the file's signature is ordered (`TFLiteModel`).
        self.input_names, self.output_names = names or ([], [])
        self.log = tempfile.TemporaryFile()
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        self.process = subprocess.Popen(child_command(path, xnnpack), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.log, env=env)

    def __enter__(self):
        return self

    def input_order(self, count: int) -> list:
        """The model's inputs as the child takes them: by name (the order itself for one)."""
        return sorted(range(count), key=self.input_names.__getitem__) if count > 1 else [0]

    def output_order(self, count: int) -> list:
        return sorted(range(count), key=self.output_names.__getitem__) if count > 1 else [0]

    def __call__(self, inputs) -> list:
        """The file's outputs (a list, in the model's order) of one batch of inputs (one array, or a list in the
        model's order)."""
        arrays = [np.asarray(x) for x in _flat_inputs(inputs)]
        arrays = [x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x for x in arrays]
        try:
            send_arrays(self.process.stdin, [arrays[i] for i in self.input_order(len(arrays))])
            found = receive_arrays(self.process.stdout)
        except OSError:  # a closed pipe: the child is gone
            found = None
        if found is None:
            raise RuntimeError(self._death())
        order = self.output_order(len(found))
        return [found[order.index(i)] for i in range(len(found))]

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


def send_arrays(stream, arrays) -> None:
    """Writes a list of arrays: their count, then each (`send_array`)."""
    send_array(stream, np.array([len(arrays)], np.int64))
    for array in arrays:
        send_array(stream, array)


def receive_arrays(stream) -> Optional[list]:
    """Reads what `send_arrays` wrote; None at the end of the stream (or if it was cut short)."""
    count = receive_array(stream)
    if count is None:
        return None
    arrays = [receive_array(stream) for _ in range(int(count[0]))]
    return None if any(a is None for a in arrays) else arrays


def _read_exactly(stream, count: int) -> Optional[bytes]:
    chunks, left = [], count
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def outputs_of(model, dataset) -> list:
    """A callable model's outputs over a dataset of (inputs, targets[, weights]) batches: one array per output,
    every batch concatenated."""
    batches = [[np.asarray(o) for o in _flat_values(model(_unpack(batch)[0]))] for batch in dataset]
    return [np.concatenate(parts) for parts in zip(*batches)]


def labels_of(dataset) -> np.ndarray:
    """A classifier's class per example: its targets as class indices, (n, 1) indices flattened, one-hot (or soft)
    targets of a categorical cross-entropy by their largest entry."""
    labels = np.concatenate([np.asarray(_flat_values(_unpack(batch)[1])[0]) for batch in dataset])
    if labels.ndim == 2 and labels.shape[-1] > 1:
        return np.argmax(labels, axis=-1)
    return labels.reshape(len(labels))


def _top1(outputs: np.ndarray) -> np.ndarray:
    return outputs if outputs.ndim == 1 else np.argmax(outputs, axis=-1)


def _unpack(batch):
    """(inputs, targets, weights or None) of a batch."""
    batch = tuple(batch)
    return batch[0], batch[1], batch[2] if len(batch) > 2 else None


def _flat_values(values) -> list:
    """The leaves of an output or target structure (a tensor, a list, a dict by key order) as a list."""
    if isinstance(values, dict):
        return [v for key in sorted(values) for v in _flat_values(values[key])]
    if isinstance(values, (list, tuple)):
        return [v for item in values for v in _flat_values(item)]
    return [values]



def _flat_inputs(inputs) -> list:
    """A batch's inputs as numpy arrays, one per model input."""
    return [x.numpy() if hasattr(x, "numpy") else np.asarray(x) for x in _flat_values(inputs)]


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def representative_sample(dataset, count: int = 200):
    """Up to `count` examples' inputs from a batched dataset, for int8 calibration: an array, or one per input."""
    parts = []
    for batch in dataset:
        parts.append(_flat_inputs(_unpack(batch)[0]))
        if sum(len(p[0]) for p in parts) >= count:
            break
    arrays = [np.concatenate(values)[:count] for values in zip(*parts)]
    return arrays[0] if len(arrays) == 1 else arrays
