"""Batch-1 TFLite latency of dense and slim models, float32 and quantised, beside their MAC reduction.

    python benchmarks/latency.py                          # VGG16, full width, 32x32: dense vs 50% of filters kept
    python benchmarks/latency.py --keep=0.3 --runs=300 --json=/tmp/latency.json
    python benchmarks/latency.py --macs_budget=0.25 --round_to=1,8   # the same MAC budget, widths rounded or not
    python benchmarks/latency.py --model_dir=runs/digits_demo   # the .tflite files a run exported

Without --model_dir the dense model has random weights (latency does not depend on their values) and
the slim student is the real pipeline's: a cascade initialised from the dense model, global top-k of the
L1 scores at the given keep ratio, physically slimmed, converted by the TFLite converter to float32,
dynamic-range and full-integer int8 (calibrated on 200 random images). The baseline is the float32 dense
teacher. Latency is the median of --runs `invoke()` calls (input already set, in the file's own dtype)
after --warmup, with 1 thread and with all cores; the models are invoked in alternation so that drift in
the machine's speed cancels in the speed-ups.
"""

import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("model_dir", None, "Benchmark the float32 TFLite files exported by this run.")
flags.DEFINE_string("arch", "vgg16", "Architecture (without --model_dir).")
flags.DEFINE_float("keep", 0.5, "Fraction of prunable filters the slim model keeps (without --model_dir).")
flags.DEFINE_float("macs_budget", None, "Instead of --keep: the slim model's MACs as a fraction of the dense "
                   "model's (without --model_dir).")
flags.DEFINE_list("round_to", ["1"], "One slim model per value: channels per layer rounded down to a multiple "
                  "(without --model_dir).")
flags.DEFINE_integer("image_size", 32, "Image side (without --model_dir).")
flags.DEFINE_integer("num_classes", 10, "Classes (without --model_dir).")
flags.DEFINE_integer("runs", 200, "Timed invocations per model and thread count.")
flags.DEFINE_integer("warmup", 20, "Untimed invocations first.")
flags.DEFINE_string("json", None, "Also write one row per model and format here: "
                    '{"model", "format", "params", "macs", "ms_1t", "ms_allt"}.')
FLAGS = flags.FLAGS


def median_latencies_ms(paths, threads, runs, warmup):
    """Median batch-1 latency of each model, timed in alternation.

    One invocation of every model per round, so drift in the machine's speed
    (other load, clock changes) hits all models alike and cancels in ratios.
    """
    from hsd_tf.export import TFLiteModel  # pylint: disable=import-outside-toplevel

    models = [TFLiteModel(path, num_threads=threads) for path in paths]
    rng = np.random.RandomState(0)
    for model in models:  # a batch-1 input set once, in the file's own dtype: only invoke() is timed
        details = model.interpreter.get_input_details()[0]
        model.interpreter.allocate_tensors()
        image = rng.normal(size=tuple(details["shape"])).astype(np.float32)
        if details["dtype"] == np.int8:
            scale, zero_point = details["quantization"]
            image = np.clip(np.round(image / scale + zero_point), -128, 127).astype(np.int8)
        model.interpreter.set_tensor(details["index"], image)
    for _ in range(warmup):
        for model in models:
            model.interpreter.invoke()
    times = [[] for _ in models]
    for _ in range(runs):
        for model, record in zip(models, times):
            start = time.perf_counter()
            model.interpreter.invoke()
            record.append(time.perf_counter() - start)
    return [1000.0 * float(np.median(t)) for t in times]


FORMATS = ("tflite", "tflite_dynamic", "tflite_int8")


def synthetic_models(directory):
    """(name, format, tflite path, params, MACs): the float32 dense model, then its slim student in each format."""
    from hsd_tf import architectures, costs, export, slimming  # pylint: disable=import-outside-toplevel
    import keras  # pylint: disable=import-outside-toplevel

    keras.utils.set_random_seed(0)  # the same initial weights, hence the same L1 masks, every run
    shape = (FLAGS.image_size,) * 2 + (3,)
    dense = architectures.get(FLAGS.arch, shape, FLAGS.num_classes)
    students = []
    for multiple in (int(m) for m in FLAGS.round_to):
        name = "student" if FLAGS.round_to == ["1"] else f"student_r{multiple}"
        budget = dict(macs_fraction=FLAGS.macs_budget) if FLAGS.macs_budget else dict(prune_ratio=1.0 - FLAGS.keep)
        students.append((name, slimming.l1_pruned(dense, name=name, round_to=multiple, **budget)[0], FORMATS))
    calibration = np.random.RandomState(0).normal(size=(200,) + shape).astype(np.float32)
    rows = []
    for name, model, formats in [("teacher", dense, ("tflite",))] + students:
        paths = export.export_model(model, directory, formats, calibration)
        report = costs.profile(model)
        rows += [(name, fmt, paths[fmt], report["params"], report["macs"]) for fmt in formats]
    return rows


def exported_models(model_dir):
    with open(os.path.join(model_dir, "results.json")) as f:
        results = json.load(f)
    rows = []
    for entry in [dict(results["teacher"], name="teacher")] + results["views"]:
        for fmt in FORMATS:
            if fmt in entry.get("exports", {}):
                rows.append((entry["name"], fmt, entry["exports"][fmt]["path"], entry["params"], entry["macs"]))
    if not rows or rows[0][:2] != ("teacher", "tflite"):
        raise SystemExit("error: --model_dir needs a run exported with --export_views=all and tflite (the float32 "
                         "dense teacher is the baseline). Received: model_dir=" + model_dir)
    return rows


def main(_):
    logging.set_verbosity(logging.WARNING)  # TensorFlow's SavedModel writer is chatty at INFO
    cores = os.cpu_count()
    with tempfile.TemporaryDirectory() as directory:
        rows = exported_models(FLAGS.model_dir) if FLAGS.model_dir else synthetic_models(directory)
        print(f"TFLite, batch 1, median of {FLAGS.runs} runs after {FLAGS.warmup} warm-up, "
              f"1 thread and {cores} threads; speed-ups against the float32 teacher")
        header = (f"{'model':<10} {'format':<15} {'params':>12} {'MACs':>14} {'MAC red.':>9} "
                  f"{'ms 1T':>8} {'speed-up':>9} {'ms allT':>8} {'speed-up':>9}")
        print(header)
        paths = [path for _, _, path, _, _ in rows]
        single = median_latencies_ms(paths, 1, FLAGS.runs, FLAGS.warmup)
        multi = median_latencies_ms(paths, cores, FLAGS.runs, FLAGS.warmup)
        base_macs = rows[0][4]
        table = []
        for (name, fmt, _, params, macs), one, many in zip(rows, single, multi):
            print(f"{name:<10} {fmt:<15} {params:>12,} {macs:>14,} {base_macs / macs:>8.2f}x {one:>8.3f} "
                  f"{single[0] / one:>8.2f}x {many:>8.3f} {multi[0] / many:>8.2f}x")
            table.append({"model": name, "format": fmt, "params": params, "macs": macs, "ms_1t": round(one, 4),
                          "ms_allt": round(many, 4)})
        if FLAGS.json:
            with open(FLAGS.json, "w") as f:
                json.dump(table, f, indent=2)

if __name__ == "__main__":
    app.run(main)
