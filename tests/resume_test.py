"""A run killed with SIGKILL in every phase (teacher, joint, fine-tuning, export) resumes to the same results;
Ctrl-C says where the run stopped; a second process cannot write a folder a live run holds."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from testing import ROOT

ARGS = ["--dataset=digits", "--arch=vgg16", "--width_multiplier=0.0625", "--num_ta=1", "--prune_ratio=0.5",
        "--batch_size=128", "--teacher_epochs=3", "--teacher_learning_rate=0.05", "--joint_epochs=4",
        "--frozen_epochs=0", "--finetune_epochs=4", "--verbose=0", "--export=tflite", "--deterministic"]


def _start(model_dir):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    # An ignored SIGINT is inherited (pytest-xdist's workers, a shell's background jobs ignore it): the run
    # gets the default disposition, as from a terminal, so that Python turns Ctrl-C into KeyboardInterrupt.
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), *ARGS, f"--model_dir={model_dir}"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


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
               os.path.join(model_dir, "export", "student.tflite"))


def _comparable(model_dir):
    with open(os.path.join(model_dir, "results.json")) as f:
        results = json.load(f)
    results.pop("wall_seconds_this_invocation")
    for exported in results["views"][0]["exports"].values():
        exported.pop("path")  # in each run's own model_dir
    return results


@pytest.mark.slow
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


def _first_backup(model_dir, phase):
    backup = os.path.join(model_dir, phase, "backup")
    return lambda: os.path.isdir(backup) and any(n.startswith("epoch-") and ".tmp" not in n for n in os.listdir(backup))


def _wait_for(process, condition, timeout=300):
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None and time.time() < deadline, process.stderr.read().decode()[-3000:]
        time.sleep(0.05)


def _first_line_then_kill(model_dir):
    """Starts the run again, returns the first line it prints, and stops it there."""
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), *ARGS, f"--model_dir={model_dir}"],
                               cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline().rstrip("\n")
    process.kill()
    process.wait()
    return line, process


@pytest.mark.slow
def test_ctrl_c_says_where_the_run_stopped_and_the_rerun_says_where_it_resumes(tmp_path):
    model_dir = str(tmp_path / "run")
    process = _start(model_dir)
    _wait_for(process, _first_backup(model_dir, "joint"))
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    lines = process.stderr.read().decode().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert lines[0].startswith("Interrupted in the joint phase after ") and " of 4 epochs" in lines[0]
    assert lines[0].endswith("Re-run the same command to resume from there.")
    done = int(lines[0].split(" after ")[1].split()[0])
    assert done >= 1
    line, _ = _first_line_then_kill(model_dir)
    assert line == f"Resuming the run in {model_dir}: teacher finished; joint resumes after epoch {done}."


def test_a_second_run_on_a_folder_a_live_run_holds_is_refused_until_the_holder_dies(tmp_path):
    model_dir = str(tmp_path / "run")
    holder = _start(model_dir)
    _wait_for(holder, _first_backup(model_dir, "teacher"))
    second = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *ARGS, f"--model_dir={model_dir}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 2 and second.stderr == (
        f"error: --model_dir: another hsd_tf run (process {holder.pid}) is writing this folder; wait for it to end, "
        f"or use another --model_dir. Received: model_dir={model_dir!r}\n")
    holder.kill()  # the kernel drops a dead process's lock
    holder.wait()
    line, third = _first_line_then_kill(model_dir)  # past the lock: it says where it resumes
    assert line.startswith(f"Resuming the run in {model_dir}: "), third.stderr.read()[-3000:]
