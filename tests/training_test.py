"""The phases' optimizers: whole cosine cycles per phase, the scores on the weights' schedule."""

import errno
import os
import types

import keras
import pytest

from hsd_tf import training
from hsd_tf.config import Config


def _rate(optimizer, step):
    """The learning rate the optimizer would apply at `step`."""
    optimizer.iterations.assign(step)
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


@pytest.mark.parametrize("epochs, cycle, cycles", [(8, 5, 2), (10, 5, 2), (3, 5, 1), (16, 5, 3)])
def test_a_phase_holds_whole_cosine_cycles_and_ends_annealed(epochs, cycle, cycles):
    config = Config(learning_rate=0.1, lr_cycle_epochs=cycle, lr_peak_decay=0.8)
    data = types.SimpleNamespace(steps_per_epoch=10)
    optimizer = training.weight_optimizer(config, data, epochs)
    steps = epochs * 10
    assert _rate(optimizer, 0) == pytest.approx(0.1)
    assert _rate(optimizer, steps - 1) < 0.002  # the last step is at the bottom of a cycle
    restarts = [s for s in range(1, steps) if _rate(optimizer, s) > _rate(optimizer, s - 1)]
    assert len(restarts) == cycles - 1
    for k, step in enumerate(restarts, start=1):
        assert _rate(optimizer, step) == pytest.approx(0.1 * 0.8 ** k, rel=1e-3)


def test_scores_follow_the_weights_schedule_or_stay_constant():
    data = types.SimpleNamespace(steps_per_epoch=10)
    weights = training.weight_optimizer(Config(learning_rate=0.1), data, 8)
    scores = training.score_optimizer(Config(learning_rate=0.1, score_learning_rate=0.01), data, 8)
    for step in (0, 13, 39, 40, 79):
        assert _rate(scores, step) == pytest.approx(_rate(weights, step) / 10, rel=1e-5)
    constant = training.score_optimizer(Config(score_learning_rate=0.01, score_schedule="constant"), data, 8)
    assert float(keras.ops.convert_to_numpy(constant.learning_rate)) == pytest.approx(0.01)
    sgd = training.score_optimizer(Config(score_optimizer="sgd"), data, 8)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.nesterov and sgd.momentum == 0.9


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
    with pytest.raises(training.TrainingError, match=r"No space left on device.*untouched.*re-run"):
        training.train_and_evaluate(config)
    backup = tmp_path / "run" / "joint" / "backup"
    assert sorted(os.listdir(backup)) == ["epoch-1.weights.h5"]  # the half-written one is gone
    monkeypatch.setattr(keras.Model, "save_weights", save_weights)
    results = training.train_and_evaluate(config)  # resumes from epoch 1's checkpoint, which reads back
    assert len(results["views"][0]["mask_changes"]) == 3
