"""What the studies (ablation.py, mask_stability.py) share: their flags, settings and worker set-up."""

import dataclasses
import functools
import os
import shlex
import subprocess
import sys

from absl import flags

flags.DEFINE_list("num_tas", ["0", "1", "2"], "Teaching-assistant counts of the cascade.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every student run (the teachers use seed 0).")
flags.DEFINE_float("width_multiplier", 0.125, "VGG16 width.")
flags.DEFINE_integer("teacher_epochs", 10, "Epochs of the teacher, trained once and shared by every run.")
flags.DEFINE_integer("joint_epochs", 8, "Joint epochs of the cascade.")
flags.DEFINE_integer("finetune_epochs", 8, "Fine-tuning epochs of the cascade.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("jobs", 2, "Runs trained at once, one CPU thread each.")
FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(script: str) -> str:
    """The command line that reruns this study: the script and every flag of it or of this module that was set."""
    names = [f.name for module in (sys.argv[0], __name__) for f in FLAGS.get_flags_for_module(module)]
    values = {name: FLAGS[name].value for name in names if FLAGS[name].present}
    return f"python benchmarks/{script}" + "".join(
        " " + shlex.quote(f"--{name}={','.join(value) if isinstance(value, list) else value}")
        for name, value in values.items())


@dataclasses.dataclass(frozen=True)
class Study:
    """The settings every run of a study shares.

    Attributes:
        out_dir: Where the shared teacher and every run live.
        width_multiplier: VGG16 width.
        teacher_epochs: Epochs of the one shared teacher.
        joint_epochs: Joint epochs of the cascade.
        finetune_epochs: Fine-tuning epochs of the cascade.
        batch_size: Batch size.
        dataset: digits or fashion_mnist.
        max_train_examples: Training subset (0: all).
        val_fraction: Held out of the training split for the ladder and model selection.
        name: What the study's rows call its data (default: `dataset`), e.g. for a folder: dataset.
    """

    out_dir: str
    width_multiplier: float
    teacher_epochs: int
    joint_epochs: int
    finetune_epochs: int
    batch_size: int
    dataset: str = "digits"
    max_train_examples: int = 0
    val_fraction: float = 0.1
    name: str = ""

    @property
    def key(self) -> str:
        """The data's name in rows and reports."""
        return self.name or self.dataset

    def config(self, **overrides):
        """A `Config` for the study's dataset and VGG16 at its width, as the digits demo, without export or logs."""
        from hsd_tf.config import Config  # pylint: disable=import-outside-toplevel

        settings = dict(
            dataset=self.dataset, arch="vgg16", width_multiplier=self.width_multiplier, batch_size=self.batch_size,
            teacher_epochs=self.teacher_epochs, joint_epochs=self.joint_epochs,
            finetune_epochs=self.finetune_epochs, export=[], tensorboard=False, verbose=0,
            max_train_examples=self.max_train_examples, val_fraction=self.val_fraction,
            # flags/digits_demo.cfg's settings for short runs
            teacher_learning_rate=0.05, learning_rate=0.01, score_learning_rate=0.01, hint_weight=0.0,
        )
        settings.update(overrides)
        return Config(**settings)

    @classmethod
    def from_flags(cls, out_dir: str, **settings) -> "Study":
        """The study of this module's flags, in `out_dir`, with `settings` (dataset, ...) on top."""
        return cls(out_dir, FLAGS.width_multiplier, FLAGS.teacher_epochs, FLAGS.joint_epochs,
                   FLAGS.finetune_epochs, FLAGS.batch_size, **settings)

    @property
    def teacher_path(self) -> str:
        return os.path.join(self.out_dir, "teacher", "teacher", "teacher.weights.h5")

    def pretrain_teacher(self) -> str:
        """Trains the shared teacher once (or finds it); returns its weights file."""
        from hsd_tf import training  # pylint: disable=import-outside-toplevel

        return training.pretrain_teacher(self.config(model_dir=os.path.join(self.out_dir, "teacher")))


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """The commit of this repository when first asked in a process (an ablation worker asks as it first imports
    hsd_tf), "-dirty" if files had changed; "unknown" without git."""
    try:
        found = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True,
                               timeout=30, check=False).stdout.strip()
    except OSError:
        found = ""
    return found or "unknown"


def single_thread():
    """Worker initializer: one intra- and one inter-op thread, so parallel runs do not contend."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
