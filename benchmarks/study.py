"""What the studies (ablation.py, mask_stability.py) share: their settings and their worker set-up."""

import dataclasses
import os


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

    @property
    def teacher_path(self) -> str:
        return os.path.join(self.out_dir, "teacher", "teacher", "teacher.weights.h5")

    def pretrain_teacher(self) -> str:
        """Trains the shared teacher once (or finds it); returns its weights file."""
        from hsd_tf import training  # pylint: disable=import-outside-toplevel

        return training.pretrain_teacher(self.config(model_dir=os.path.join(self.out_dir, "teacher")))


def single_thread():
    """Worker initializer: one intra- and one inter-op thread, so parallel runs do not contend."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
