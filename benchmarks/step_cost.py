"""What one cascade training step costs, against one step of the plain dense model.

    python benchmarks/step_cost.py                         # VGG16, full width, 32x32, batch 128, N = 0..3
    python benchmarks/step_cost.py --num_tas=0,2 --rounds=3

A cascade step with N teaching assistants runs N + 1 masked forward and backward passes over the shared
kernels plus one forward pass of the frozen teacher (about a third of a forward-and-backward step), so its
floor is about N + 4/3 plain steps. Each model trains with Keras `fit` on the same synthetic batch (step
time does not depend on the values); the time of a step is from `on_train_batch_begin` to
`on_train_batch_end`, after the loss is read back. The models take turns, --steps_per_round steps each per
round, so drift in the machine's speed hits them alike; the first round (tracing) is not timed. Reported:
the median step time of each model, its ratio to the plain step, the floor and ratio / floor.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from hsd_tf import architectures  # noqa: E402
from hsd_tf.cascade import Cascade  # noqa: E402
from hsd_tf.ratios import even_prune_ratios  # noqa: E402

flags.DEFINE_string("arch", "vgg16", "Architecture, as main.py's --arch.")
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


def models(build, num_tas, prune_ratio):
    """[(name, floor in plain steps, compiled model)]: the plain dense model, then a cascade per N."""
    plain = build()
    plain.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    result = [("plain", 1.0, plain)]
    teacher = build()
    for n in num_tas:
        cascade = Cascade(teacher, even_prune_ratios(prune_ratio, n), teacher=teacher, hint_weight=0.001)
        cascade.initialize_from(teacher)
        cascade.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True),
                        score_optimizer=keras.optimizers.RMSprop(1e-3))
        result.append((f"cascade N={n}", n + 4 / 3, cascade))
    return result


def main(argv):
    del argv
    def build():
        return architectures.get(FLAGS.arch, (FLAGS.image_size, FLAGS.image_size, 3), FLAGS.num_classes,
                                 FLAGS.width_multiplier)

    rng = np.random.RandomState(0)
    images = rng.normal(size=(FLAGS.batch_size, FLAGS.image_size, FLAGS.image_size, 3)).astype(np.float32)
    labels = rng.randint(0, FLAGS.num_classes, size=FLAGS.batch_size).astype(np.int32)
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    entries = models(build, [int(n) for n in FLAGS.num_tas], FLAGS.prune_ratio)
    timers = [StepTimer() for _ in entries]
    for round_index in range(FLAGS.rounds + 1):
        for (_, _, model), timer in zip(entries, timers):
            model.fit(dataset, epochs=1, steps_per_epoch=FLAGS.steps_per_round, verbose=0, callbacks=[timer])
        if round_index == 0:  # tracing and first-call costs
            for timer in timers:
                timer.seconds.clear()
    medians = [float(np.median(timer.seconds)) for timer in timers]
    print(f"{FLAGS.arch} x{FLAGS.width_multiplier}, {FLAGS.image_size}x{FLAGS.image_size}, batch {FLAGS.batch_size}, "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or 'all'} threads; median of "
          f"{FLAGS.rounds * FLAGS.steps_per_round} steps each")
    print(f"{'model':<14} {'ms/step':>9} {'ratio':>7} {'floor N+4/3':>12} {'ratio/floor':>12}")
    for (name, floor, _), median in zip(entries, medians):
        ratio = median / medians[0]
        print(f"{name:<14} {1000 * median:>9.1f} {ratio:>7.2f} {floor:>12.2f} {ratio / floor:>12.2f}")


if __name__ == "__main__":
    app.run(main)
