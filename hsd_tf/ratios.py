"""The views' budgets: prune ratios or MAC fractions, student first; plain Python, no TensorFlow."""

from typing import List, Sequence


def validate_prune_ratios(prune_ratios: Sequence[float]) -> None:
    """Checks a student-first list of prune ratios.

    Raises:
        ValueError: Not in [0, 1), not strictly decreasing, or (with teaching
            assistants) the top assistant prunes anything.
    """
    ratios = list(prune_ratios)
    if not ratios:
        raise ValueError("prune_ratios needs at least the student's ratio. Received: []")
    if any(not 0.0 <= r < 1.0 for r in ratios):
        raise ValueError(f"Every prune ratio must be in [0, 1). Received: prune_ratios={ratios}")
    if any(a <= b for a, b in zip(ratios, ratios[1:])):
        raise ValueError(f"Prune ratios must decrease from the student up. Received: prune_ratios={ratios}")
    if len(ratios) > 1 and ratios[-1] != 0.0:
        raise ValueError(f"The top teaching assistant keeps every filter (ratio 0). Received: prune_ratios={ratios}")


def validate_macs_fractions(macs_fractions: Sequence[float]) -> None:
    """Checks a student-first list of MAC budgets (fractions of the dense model's MACs).

    Raises:
        ValueError: Not in (0, 1], not strictly increasing, or (with teaching
            assistants) the top assistant's budget is not 1.
    """
    fractions = list(macs_fractions)
    if not fractions or any(not 0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"Every MAC budget must be in (0, 1]. Received: macs_fractions={fractions}")
    if any(a >= b for a, b in zip(fractions, fractions[1:])):
        raise ValueError(f"MAC budgets must increase from the student up. Received: macs_fractions={fractions}")
    if len(fractions) > 1 and fractions[-1] != 1.0:
        raise ValueError(f"The top teaching assistant keeps every filter (budget 1). Received: macs_fractions={fractions}")


def even_macs_fractions(student_fraction: float, num_ta: int) -> List[float]:
    """Student budget F, then num_ta assistants evenly spaced in MACs up to 1."""
    return [student_fraction + (1.0 - student_fraction) * i / num_ta for i in range(num_ta + 1)] if num_ta else [
        student_fraction]


def even_prune_ratios(student_ratio: float, num_ta: int) -> List[float]:
    """Student ratio k0, then num_ta assistants evenly spaced down to 0."""
    if num_ta == 0:
        return [student_ratio]
    return [student_ratio * (num_ta - i) / num_ta for i in range(num_ta + 1)]
