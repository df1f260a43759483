"""benchmarks/ablation.py: the L1 baseline's pruning and the statistics behind the verdict."""

import os
import sys

import numpy as np
import pytest

from hsd_tf import masks, network

from cascade_test import randomize
from conftest import tiny_chain

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import ablation  # noqa: E402  pylint: disable=wrong-import-position


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_l1_pruning_keeps_the_budget_and_the_largest_filters(ratio):
    architecture = tiny_chain()
    teacher = randomize(network.build_model(architecture))
    model, slim_architecture = ablation.l1_pruned(teacher, architecture, ratio)
    assert slim_architecture.total_filters == round((1 - ratio) * architecture.total_filters)
    scores = {g: masks.l1_scores(teacher.get_layer(architecture.group_members(g)[0]).get_weights()[0])
              for g in architecture.group_names}
    kept = {g: slim_architecture.filters(slim_architecture.node(architecture.group_members(g)[0]))
            for g in architecture.group_names}
    # Every dropped filter scores below every kept one (layers keeping only their forced best one aside).
    ranked = [g for g in architecture.group_names if kept[g] > 1]
    assert ranked
    threshold = min(np.sort(scores[g])[::-1][kept[g] - 1] for g in ranked)
    for g, s in scores.items():
        assert np.all(np.sort(s)[::-1][kept[g]:] <= threshold)
    assert [w.shape for w in model.get_weights()] == [w.shape for w in network.build_model(slim_architecture).get_weights()]


def _row(label, ratio, seed, accuracy, macs=1000):
    return {"label": label, "ratio": ratio, "seed": seed, "accuracy": accuracy, "params": 10, "macs": macs}


def test_summary_is_mean_and_sample_std_over_seeds():
    rows = [_row("a", 0.9, s, acc) for s, acc in enumerate([0.90, 0.92, 0.94])] + [_row("b", 0.9, 0, 0.5)]
    summary = {e["label"]: e for e in ablation.summarize(rows)}
    assert summary["a"]["accuracy"] == pytest.approx(0.92)
    assert summary["a"]["accuracy_std"] == pytest.approx(0.02)
    assert summary["a"]["seeds"] == 3 and summary["b"]["accuracy_std"] == 0.0


def test_verdict_needs_a_gap_larger_than_both_spreads():
    rows = [_row("hsd num_ta=2", 0.9, s, a) for s, a in enumerate([0.95, 0.96, 0.97])]
    rows += [_row("scratch", 0.9, s, a) for s, a in enumerate([0.90, 0.91, 0.92])]  # 5 points below, spread 2
    rows += [_row("hsd num_ta=0", 0.9, s, a) for s, a in enumerate([0.93, 0.945, 0.96])]  # 1.5 below, spread 2.5
    lines, wins = ablation.verdict(ablation.summarize(rows), 0.9, "hsd num_ta=2")
    assert not wins
    assert any("vs scratch: +5.00 points" in line and "beats it" in line for line in lines)
    assert any("vs hsd num_ta=0: +1.50 points" in line and "does not beat it" in line for line in lines)
