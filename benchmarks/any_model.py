"""Any Keras model through the whole pipeline: trace, cascade step, slim model, costs; the README's table.

    python benchmarks/any_model.py                         # the six keras.applications models of the table
    python benchmarks/any_model.py --models=ResNet50,VGG16 --output=/tmp/table.md

Per model (weights=None, 10 classes, 32x32 or the smallest input the model accepts), with random
BatchNorm statistics and biases so that a masked channel would show if it leaked: the mask groups the
tracer finds; params and MACs of the dense model and of a student keeping 50% of the prunable filters
(L1-initialised masks); one cascade training step (student at prune ratio 0.5 and the full top view,
SGD, batch 8), its wall time including tracing; then the student's slim model against its masked view
on the same images: max |masked - slim| / max |masked logit|.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

flags.DEFINE_list("models", ["MobileNetV2", "MobileNetV3Small", "ResNet50V2", "EfficientNetB0", "DenseNet121",
                             "Xception"], "keras.applications model names.")
flags.DEFINE_integer("batch_size", 8, "Images in the cascade step and the comparison.")
flags.DEFINE_string("output", None, "Also write the markdown table here.")
FLAGS = flags.FLAGS

# Inputs below 32x32 are refused by these models; Keras' minimum where it is larger.
SMALLEST_INPUT = {"Xception": 71, "InceptionV3": 75, "InceptionResNetV2": 75}


def randomize_statistics(model, seed=0):
    """Random BatchNorm statistics and conv/dense biases: a leaked masked channel then changes the logits."""
    import keras  # pylint: disable=import-outside-toplevel

    from hsd_tf import graph  # pylint: disable=import-outside-toplevel

    rng = np.random.RandomState(seed)
    for layer in graph.layers_by_name(model).values():
        if isinstance(layer, keras.layers.BatchNormalization):
            for attribute, positive in (("gamma", True), ("beta", False), ("moving_mean", False),
                                        ("moving_variance", True)):
                variable = getattr(layer, attribute, None)
                if variable is not None:
                    shape = tuple(variable.shape)
                    variable.assign(rng.uniform(0.5, 1.5, shape) if positive else rng.normal(0, 0.2, shape))
        elif getattr(layer, "use_bias", False) and layer.weights:
            weights = layer.get_weights()
            layer.set_weights(weights[:-1] + [rng.normal(0, 0.2, weights[-1].shape).astype("float32")])


def measure(name: str) -> dict:
    """One row of the table."""
    import keras  # pylint: disable=import-outside-toplevel

    from hsd_tf import architectures, costs, slimming  # pylint: disable=import-outside-toplevel
    from hsd_tf.cascade import Cascade  # pylint: disable=import-outside-toplevel

    keras.utils.set_random_seed(0)
    side = SMALLEST_INPUT.get(name, 32)
    model = architectures.get(f"keras.applications.{name}", (side, side, 3), 10)
    randomize_statistics(model)
    rng = np.random.RandomState(0)
    images = rng.normal(size=(FLAGS.batch_size, side, side, 3)).astype("float32")
    labels = rng.randint(0, 10, size=FLAGS.batch_size).astype("int32")
    cascade = Cascade(model, [0.5, 0.0], teacher=model)
    cascade.initialize_from(model)
    cascade.compile(optimizer=keras.optimizers.SGD(0.01), score_optimizer=keras.optimizers.SGD(0.01))
    start = time.perf_counter()
    logs = cascade.train_on_batch(images, labels, return_dict=True)
    step_seconds = time.perf_counter() - start
    slim = slimming.slim_view(cascade, 0, frozen=False)
    masked = cascade.view_forward(0, images, training=False, frozen=False)[0].numpy()
    dense = costs.count(cascade.trace)
    half = cascade.view_costs(frozen=False)[0]
    return {
        "model": name, "input": side, "groups": len(cascade.trace.groups),
        "params": dense["params"], "params_50": half["params"], "macs": dense["macs"], "macs_50": half["macs"],
        "slim_params_counted": costs.profile(slim)["params"],
        "relative_error": float(np.abs(slim(images).numpy() - masked).max() / np.abs(masked).max()),
        "step_seconds": step_seconds, "step_loss": float(logs["loss"]),
    }


def table(rows) -> str:
    lines = ["| model | input | groups | params dense | params 50% | MACs dense | MACs 50% | "
             "max\\|masked − slim\\| / max\\|logit\\| | cascade step (s, loss) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['input']}x{r['input']} | {r['groups']} | {r['params']:,} | "
                     f"{r['params_50']:,} | {r['macs']:,} | {r['macs_50']:,} | {r['relative_error']:.1e} | "
                     f"{r['step_seconds']:.1f}, {r['step_loss']:.3f} |")
    return "\n".join(lines)


def main(argv):
    del argv
    rows = []
    for name in FLAGS.models:
        row = measure(name)
        assert row["slim_params_counted"] == row["params_50"], row  # the slim model is what the count says
        print(f"{name}: {row}", flush=True)
        rows.append(row)
    text = table(rows)
    print(text)
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    app.run(main)
