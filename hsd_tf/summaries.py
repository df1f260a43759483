"""TensorBoard summaries of the cascade beyond Keras' own per-epoch scalars.

Keras' TensorBoard callback already writes every logged metric (per view:
loss, accuracy, kept fraction) under `logs/<phase>/train` and `/validation`.
`CascadeSummaries` adds, under `logs/<phase>/cascade`, once per epoch:
the loss terms of every view (CE, KD, hint), params and MACs of every view,
both learning rates, the fine-tuning teacher's rung, a histogram of every
view's scores, and an image of the kept fraction of every layer (rows: views,
columns: mask groups).
"""

import os

import keras
import numpy as np
import tensorflow as tf


class CascadeSummaries(keras.callbacks.Callback):
    """Writes the cascade's per-view state to TensorBoard at each epoch end.

    Args:
        log_dir: The phase's TensorBoard folder (`<model_dir>/logs/<phase>`).
    """

    def __init__(self, log_dir: str):
        super().__init__()
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "cascade"))

    def on_epoch_end(self, epoch, logs=None):
        cascade = self.model
        active = cascade.view_names[:1] if cascade.phase == "finetune" else cascade.view_names
        costs = {row["name"]: row for row in cascade.view_costs()}
        with self.writer.as_default(step=epoch + 1):
            for name in active:
                for term in ("ce", "kd", "hint"):
                    tf.summary.scalar(f"{name}/{term}", cascade.metric_result(f"{name}_{term}"))
                tf.summary.scalar(f"{name}/params", costs[name]["params"])
                tf.summary.scalar(f"{name}/macs", costs[name]["macs"])
            for index, name in enumerate(cascade.view_names):
                scores = np.concatenate([s.numpy() for s in cascade.views[index].scores])
                tf.summary.histogram(f"{name}/scores", scores)
            tf.summary.scalar("learning_rate", _learning_rate(cascade.optimizer))
            if cascade.score_optimizer is not None and cascade.phase == "joint":
                tf.summary.scalar("score_learning_rate", _learning_rate(cascade.score_optimizer))
            if cascade.phase == "finetune":
                tf.summary.scalar("teacher_rung", cascade.ladder_rung_value)
            tf.summary.image("kept_fraction_per_layer", kept_image(cascade))
        self.writer.flush()


def kept_image(cascade) -> np.ndarray:
    """(1, views, groups, 1) image: each layer's kept fraction per view, in [0, 1]."""
    rows = [[float(m.mean()) for m in cascade.hard_masks(i)] for i in range(len(cascade.views))]
    return np.asarray(rows, np.float32)[None, :, :, None]


def _learning_rate(optimizer) -> float:
    rate = optimizer.learning_rate
    # convert_to_numpy, not float(): float() fails on MultiWorkerMirroredStrategy's variables.
    return float(keras.ops.convert_to_numpy(rate(optimizer.iterations) if callable(rate) else rate))
