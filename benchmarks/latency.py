"""Batch-1 TFLite latency of dense and slim models, beside their MAC reduction.

    python benchmarks/latency.py                          # VGG16, full width, 32x32: dense vs 50% of filters kept
    python benchmarks/latency.py --keep=0.3 --runs=300
    python benchmarks/latency.py --model_dir=runs/digits_demo   # the float32 .tflite files a run exported

Without --model_dir the dense model has random weights (latency does not depend on their values) and
the slim student is the real pipeline's: a cascade initialised from the dense model, global top-k of the
L1 scores at the given keep ratio, physically slimmed, exported with the TFLite converter.
Latency is the median of --runs invocations after --warmup, with 1 thread and with all cores; the
models are invoked in alternation so that drift in the machine's speed cancels in the speed-ups.
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
flags.DEFINE_integer("image_size", 32, "Image side (without --model_dir).")
flags.DEFINE_integer("num_classes", 10, "Classes (without --model_dir).")
flags.DEFINE_integer("runs", 200, "Timed invocations per model and thread count.")
flags.DEFINE_integer("warmup", 20, "Untimed invocations first.")
FLAGS = flags.FLAGS


def median_latencies_ms(paths, threads, runs, warmup):
    """Median batch-1 latency of each model, timed in alternation.

    One invocation of every model per round, so drift in the machine's speed
    (other load, clock changes) hits all models alike and cancels in ratios.
    """
    from hsd_tf.export import TFLiteModel  # pylint: disable=import-outside-toplevel

    models = [TFLiteModel(path, num_threads=threads) for path in paths]
    rng = np.random.RandomState(0)
    images = [rng.normal(size=(1,) + tuple(m.interpreter.get_input_details()[0]["shape"][1:])).astype(np.float32)
              for m in models]
    for _ in range(warmup):
        for model, image in zip(models, images):
            model(image)
    times = [[] for _ in models]
    for _ in range(runs):
        for model, image, record in zip(models, images, times):
            start = time.perf_counter()
            model(image)
            record.append(time.perf_counter() - start)
    return [1000.0 * float(np.median(t)) for t in times]


def synthetic_models(directory):
    """(name, tflite path, params, MACs) of the dense model and its slim student."""
    from hsd_tf import architectures, costs, export, slimming  # pylint: disable=import-outside-toplevel
    import keras  # pylint: disable=import-outside-toplevel

    keras.utils.set_random_seed(0)  # the same initial weights, hence the same L1 masks, every run
    dense = architectures.get(FLAGS.arch, (FLAGS.image_size,) * 2 + (3,), FLAGS.num_classes)
    student, _ = slimming.l1_pruned(dense, 1.0 - FLAGS.keep, name="student")
    rows = []
    for name, model in (("teacher", dense), ("student", student)):
        path = export.export_model(model, directory, ["tflite"])["tflite"]
        report = costs.profile(model)
        rows.append((name, path, report["params"], report["macs"]))
    return rows


def exported_models(model_dir):
    with open(os.path.join(model_dir, "results.json")) as f:
        results = json.load(f)
    rows = []
    for entry in [dict(results["teacher"], name="teacher")] + results["views"]:
        if "tflite" in entry.get("exports", {}):
            rows.append((entry["name"], entry["exports"]["tflite"]["path"], entry["params"], entry["macs"]))
    if not rows or rows[0][0] != "teacher":
        raise SystemExit("error: --model_dir needs a run exported with --export_views=all (the dense teacher "
                         "is the baseline). Received: model_dir=" + model_dir)
    return rows


def main(_):
    logging.set_verbosity(logging.WARNING)  # TensorFlow's SavedModel writer is chatty at INFO
    cores = os.cpu_count()
    with tempfile.TemporaryDirectory() as directory:
        rows = exported_models(FLAGS.model_dir) if FLAGS.model_dir else synthetic_models(directory)
        print(f"TFLite float32, batch 1, median of {FLAGS.runs} runs after {FLAGS.warmup} warm-up, "
              f"1 thread and {cores} threads")
        header = (f"{'model':<10} {'params':>12} {'MACs':>14} {'MAC red.':>9} "
                  f"{'ms 1T':>8} {'speed-up':>9} {'ms allT':>8} {'speed-up':>9} {'speed-up/MAC red. 1T, allT':>27}")
        print(header)
        paths = [path for _, path, _, _ in rows]
        single = median_latencies_ms(paths, 1, FLAGS.runs, FLAGS.warmup)
        multi = median_latencies_ms(paths, cores, FLAGS.runs, FLAGS.warmup)
        base_macs = rows[0][3]
        for (name, _, params, macs), one, many in zip(rows, single, multi):
            reduction = base_macs / macs
            print(f"{name:<10} {params:>12,} {macs:>14,} {reduction:>8.2f}x {one:>8.3f} {single[0] / one:>8.2f}x "
                  f"{many:>8.3f} {multi[0] / many:>8.2f}x {single[0] / one / reduction:>20.0%}, "
                  f"{multi[0] / many / reduction:>4.0%}")


if __name__ == "__main__":
    app.run(main)
