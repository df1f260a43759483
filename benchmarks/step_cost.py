"""What one cascade training step costs, against one step of the plain dense model.

    python benchmarks/step_cost.py                         # VGG16, full width, 32x32, batch 128, N = 0..3
    python benchmarks/step_cost.py --num_tas=0,2 --rounds=3
    python benchmarks/step_cost.py --arch=unet --batch_size=64      # keras.io's U-Net-like segmenter, its own loss
    python benchmarks/step_cost.py --arch=timeseries --batch_size=64  # keras.io's Conv1D time-series classifier

A cascade step with N teaching assistants runs N + 1 masked forward and backward passes over the shared
kernels plus one forward pass of the frozen teacher (about a third of a forward-and-backward step), so its
floor is about N + 4/3 plain steps. Each model trains with Keras `fit` on the same synthetic batch (step
time does not depend on the values), with its own loss (`unet`: per-pixel sparse cross-entropy over 11 classes at
32x32x1, half keras.io's widths; `timeseries`: three Conv1D units on 500 steps, as keras.io's FordA model;
benchmarks/user_models.py builds both, and the cascade trains them through their task); the time of a step is from `on_train_batch_begin` to
`on_train_batch_end`, after the loss is read back. The models take turns, --steps_per_round steps each per
round, so drift in the machine's speed hits them alike; the first round (tracing) is not timed. Reported:
the median step time of each model, its ratio to the plain step, the floor and ratio / floor.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import user_models  # noqa: E402  (benchmarks/: the models of other tasks)
from hsd_tf import architectures  # noqa: E402
from hsd_tf import task as task_lib  # noqa: E402
from hsd_tf.cascade import Cascade  # noqa: E402
from hsd_tf.ratios import even_prune_ratios  # noqa: E402

flags.DEFINE_string("arch", "vgg16", "Architecture, as main.py's --arch, or unet or timeseries (models of other "
                    "tasks, benchmarks/beyond_classifiers.py).")
flags.DEFINE_float("width_multiplier", 1.0, "Width of the network.")
flags.DEFINE_integer("image_size", 32, "Image side.")
flags.DEFINE_integer("num_classes", 10, "Classes.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_list("num_tas", ["0", "1", "2", "3"], "Teaching-assistant counts N to time.")
flags.DEFINE_float("prune_ratio", 0.6, "Student prune ratio (masks do not change the work of a masked step).")
flags.DEFINE_integer("rounds", 4, "Timed rounds.")
flags.DEFINE_integer("steps_per_round", 1, "Steps of each model per round.")
FLAGS = flags.FLAGS


class StepTimer(keras.callbacks.Callback):
    """Records the wall time of every training step."""

    def __init__(self):
        super().__init__()
        self.seconds = []
        self.start = None

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        float(logs["loss"])  # waits for the step's result
        self.seconds.append(time.perf_counter() - self.start)


def models(build, num_tas, prune_ratio, target_spec):
    """[(name, floor in plain steps, compiled model)]: the plain dense model, then a cascade per N."""
    plain = build()
    user = plain.compiled  # a model of another task: its own loss, as the user's fit computes it
    plain.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True),
                  loss=plain.loss if user else keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    result = [("plain", 1.0, plain)]
    teacher, activations = architectures.without_final_activations(build())
    task = task_lib.from_model(plain, activations, target_spec)
    for n in num_tas:
        cascade = Cascade(teacher, even_prune_ratios(prune_ratio, n), teacher=teacher, hint_weight=0.001, task=task)
        cascade.initialize_from(teacher)
        cascade.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True),
                        score_optimizer=keras.optimizers.RMSprop(1e-3))
        result.append((f"cascade N={n}", n + 4 / 3, cascade))
    return result


def main(argv):
    del argv
    rng = np.random.RandomState(0)
    if FLAGS.arch == "unet":
        def build():
            return user_models.unet_model((32, 32, 1), 11)

        inputs = rng.normal(size=(FLAGS.batch_size, 32, 32, 1)).astype(np.float32)
        labels = rng.randint(0, 11, size=(FLAGS.batch_size, 32, 32)).astype(np.int32)
    elif FLAGS.arch == "timeseries":
        def build():
            return user_models.timeseries_model((500, 1), 2)

        inputs = rng.normal(size=(FLAGS.batch_size, 500, 1)).astype(np.float32)
        labels = rng.randint(0, 2, size=FLAGS.batch_size).astype(np.int32)
    else:
        def build():
            return architectures.get(FLAGS.arch, (FLAGS.image_size, FLAGS.image_size, 3), FLAGS.num_classes,
                                     FLAGS.width_multiplier)

        inputs = rng.normal(size=(FLAGS.batch_size, FLAGS.image_size, FLAGS.image_size, 3)).astype(np.float32)
        labels = rng.randint(0, FLAGS.num_classes, size=FLAGS.batch_size).astype(np.int32)
    dataset = tf.data.Dataset.from_tensors((inputs, labels)).repeat()
    entries = models(build, [int(n) for n in FLAGS.num_tas], FLAGS.prune_ratio, dataset.element_spec[1])
    timers = [StepTimer() for _ in entries]
    for round_index in range(FLAGS.rounds + 1):
        for (_, _, model), timer in zip(entries, timers):
            model.fit(dataset, epochs=1, steps_per_epoch=FLAGS.steps_per_round, verbose=0, callbacks=[timer])
        if round_index == 0:  # tracing and first-call costs
            for timer in timers:
                timer.seconds.clear()
    medians = [float(np.median(timer.seconds)) for timer in timers]
    shape = "x".join(str(d) for d in inputs.shape[1:])
    print(f"{FLAGS.arch} x{FLAGS.width_multiplier}, {shape}, batch {FLAGS.batch_size}, "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or 'all'} threads; median of "
          f"{FLAGS.rounds * FLAGS.steps_per_round} steps each")
    print(f"{'model':<14} {'ms/step':>9} {'ratio':>7} {'floor N+4/3':>12} {'ratio/floor':>12}")
    for (name, floor, _), median in zip(entries, medians):
        ratio = median / medians[0]
        print(f"{name:<14} {1000 * median:>9.1f} {ratio:>7.2f} {floor:>12.2f} {ratio / floor:>12.2f}")


if __name__ == "__main__":
    app.run(main)
