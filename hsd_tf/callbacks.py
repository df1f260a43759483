"""The callbacks of the cascade's phases: the teacher ladder, the mask-change log, the training clock, the
non-finite-loss stop."""

import json
import os
import time

import keras
import numpy as np

from hsd_tf.checkpoints import TrainingError, write_json


class TeacherLadder(keras.callbacks.Callback):
    """Moves the fine-tuning teacher up one rung once the student beats it.

    After each epoch, if the student's validation metric is better than the
    current teacher's, the teacher becomes the next rung (T2, ..., TN, then the
    pre-trained model). The rung is a model variable, so it is checkpointed
    with the weights and restored on resume.

    Args:
        names: Teacher name per rung.
        values: Validation value of the primary metric per rung.
        log_path: JSON file that records the switches.
        monitor: The log key of the student's validation metric.
        better: `better(value, than)`: whether a value beats another (the metric's direction).
        metric: The metric's name, for the console.
    """

    def __init__(self, names, values, log_path, monitor="val_student_acc", better=lambda a, b: a > b,
                 metric="accuracy"):
        super().__init__()
        self.names = list(names)
        self.values = list(values)
        self.log_path = log_path
        self.monitor, self.better, self.metric = monitor, better, metric

    def switches(self) -> list:
        if not os.path.exists(self.log_path):
            return []
        with open(self.log_path) as f:
            return json.load(f)

    def on_train_begin(self, logs=None):
        self.model.set_ladder_rung()  # the restored rung, if resuming

    def on_epoch_end(self, epoch, logs=None):
        rung = self.model.ladder_rung_value
        value = (logs or {}).get(self.monitor)
        if value is None or rung + 1 >= len(self.names) or not self.better(value, self.values[rung]):
            return
        self.model.set_ladder_rung(rung + 1)
        switches = [s for s in self.switches() if s["epoch"] < epoch + 1]
        switches.append({
            "epoch": epoch + 1, "from": self.names[rung], "to": self.names[rung + 1],
            "student_val_metric": float(value), "teacher_val_metric": self.values[rung],
        })
        write_json(self.log_path, switches)
        relation = ">" if value > self.values[rung] else "<"
        print(f"\nTeacher ladder: student val {self.metric} {value:.4f} {relation} {self.names[rung]}'s "
              f"{self.values[rung]:.4f}; now taught by {self.names[rung + 1]}.")


class MaskChangeLog(keras.callbacks.Callback):
    """Records each view's mask changes per joint epoch in a JSON file that survives resuming.

    The cascade counts, step by step, the filters whose kept/dropped state the
    score update switched (`<view>_changes`, summed over the epoch by Keras);
    this keeps one count per epoch and view.

    Args:
        names: View names.
        log_path: JSON file `{view: [changes of epoch 1, 2, ...]}`.
    """

    def __init__(self, names, log_path):
        super().__init__()
        self.names = list(names)
        self.log_path = log_path

    def changes(self) -> dict:
        if not os.path.exists(self.log_path):
            return {name: [] for name in self.names}
        with open(self.log_path) as f:
            return json.load(f)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        changes = {name: counts[:epoch] for name, counts in self.changes().items()}
        for name in self.names:
            changes[name].append(int(round(float(logs[f"{name}_changes"]))))
        write_json(self.log_path, changes)


class TrainingClock(keras.callbacks.Callback):
    """Records the seconds each training epoch took in a JSON file that survives resuming.

    An epoch redone after an interruption replaces its entry, so the sum is the
    time of one pass over every epoch (the interrupted, unfinished one is not
    counted). Validation at the epoch's end is included: every method runs it.

    Args:
        log_path: JSON file `{"1": seconds of epoch 1, ...}`.
    """

    def __init__(self, log_path):
        super().__init__()
        self.log_path = log_path
        self._start = 0.0

    @staticmethod
    def seconds(log_path) -> float:
        """The recorded epochs' total seconds (0 when none was recorded)."""
        if not os.path.exists(log_path):
            return 0.0
        with open(log_path) as f:
            return float(sum(json.load(f).values()))

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        recorded = {}
        if os.path.exists(self.log_path):
            with open(self.log_path) as f:
                recorded = {k: v for k, v in json.load(f).items() if int(k) <= epoch}
        recorded[str(epoch + 1)] = round(time.perf_counter() - self._start, 3)
        write_json(self.log_path, recorded)


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops at the first NaN or infinite loss, before anything saves the bad weights."""

    def __init__(self, phase, backup):
        super().__init__()
        self.phase, self.backup = phase, backup
        self.flag = "teacher_learning_rate" if phase == "teacher" else "learning_rate"
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            raise TrainingError(
                f"the {self.phase} loss became {float(loss)} at epoch {self.epoch + 1}, step {batch + 1}; "
                f"stopped. The last good checkpoint is kept in {self.backup}: lower --{self.flag} and re-run."
            )
