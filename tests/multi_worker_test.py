"""Two worker processes on 127.0.0.1 train one cascade with --strategy=multi_worker."""

import json
import os
import socket
import subprocess
import sys

import pytest

from testing import ROOT

ARGS = ["--dataset=digits", "--arch=vgg16", "--width_multiplier=0.0625", "--num_ta=1", "--prune_ratio=0.5",
        "--batch_size=64", "--teacher_epochs=1", "--teacher_learning_rate=0.05", "--joint_epochs=1",
        "--frozen_epochs=0", "--finetune_epochs=1", "--verbose=0", "--export=", "--strategy=multi_worker"]


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _results(path):
    with open(path) as f:
        results = json.load(f)
    results.pop("wall_seconds_this_invocation")
    results["views"][0].pop("exports", None)  # the chief alone writes the slim student
    return results


@pytest.mark.slow
def test_two_workers_train_to_the_end_and_agree_on_the_masks(tmp_path):
    model_dir = tmp_path / "run"
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    workers, logs = [], []
    for index in range(2):
        logs.append(open(tmp_path / f"worker-{index}.log", "w+"))
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        workers.append(subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "main.py"), *ARGS, f"--model_dir={model_dir}"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=logs[-1]))
    try:
        statuses = [worker.wait(timeout=600) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for status, log in zip(statuses, logs):
        log.seek(0)
        assert status == 0, log.read()[-3000:]

    chief = _results(model_dir / "results.json")
    other = _results(model_dir / "workers" / "worker-1" / "results.json")
    for view_chief, view_other in zip(chief["views"], other["views"], strict=True):
        assert view_chief["kept_channels"] == view_other["kept_channels"]
    student = chief["views"][0]
    assert sum(map(len, student["kept_channels"].values())) == student["filters_kept"] == student["filters_total"] // 2
    assert chief == other  # accuracies too: one model, evaluated in lockstep
    # Only the chief wrote the model_dir.
    assert sorted(os.listdir(model_dir)) == [".lock", "config.json", "export", "finetune", "frozen", "joint", "logs",
                                            "results.json", "teacher", "workers"]
    assert os.listdir(model_dir / "export") == ["student.keras"]
