"""A run killed with SIGKILL in every phase (teacher, joint, fine-tuning, export) resumes to the same results."""

import json
import os
import subprocess
import sys
import time

from testing import ROOT

ARGS = ["--dataset=digits", "--arch=vgg16", "--width_multiplier=0.0625", "--num_ta=1", "--prune_ratio=0.5",
        "--batch_size=128", "--teacher_epochs=3", "--teacher_learning_rate=0.05", "--joint_epochs=4",
        "--frozen_epochs=0", "--finetune_epochs=4", "--verbose=0", "--export=tflite", "--deterministic"]


def _start(model_dir):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), *ARGS, f"--model_dir={model_dir}"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(process, exists, too_late, timeout=300):
    """SIGKILLs the run as soon as the path `exists` appears; `too_late` must not exist yet."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        if exists():
            break
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert not os.path.exists(too_late), "killed too late"


def _kill_after_first_epoch(process, model_dir, phase):
    """SIGKILLs the run once `phase` has backed up at least one epoch."""
    backup = os.path.join(model_dir, phase, "backup")
    done = "teacher.weights.h5" if phase == "teacher" else "cascade.weights.h5"
    _kill_when(process, lambda: os.path.isdir(backup) and any(n.startswith("epoch-") for n in os.listdir(backup)),
               os.path.join(model_dir, phase, done))


def _kill_while_exporting(process, model_dir):
    """SIGKILLs the run once the slim student is saved, while its TFLite file is being converted."""
    _kill_when(process, lambda: os.path.exists(os.path.join(model_dir, "export", "student.keras")),
               os.path.join(model_dir, "results.json"))


def _comparable(model_dir):
    with open(os.path.join(model_dir, "results.json")) as f:
        results = json.load(f)
    results.pop("wall_seconds_this_invocation")
    for exported in results["views"][0]["exports"].values():
        exported.pop("path")  # in each run's own model_dir
    return results


def test_sigkill_in_every_phase_then_rerun_gives_the_uninterrupted_results(tmp_path):
    reference = str(tmp_path / "uninterrupted")
    process = _start(reference)
    assert process.wait(timeout=600) == 0, process.stderr.read().decode()[-3000:]

    killed = str(tmp_path / "killed")
    _kill_after_first_epoch(_start(killed), killed, "teacher")
    _kill_after_first_epoch(_start(killed), killed, "joint")
    _kill_after_first_epoch(_start(killed), killed, "finetune")
    _kill_while_exporting(_start(killed), killed)
    process = _start(killed)
    assert process.wait(timeout=600) == 0, process.stderr.read().decode()[-3000:]

    assert _comparable(killed) == _comparable(reference)
