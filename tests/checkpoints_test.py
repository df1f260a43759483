"""Checkpoints: a write that fails on a full disk keeps the last good checkpoint, and the re-run resumes from it;
a Ctrl-C that Python drops still stops the run."""

import errno
import os
import signal
import time

import keras
import numpy as np
import pytest

from hsd_tf import checkpoints, training
from hsd_tf.config import Config


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_keeps_the_last_good_checkpoint_and_resumes(tmp_path, monkeypatch):
    config = Config(dataset="digits", arch="vgg16", width_multiplier=0.0625, num_ta=1, prune_ratio=0.5,
                    batch_size=128, teacher_epochs=1, joint_epochs=3, finetune_epochs=1, verbose=0, export=[],
                    tensorboard=False, model_dir=str(tmp_path / "run"))
    save_weights = keras.Model.save_weights

    def full_disk(model, path, *args, **kwargs):
        if "epoch-2" in path and "joint" in path:
            with open(path, "wb") as f:  # a half-written file, as a full disk leaves it
                f.write(b"\x89HDF\r\n\x1a\n")
            raise OSError(errno.ENOSPC, "No space left on device")
        return save_weights(model, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save_weights", full_disk)
    with pytest.raises(checkpoints.TrainingError, match=r"No space left on device.*untouched.*re-run"):
        training.train_and_evaluate(config)
    backup = tmp_path / "run" / "joint" / "backup"
    assert sorted(os.listdir(backup)) == ["epoch-1.weights.h5"]  # the half-written one is gone
    monkeypatch.setattr(keras.Model, "save_weights", save_weights)
    results = training.train_and_evaluate(config)  # resumes from epoch 1's checkpoint, which reads back
    assert len(results["views"][0]["mask_changes"]) == 3


class _Finalizer:
    """Interrupted while Python runs its `__del__`, where Python drops the KeyboardInterrupt."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the handler runs here, inside the finalizer


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped KeyboardInterrupt
def test_a_ctrl_c_that_python_drops_in_a_finalizer_still_stops_training():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    steps = []
    record = keras.callbacks.LambdaCallback(on_train_batch_begin=lambda batch, logs: steps.append(batch))
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # pytest-xdist's workers ignore SIGINT
    with checkpoints.interrupts_noted():
        _Finalizer()  # collected at once: the KeyboardInterrupt is printed as ignored, not raised
        with pytest.raises(KeyboardInterrupt):
            model.fit(np.zeros((8, 2)), np.zeros((8, 1)), batch_size=1, epochs=1, verbose=0,
                      callbacks=[record, checkpoints.StopOnInterrupt()])
    assert steps == [0]  # stopped after the first step
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler before is back
    signal.signal(signal.SIGINT, before)
