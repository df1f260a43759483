"""Training compute: plain steps per method and phase, and the epochs that give a baseline the cascade's compute."""

import json

import pytest

from hsd_tf import compute
from hsd_tf.config import Config


def test_a_cascade_epoch_costs_n_plus_four_thirds_plain_steps_and_a_baseline_epoch_four_thirds_or_one():
    assert compute.plain_steps_per_step("hsd", "joint", num_ta=2) == pytest.approx(2 + 4 / 3)
    assert compute.plain_steps_per_step("hsd", "frozen", num_ta=0) == pytest.approx(4 / 3)
    assert compute.plain_steps_per_step("hsd", "finetune", num_ta=2) == pytest.approx(4 / 3)
    assert compute.plain_steps_per_step("l1", "finetune") == pytest.approx(4 / 3)
    assert compute.plain_steps_per_step("scratch", "scratch") == 1


def test_equal_compute_gives_each_baseline_the_epochs_closest_to_the_cascades_plain_steps():
    """The study's cascade: 8 joint epochs at 2 + 4/3 and 8 fine-tuning epochs at 4/3 = 37 1/3 plain epochs."""
    settings = dict(joint_epochs=8, frozen_epochs=0, finetune_epochs=8, num_ta=2)
    assert compute.plain_epochs(Config(method="hsd", **settings)) == pytest.approx(37 + 1 / 3)
    assert Config(method="l1", equal="compute", **settings).baseline_epochs() == 28
    assert Config(method="scratch", equal="compute", **settings).baseline_epochs() == 37
    assert Config(method="l1", **settings).baseline_epochs() == 16  # equal epochs: the default
    assert compute.plain_epochs(Config(method="l1", equal="compute", **settings)) == pytest.approx(28 * 4 / 3)
    frozen = dict(settings, joint_epochs=2, frozen_epochs=6)  # frozen masks cost what moving ones do
    assert Config(method="scratch", equal="compute", **frozen).baseline_epochs() == 37


def test_a_phase_entry_counts_its_passes_and_the_totals_add_up():
    joint = compute.phase_cost("hsd", "joint", epochs=2, steps_per_epoch=10, num_ta=1, seconds=3.0)
    finetune = compute.phase_cost("hsd", "finetune", epochs=1, steps_per_epoch=10, num_ta=1, seconds=1.5)
    assert joint == {"epochs": 2, "steps": 20, "forward_backward": 40, "forward": 20, "plain_steps": 46.7,
                     "seconds": 3.0}
    assert compute.total([joint, finetune]) == {"steps": 30, "forward_backward": 50, "forward": 30,
                                                "plain_steps": 60.0, "seconds": 4.5}


def test_the_training_clock_keeps_one_entry_per_epoch_across_a_resume(tmp_path):
    """An epoch redone after an interruption replaces its entry; later, unfinished entries are dropped."""
    from hsd_tf.callbacks import TrainingClock  # pylint: disable=import-outside-toplevel

    path = str(tmp_path / "phase" / "seconds.json")
    first = TrainingClock(path)
    for epoch in range(3):
        first.on_epoch_begin(epoch)
        first.on_epoch_end(epoch)
    resumed = TrainingClock(path)  # the backup held 1 epoch: epochs 2 and 3 run again
    resumed.on_epoch_begin(1)
    resumed.on_epoch_end(1)
    with open(path) as f:
        assert sorted(json.load(f)) == ["1", "2"]
    assert TrainingClock.seconds(path) >= 0 and TrainingClock.seconds(str(tmp_path / "none.json")) == 0.0
