"""Training compute: what each method's phases cost, and the epochs that give a baseline the cascade's compute.

The unit is the *plain step*: one forward and backward pass of one batch through one model, what training the
dense model alone costs per step. A forward pass alone (a frozen teacher's, for distillation) counts as a third of
one, the usual rule that a backward pass costs about twice its forward pass. So, per training step:

    hsd joint and frozen phases   N + 1 views trained, the frozen teacher run once:  N + 4/3 plain steps
    hsd fine-tuning, l1           the student trained, one teacher run:                   4/3
    scratch                       the student trained, no teacher:                         1

The cascade's views are masked views of the full-width network, so each costs a full-width pass in time on this
implementation whatever its mask (and so does l1's student); scratch trains its slim network. The plain-step
count is the work as the method defines it, the measured seconds (`TrainingClock`) what this implementation
spent; both go in results.json. Evaluation and BatchNorm recalibration passes are not counted: they are a few
percent of a phase and the same for every method.

Liu et al. ("Rethinking the value of network pruning", ICLR 2019) show that a baseline given the pruning
method's compute (their Scratch-B) is the one to beat, so `--equal=compute` trains l1 and scratch for the epochs
whose plain steps match the cascade's of the same flags (rounded to the nearest epoch).
"""

from typing import Dict, List

FORWARD_COST = 1.0 / 3.0  # a forward pass, in forward-backward passes


def steps_cost(method: str, phase: str, num_ta: int = 0) -> Dict[str, float]:
    """Per training step of `phase` of `method`: models trained (forward and backward) and forwards only."""
    if method == "hsd" and phase in ("joint", "frozen"):
        return {"forward_backward": num_ta + 1, "forward": 1}
    if phase == "finetune":  # hsd's student with its ladder teacher; l1's student with the pre-trained teacher
        return {"forward_backward": 1, "forward": 1}
    if phase == "scratch":
        return {"forward_backward": 1, "forward": 0}
    raise ValueError(f"No phase {phase!r} in --method={method}")


def baseline_phase(method: str) -> str:
    """The one phase l1 or scratch trains after the teacher (`hsd_tf.training.METHOD_PHASES`)."""
    return "scratch" if method == "scratch" else "finetune"


def plain_steps_per_step(method: str, phase: str, num_ta: int = 0) -> float:
    cost = steps_cost(method, phase, num_ta)
    return cost["forward_backward"] + FORWARD_COST * cost["forward"]


def cascade_plain_epochs(joint_epochs: int, frozen_epochs: int, finetune_epochs: int, num_ta: int) -> float:
    """The cascade's training after its teacher, in epochs of plain steps."""
    return ((joint_epochs + frozen_epochs) * plain_steps_per_step("hsd", "joint", num_ta)
            + finetune_epochs * plain_steps_per_step("hsd", "finetune"))


def equal_compute_epochs(method: str, joint_epochs: int, frozen_epochs: int, finetune_epochs: int,
                         num_ta: int) -> int:
    """Epochs of `method` (l1 or scratch) whose plain steps are closest to the cascade's of these settings."""
    cascade = cascade_plain_epochs(joint_epochs, frozen_epochs, finetune_epochs, num_ta)
    return max(1, round(cascade / plain_steps_per_step(method, baseline_phase(method))))


def plain_epochs(config) -> float:
    """A run's training after its teacher in epochs of plain steps (`hsd_tf.config.Config`: its method, epochs,
    assistants and `equal`)."""
    if config.method == "hsd":
        return cascade_plain_epochs(config.joint_epochs, config.frozen_epochs, config.finetune_epochs, config.num_ta)
    return config.baseline_epochs() * plain_steps_per_step(config.method, baseline_phase(config.method))


def phase_cost(method: str, phase: str, epochs: int, steps_per_epoch: int, num_ta: int,
               seconds: float) -> Dict[str, float]:
    """One phase's results entry: epochs, steps, passes, plain steps and the seconds its epochs took."""
    cost = steps_cost(method, phase, num_ta)
    steps = epochs * steps_per_epoch
    return {"epochs": epochs, "steps": steps, "forward_backward": steps * cost["forward_backward"],
            "forward": steps * cost["forward"],
            "plain_steps": round(steps * plain_steps_per_step(method, phase, num_ta), 1),
            "seconds": round(seconds, 1)}


def total(phases: List[dict]) -> Dict[str, float]:
    """The sums of phase entries' passes, plain steps and seconds."""
    return {key: round(sum(p[key] for p in phases), 1)
            for key in ("steps", "forward_backward", "forward", "plain_steps", "seconds")}
