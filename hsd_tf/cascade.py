"""The cascade: a student and its teaching assistants as masked views of one network.

    student T0  <-  T1  <-  ...  <-  TN (keeps every filter)  <-  frozen teacher

The network is any functional or Sequential Keras model, traced into mask
groups and a program (`hsd_tf.graph`). Every layer of a clone of it is shared
by all views, except that each view owns its stem convs (those reading the
images), every normalization layer, the dense head and one score vector per
mask group (docs/method.md section 1). The model handed in is neither changed nor
trained. `Cascade.train_step` trains all views in
one step; the score gradient of view i is the straight-through score gradient
of view i+1 (the paper's Eq. 5, docs/method.md section 3).

Phases (`Cascade.phase`):
  "joint": all views, masks recomputed from the scores every step.
  "frozen": all views, masks frozen (`freeze_masks`), scores untouched.
  "finetune": only the student (shared kernels and its own layers) trains,
      taught by the current rung of the teacher ladder: frozen snapshots of
      T1..TN (`set_ladder`) and finally the pre-trained teacher.

Whom each view learns from in the phases that train every view (`distill_from`):
  "above": view i from view i+1, TN from the pre-trained teacher (the paper).
  "top": every view below TN from TN, the full view (in-place distillation of
      Universally Slimmable Networks and BigNAS); TN from the pre-trained teacher.
  "all": view i from every model above it, views i+1..N and the pre-trained
      teacher, each dropped at random (densely guided KD, Son et al. 2021).
Its masks follow the view above's score gradient (Eq. 5) whatever it learns from.
"""

from typing import List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from hsd_tf import costs, flatten, graph, losses, masks
from hsd_tf import task as task_lib
from hsd_tf.ratios import validate_macs_fractions, validate_prune_ratios

PHASES = ("joint", "frozen", "finetune")
SALIENCIES = ("score", "per_mac")
DISTILL_SOURCES = ("above", "top", "all")
# With distill_from="all", each teacher of a view is kept with this probability at every step; when the draw keeps
# none, the view above teaches alone. Son et al. drop teachers like dropout, at random per step; one half keeps
# each teacher as often as not.
TEACHER_KEEP_PROBABILITY = 0.5


def view_names(num_views: int) -> List[str]:
    return ["student"] + [f"ta{i}" for i in range(1, num_views)]


class View(keras.layers.Layer):
    """The per-view state of one cascade member.

    Args:
        model_trace: `graph.trace` of the full-width model.
        keep_ratio: Fraction of prunable filters this view keeps (when `macs` is None).
        prefix: Layer name prefix ("student_", "ta1_", ...).
        floors: Channels each group keeps whatever its scores (`masks.layer_floors`).
        hysteresis: Score margin by which a dropped filter must beat a kept
            one to take its place (0: plain top-k every step).
        macs: (`costs.MacModel`, budget in MACs): keep filters in score order
            within the budget instead of a fraction of the filters.
        round_to: Every group keeps a multiple of this many channels (`masks.rounded_masks`).
        saliency: "score" ranks raw scores (the paper); "per_mac", with `macs`,
            scores against the MACs each channel costs (`masks.per_mac`).
    """

    def __init__(self, model_trace: graph.Trace, keep_ratio: float, prefix: str, floors=None, hysteresis=0.0,
                 macs=None, round_to=1, saliency="score", **kwargs):
        super().__init__(**kwargs)
        self.keep_ratio = keep_ratio
        self.round_to = int(round_to)
        self.hysteresis = float(hysteresis)
        self.filter_counts = model_trace.filter_counts
        widths = model_trace.group_widths
        self.floors = list(floors) if floors is not None else [1] * len(widths)
        self.mac_model, self.mac_budget = macs if macs is not None else (None, None)
        self.channel_costs = (self.mac_model.channel_costs() if saliency == "per_mac" and macs is not None
                              else None)
        if macs is None:
            masks.check_floors(keep_ratio, self.filter_counts, widths, self.floors)
        else:
            floor_macs = self.mac_model.keeping(self.floors)
            if floor_macs > self.mac_budget:
                raise ValueError(f"The per-layer floors alone cost {floor_macs:,.0f} MACs, more than the budget of "
                                 f"{self.mac_budget:,.0f}; lower the floor or raise the budget. "
                                 f"Received: floors={self.floors}")
        layers = model_trace.layers()
        self.own = {name: clone_layer(layers[name], prefix + name) for name in own_layers(model_trace)}
        self.scores = [self.add_weight(shape=(g.width,), initializer="ones", name=f"score_{g.name}")
                       for g in model_trace.groups]
        # The mask of the last joint step (the hysteresis reference), frozen after the joint phase.
        # Every replica computes the same mask, so the first replica's write stands for all.
        self.last_masks = [
            self.add_weight(shape=(g.width,), initializer="ones", trainable=False, name=f"mask_{g.name}",
                            aggregation="only_first_replica")
            for g in model_trace.groups
        ]

    def hard_masks(self, frozen: bool, fill: bool = False) -> List[tf.Tensor]:
        """0/1 masks: the frozen ones, or the top-k of the current scores.

        With hysteresis, the filters of the last mask rank with a bonus of
        `hysteresis`, so a dropped filter replaces a kept one only once its
        score is higher by that margin. Ranking the scores just stepped from
        the mask they produced gives that mask back, so the mask of a step does
        not depend on how often it is recomputed.

        Under a MAC budget, `fill` also takes the filters that still fit after
        the score order's prefix (`masks.budget_masks`). Only the masks that are
        frozen are filled: the joint phase trains with the prefix alone, so its
        masks move by score as under a filter budget, and the filled filters
        (kernels the assistants trained) join for the phases that follow.
        """
        if frozen:
            return [tf.convert_to_tensor(m) for m in self.last_masks]
        scores = [tf.convert_to_tensor(s) for s in self.scores]
        if self.hysteresis:
            scores = [s + self.hysteresis * tf.cast(m, s.dtype) for s, m in zip(scores, self.last_masks)]
        if self.channel_costs is not None:
            scores = masks.per_mac(scores, self.channel_costs)
        if self.mac_model is not None:
            chosen = masks.budget_masks(scores, self.floors, self.mac_model, self.mac_budget,
                                        fill_rounds=masks.FILL_ROUNDS if fill else 0)
        else:
            chosen = masks.topk_masks(scores, self.filter_counts, self.keep_ratio, self.floors)
        return masks.rounded_masks(chosen, scores, self.round_to) if self.round_to > 1 else chosen

    def remember_masks(self, hard_masks) -> None:
        """Makes `hard_masks` the reference of the next step's hysteresis (and the frozen masks)."""
        for variable, mask in zip(self.last_masks, hard_masks):
            variable.assign(mask)

    def masks(self, frozen: bool, hard_masks=None) -> List[tf.Tensor]:
        """Masks (`hard_masks`, or this step's) with the straight-through gradient into the scores."""
        hard_masks = self.hard_masks(frozen) if hard_masks is None else hard_masks
        return [masks.straight_through(m, s) for m, s in zip(hard_masks, self.scores)]

    def mask_changes(self, before, after) -> tf.Tensor:
        """Filters switched on or off between two sets of hard masks (a shared channel counts per member)."""
        return tf.add_n([tf.reduce_sum(tf.abs(a - b)) * c for a, b, c in zip(after, before, self.filter_counts)])

    def kept_fraction(self, hard_masks) -> tf.Tensor:
        kept = sum(tf.reduce_sum(m) * c for m, c in zip(hard_masks, self.filter_counts))
        total = sum(int(m.shape[0]) * c for m, c in zip(hard_masks, self.filter_counts))
        return kept / total

    def weight_variables(self) -> list:
        """Trainable variables of this view other than its scores."""
        score_ids = {id(s) for s in self.scores}
        return [v for v in self.trainable_variables if id(v) not in score_ids]


@keras.saving.register_keras_serializable("hsd_tf")
class Cascade(keras.Model):
    """Student and teaching assistants trained jointly over one set of kernels.

    Args:
        model: The full-width functional or Sequential Keras model (or its
            serialized config), from its inputs to logits. It is cloned, never changed.
        prune_ratios: Student first, strictly decreasing; with assistants the
            last is 0 (TN keeps every filter).
        macs_fractions: Instead of prune_ratios: each view's budget as a
            fraction of the dense model's MACs, student first, strictly
            increasing, the last 1 with assistants. A view keeps filters in
            score order while its slim model stays within its budget.
        teacher: The pre-trained dense model of the same structure (layer
            names), frozen, teaching the top view. Needed for training, not for
            evaluation or for a ladder snapshot.
        kd_weight: lambda_KD.
        temperature: tau.
        hint_weight: lambda_H (0: no hint loss).
        max_layer_prune_ratio: No mask group loses more than this fraction
            of its channels (`masks.layer_floors`).
        min_layer_filters: No mask group keeps fewer channels than this.
        mask_hysteresis: Score margin by which a dropped filter must beat a
            kept one to switch places with it (0: none).
        unpruned_layers: Layers whose input and output channels stay whole
            (`graph.trace`).
        round_to: Every mask group keeps a multiple of this many channels
            (at least one multiple, or the whole group), within the budget.
        input_shape: One image's shape, for a model whose input has unknown
            dimensions (a keras_hub backbone's `(None, None, 3)`).
        saliency: How channels rank under `macs_fractions`: "score" (the
            paper's raw scores) or "per_mac" (scores against each channel's
            MACs, `masks.per_mac`).
        task: The model's `hsd_tf.task.Task`: its own loss, the distillation
            of its outputs and its metrics. Default: a classifier's
            cross-entropy, KD and accuracy.
        distill_from: Whom each view learns from in the joint and frozen
            phases: "above" (the paper), "top" or "all" (the module's
            docstring).
        seed: Seeds the random teacher drops of distill_from="all"; each
            step's draw depends only on it and the step, so a resumed run
            draws what an uninterrupted one would.

    Raises:
        graph.UnsupportedLayerError: A layer the tracer cannot follow.
        ValueError: Nothing to prune, or bad ratios or floors.
    """

    def __init__(
        self,
        model,
        prune_ratios: Optional[Sequence[float]] = None,
        teacher: Optional[keras.Model] = None,
        kd_weight: float = 0.4,
        temperature: float = 15.0,
        hint_weight: float = 0.0,
        max_layer_prune_ratio: float = 1.0,
        min_layer_filters: int = 1,
        mask_hysteresis: float = 0.0,
        unpruned_layers: Sequence[str] = (),
        macs_fractions: Optional[Sequence[float]] = None,
        round_to: int = 1,
        input_shape: Optional[Sequence[int]] = None,
        saliency: str = "score",
        task: Optional[task_lib.Task] = None,
        distill_from: str = "above",
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(model, dict):
            model = keras.saving.deserialize_keras_object(model)
        if (prune_ratios is None) == (macs_fractions is None):
            raise ValueError("Give either prune_ratios or macs_fractions. "
                             f"Received: prune_ratios={prune_ratios}, macs_fractions={macs_fractions}")
        if prune_ratios is not None:
            validate_prune_ratios(prune_ratios)
        else:
            validate_macs_fractions(macs_fractions)
        trace = graph.trace(model, unpruned_layers, input_shape)
        if not trace.groups:
            raise ValueError(f"Model {model.name!r}: {trace.nothing_prunable()}. "
                             f"Received: unpruned_layers={list(unpruned_layers)}")
        # The flat model's names: a composite layer named by the user stands for every layer inside it.
        self.unpruned_layers = list(trace.unpruned)
        # Not tracked: the source model's weights are not the cascade's. The flat model (`hsd_tf.flatten`)
        # has every name the trace uses and a fixed input size.
        object.__setattr__(self, "source_model", trace.model)
        object.__setattr__(self, "trace", trace)
        self.prune_ratios = None if prune_ratios is None else [float(r) for r in prune_ratios]
        self.macs_fractions = None if macs_fractions is None else [float(f) for f in macs_fractions]
        self.kd_weight = float(kd_weight)
        self.temperature = float(temperature)
        self.hint_weight = float(hint_weight)
        self.max_layer_prune_ratio = float(max_layer_prune_ratio)
        self.min_layer_filters = int(min_layer_filters)
        self.mask_hysteresis = float(mask_hysteresis)
        self.round_to = int(round_to)
        if saliency not in SALIENCIES or (saliency != "score" and macs_fractions is None):
            raise ValueError(f"saliency must be one of {SALIENCIES}, and per_mac needs macs_fractions. "
                             f"Received: saliency={saliency!r}, macs_fractions={macs_fractions}")
        self.saliency = saliency
        if distill_from not in DISTILL_SOURCES:
            raise ValueError(f"distill_from must be one of {DISTILL_SOURCES}. Received: distill_from={distill_from!r}")
        self.distill_from = distill_from
        self.seed = int(seed)
        floors = masks.layer_floors(trace.group_widths, self.max_layer_prune_ratio, self.min_layer_filters)
        if self.round_to > 1:
            floors = masks.rounded_floors(floors, trace.group_widths, self.round_to)
        self.view_names = view_names(len(self.prune_ratios or self.macs_fractions))
        self.phase = "joint"
        self.score_optimizer = None

        own = set(own_layers(trace))
        self.shared = {name: clone_layer(layer, name) for name, layer in trace.layers().items() if name not in own}
        mac_model = costs.MacModel(trace)
        object.__setattr__(self, "mac_model", mac_model)
        if self.macs_fractions is None:
            budgets = [dict(keep_ratio=1.0 - ratio) for ratio in self.prune_ratios]
        else:  # a budget of 1 keeps everything: no search needed
            budgets = [dict(keep_ratio=1.0, macs=(mac_model, f * mac_model.dense) if f < 1.0 else None)
                       for f in self.macs_fractions]
        self.views = [
            View(trace, prefix=f"{name}_", floors=floors, hysteresis=self.mask_hysteresis, round_to=self.round_to,
                 saliency=saliency,
                 name=name, **budget)
            for name, budget in zip(self.view_names, budgets)
        ]
        # Not tracked either: the teacher is frozen, its weights are not checkpointed with the cascade's,
        # and it may be the very model the cascade was cloned from.
        object.__setattr__(self, "teacher", teacher)
        if teacher is not None:
            teacher_trace = (trace if teacher is model
                             else graph.trace(teacher, unpruned_layers, trace.input_shapes))
            object.__setattr__(self, "teacher_trace", teacher_trace)
        if task is None:
            task = task_lib.from_model(trace.model, [None] * len(trace.output_keys), task_lib.default_target_spec())
        object.__setattr__(self, "task", task)
        # The teacher ladder of fine-tuning: its position is state to resume.
        self.ladder_rung = self.add_weight(
            shape=(), initializer="zeros", dtype="int32", trainable=False, name="ladder_rung"
        )
        self._rung = 0
        self._trackers = {}
        for name in self.view_names:
            for key, metric in (
                ("loss", keras.metrics.Mean), ("kept", keras.metrics.Mean), ("ce", keras.metrics.Mean),
                ("kd", keras.metrics.Mean), ("hint", keras.metrics.Mean), ("changes", keras.metrics.Sum),
            ):
                self._trackers[f"{name}_{key}"] = metric(name=f"{name}_{key}")
        self._trackers["loss"] = keras.metrics.Mean(name="loss")
        # The task's compiled metrics, one set per view, built now (in the strategy's scope, outside any step).
        self._view_metrics = {name: task.built_metrics() for name in self.view_names}

        dummy = [tf.zeros((1,) + tuple(shape), dtype) for shape, dtype in zip(trace.input_shapes, trace.input_dtypes)]
        for i in range(len(self.views)):
            self.view_forward(i, dummy, training=False)
        self.built = True

    # ----------------------------------------------------------------- forward

    def view_forward(self, index: int, inputs, training=False, frozen: Optional[bool] = None, hard_masks=None):
        """Logits and hint features of view `index`.

        Args:
            index: 0 for the student, i for TA i.
            inputs: A batch: one tensor, or one per model input.
            training: Normalization (and dropout) mode.
            frozen: Use frozen masks; defaults to the phase's choice.
            hard_masks: The view's 0/1 masks, if already computed; else computed now from its scores.

        Returns:
            (float32 logits: one tensor, or a list of one per output; hints).
        """
        if frozen is None:
            frozen = self.phase != "joint"
        outputs, hints = graph.run(self.trace, keras.tree.flatten(inputs), self.layer_for(index),
                                   self.views[index].masks(frozen, hard_masks), training)
        return _packed(outputs), hints

    def layer_for(self, index: int):
        """Maps a layer of the traced model to view `index`'s: its own stems, normalizations and head, else shared."""
        own = self.views[index].own
        return lambda layer: own.get(layer.name) or self.shared[layer.name]

    def call(self, inputs, training=False):
        """The student's logits."""
        return self.view_forward(0, inputs, training=training)[0]

    # ------------------------------------------------------------------- state

    def initialize_from(self, teacher: keras.Model) -> None:
        """Copies a dense pre-trained model into every view; scores from L1 norms.

        Args:
            teacher: Dense model of this structure, matched by layer name
                (the names of its flat model, `hsd_tf.flatten`).
        """
        source = self._copy_weights(teacher, range(len(self.views)))
        # A channel's score sums the normalised L1 norms of the filters it stands for.
        scores = [np.zeros(g.width, np.float32) for g in self.trace.groups]
        counted = set()
        for weighted in self.trace.weighted:
            if weighted.kind in ("depthwise", "grouped") or weighted.name in counted:
                continue
            counted.add(weighted.name)
            norms = masks.l1_scores(filter_kernel(source[weighted.name], weighted.kind))
            for norm, place in zip(norms, weighted.outputs):
                if place is not None:
                    scores[place[0]][place[1]] += norm
        for view in self.views:
            for variable, score in zip(view.scores, scores):
                variable.assign(score)

    def restart_student_from(self, teacher: keras.Model) -> None:
        """Gives the student the dense pre-trained weights again, under its masks: `--finetune_from=teacher`.

        The shared kernels and the student's own layers are overwritten, so
        call it after the ladder's snapshot (`set_ladder`), which keeps the
        assistants' weights. The masks and every view's scores stay.
        """
        self._copy_weights(teacher, [0])

    def _copy_weights(self, teacher: keras.Model, views) -> dict:
        """Copies the dense model's weights into the shared layers and the own layers of `views` (indices), matched
        by the names of its flat model; returns those layers by name."""
        source = graph.layers_by_name(flatten.flatten(teacher, self.trace.input_shapes[0]).model)
        for name, layer in self.shared.items():
            flatten.set_weights(layer, source[name].get_weights())
        for index in views:
            for name, layer in self.views[index].own.items():
                flatten.set_weights(layer, source[name].get_weights())
        return source

    def freeze_masks(self) -> None:
        """Stores every view's current top-k masks, filled to its MAC budget; later phases use them."""
        for view in self.views:
            view.remember_masks(view.hard_masks(frozen=False, fill=True))

    def recalibrate_batch_norm(self, input_batches, views: Optional[Sequence[int]] = None) -> None:
        """Recomputes the views' BatchNorm statistics under their frozen masks.

        During joint training the masks move, and each view's moving averages
        mix statistics of many masks and of kernels that have since changed: a
        TA that keeps half the filters measured 46% in inference mode and 81%
        with batch statistics (docs/mask_stability.md). As slimmable networks
        do for their widths, the statistics are recomputed for the final masks:
        the exact mean over the given batches, in training mode, with no weight
        touched.

        Args:
            input_batches: Iterable of input batches (training inputs).
            views: Indices of the views to recalibrate (default: every view).
        """
        batches = list(input_batches)
        for index in range(len(self.views)) if views is None else views:
            view = self.views[index]
            norms = [layer for layer in view.own.values() if isinstance(layer, keras.layers.BatchNormalization)]
            momenta = [bn.momentum for bn in norms]
            try:
                for k, inputs in enumerate(batches):
                    for bn in norms:  # a running mean over the batches seen so far
                        bn.momentum = k / (k + 1)
                    self.view_forward(index, inputs, training=True, frozen=True)
            finally:
                for bn, momentum in zip(norms, momenta):
                    bn.momentum = momentum

    def set_phase(self, phase: str) -> None:
        """Switches the phase and forces the step functions to be retraced."""
        if phase not in PHASES:
            raise ValueError(f"Unknown phase; expected one of {PHASES}. Received: {phase!r}")
        self.phase = phase
        self.train_function = self.test_function = self.predict_function = None

    def snapshot(self) -> "Cascade":
        """A frozen copy of the views (no teacher), masks frozen."""
        copy = Cascade(
            self.source_model, self.prune_ratios, kd_weight=self.kd_weight,
            temperature=self.temperature, hint_weight=self.hint_weight,
            max_layer_prune_ratio=self.max_layer_prune_ratio, min_layer_filters=self.min_layer_filters,
            mask_hysteresis=self.mask_hysteresis, unpruned_layers=self.unpruned_layers,
            macs_fractions=self.macs_fractions, round_to=self.round_to, saliency=self.saliency, task=self.task,
            distill_from=self.distill_from, seed=self.seed, name=f"{self.name}_snapshot",
        )
        for key, layer in self.shared.items():
            flatten.set_weights(copy.shared[key], layer.get_weights())
        for view, source in zip(copy.views, self.views):
            view.set_weights(source.get_weights())
        copy.set_phase("frozen")
        copy.trainable = False
        return copy

    def set_ladder(self, snapshot: "Cascade") -> None:
        """Gives fine-tuning its frozen TA snapshots (rungs 0..N-1 are T1..TN).

        Args:
            snapshot: `snapshot()` taken at the end of the frozen-mask phase.
                Only its forward pass is kept, so it is neither trained nor
                saved with this model: the student gets its own copy of the
                weights and the TAs stay as they were.
        """
        object.__setattr__(self, "_ladder_forward", snapshot.view_forward)

    def set_ladder_rung(self, rung: Optional[int] = None) -> None:
        """Moves fine-tuning to teacher `rung` (default: the stored one) and retraces."""
        if rung is None:
            rung = int(self.ladder_rung.numpy())
        self.ladder_rung.assign(rung)
        self._rung = rung
        if self.train_function is not None:  # inside fit: swap the traced step now
            self.make_train_function(force=True)

    @property
    def ladder_rung_value(self) -> int:
        """The fine-tuning teacher's rung: 0..N-1 are T1..TN, N the pre-trained teacher."""
        return self._rung

    def ladder_teacher(self, rung: int, inputs):
        """Logits and hints of the fine-tuning teacher at `rung`."""
        if rung < len(self.views) - 1:
            return self._ladder_forward(rung + 1, inputs, training=False, frozen=True)
        return self.teacher_forward(inputs)

    def teacher_forward(self, inputs):
        """The pre-trained teacher's float32 logits and hints."""
        outputs, hints = graph.run(self.teacher_trace, keras.tree.flatten(inputs), training=False)
        return _packed(outputs), hints

    def hard_masks(self, index: int, frozen: Optional[bool] = None) -> List[np.ndarray]:
        """The 0/1 masks of view `index` as numpy arrays, group order."""
        if frozen is None:
            frozen = self.phase != "joint"
        return [np.asarray(m) for m in self.views[index].hard_masks(frozen)]

    def kept_filters(self, index: int, frozen: Optional[bool] = None) -> dict:
        """Group name -> kept filters of view `index`."""
        return {g: int(m.sum()) for g, m in zip(self.trace.group_names, self.hard_masks(index, frozen))}

    def view_costs(self, frozen: Optional[bool] = None) -> List[dict]:
        """Per view: name, prune ratio, filters kept/total, fewest channels kept by one group, params, MACs,
        MAC fraction of the dense model, and the MAC budget (None when the views prune a fraction of filters).

        With MAC budgets, `prune_ratio` is the fraction of filters the view's mask removed.
        """
        rows = []
        counts = self.trace.filter_counts
        for i, name in enumerate(self.view_names):
            hard = self.hard_masks(i, frozen)
            report = costs.count(self.trace, {g: m > 0 for g, m in zip(self.trace.group_names, hard)})
            kept = int(sum(m.sum() * c for m, c in zip(hard, counts)))
            rows.append({
                "name": name,
                "prune_ratio": (self.prune_ratios[i] if self.prune_ratios is not None
                                else round(1.0 - kept / self.trace.total_filters, 4)),
                "filters_kept": kept,
                "filters_total": self.trace.total_filters,
                "fewest_layer_filters": int(min(m.sum() for m in hard)),
                "params": report["params"],
                "macs": report["macs"],
                "macs_fraction": round(report["macs"] / self.mac_model.dense, 6),
                "macs_target": None if self.macs_fractions is None else self.macs_fractions[i],
            })
        return rows

    # -------------------------------------------------------------- training

    def compile(self, optimizer="sgd", score_optimizer=None, **kwargs):
        """Args: optimizer for the weights, score_optimizer (default RMSprop) for the scores.

        Under the "mixed_float16" policy Keras wraps the weights' optimizer in
        a `LossScaleOptimizer`; the scores' optimizer is wrapped the same way
        and `train_step` keeps the two loss scales equal.
        """
        super().compile(optimizer=optimizer, **kwargs)
        # Built now, over every variable either optimizer may ever update, so a
        # checkpoint's optimizer state always has the structure it is loaded
        # into (a lazily built optimizer would only know the first step's).
        self.optimizer.build(self._weight_variables(range(len(self.views))))
        score_optimizer = keras.optimizers.get(score_optimizer or "rmsprop")
        if self._loss_scaled and not isinstance(score_optimizer, keras.optimizers.LossScaleOptimizer):
            score_optimizer = keras.optimizers.LossScaleOptimizer(score_optimizer)
        self.score_optimizer = score_optimizer
        self.score_optimizer.build([s for v in self.views for s in v.scores])

    @property
    def _loss_scaled(self) -> bool:
        return isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)

    def metric_result(self, name: str) -> float:
        """The current value of one of the cascade's metrics ("student_kd", ...)."""
        return float(self._trackers[name].result())

    @property
    def metrics(self):
        return list(self._trackers.values()) + list(self._view_metrics.values())

    def _active_views(self) -> range:
        return range(1) if self.phase == "finetune" else range(len(self.views))

    def _weight_variables(self, views) -> list:
        """Shared kernels and the non-score trainable variables of `views` (indices)."""
        shared = [v for layer in self.shared.values() for v in layer.trainable_variables]
        return shared + [v for i in views for v in self.views[i].weight_variables()]

    def _teachers(self, index: int, outputs, pretrained):
        """The (logits, hints) of every teacher of view `index` this step (`distill_from`), nearest first.

        Args:
            index: The view.
            outputs: Every active view's (logits, hints).
            pretrained: Returns the pre-trained teacher's (logits, hints), run once per step.
        """
        if self.phase == "finetune":
            return [pretrained("ladder")]
        top = len(outputs) - 1
        if index == top:
            return [pretrained("teacher")]
        if self.distill_from == "above":
            return [outputs[index + 1]]
        if self.distill_from == "top":
            return [outputs[top]]
        return list(outputs[index + 1:]) + [pretrained("teacher")]

    def _teacher_weights(self, index: int, count: int):
        """Each teacher's weight in view `index`'s loss this step: 1 for one teacher; with several, those kept by
        a draw (each with TEACHER_KEEP_PROBABILITY; the nearest alone when none is) share it equally."""
        if count == 1:
            return [1.0]
        step = tf.cast(self.optimizer.iterations, tf.int32)
        draw = tf.random.stateless_uniform([count], seed=tf.stack([self.seed, step * len(self.views) + index]))
        kept = tf.cast(draw < TEACHER_KEEP_PROBABILITY, tf.float32)
        kept = tf.where(tf.reduce_sum(kept) > 0, kept, tf.one_hot(0, count))
        weights = kept / tf.reduce_sum(kept)
        return [weights[j] for j in range(count)]

    def train_step(self, data):
        inputs, targets, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        active = self._active_views()
        frozen = self.phase != "joint"
        weights = self._weight_variables(active)
        scores = [] if frozen else [s for i in active for s in self.views[i].scores]
        # Every view's masks are read once, before anything is written: the forward pass, the gradients and
        # the count of mask changes all use them. A score update must never reach a view's forward pass of the
        # same step (Eq. 5 steps view i along view i+1's gradient *at its current mask*); the explicit
        # dependency below guarantees it whatever order the runtime picks for independent ops.
        hard = [self.views[i].hard_masks(frozen) for i in active]
        with tf.GradientTape() as tape:
            outputs = [self.view_forward(i, inputs, training=True, hard_masks=hard[i]) for i in active]
            pretrained = self._pretrained_once(inputs)
            terms = [self._view_loss(i, outputs, pretrained, targets, sample_weight) for i in active]
            total = tf.add_n([t["loss"] for t in terms])
            scaled_total = self.optimizer.scale_loss(total)
        # A mask gathered from its group's scores (a concatenation's) has a sparse gradient.
        grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
                 for g in tape.gradient(scaled_total, weights + scores)]
        if self._loss_scaled:
            grads = _one_overflow_decision(grads)
        with tf.control_dependencies([total] + [m for view_masks in hard for m in view_masks]):
            self.optimizer.apply(grads[: len(weights)], weights)
            if not frozen:
                self._apply_score_gradients(grads[len(weights):])
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        # Frozen masks do not move; joint ones are read again after the score update.
        current = hard if frozen else [self.views[i].hard_masks(False) for i in active]
        if not frozen:
            for i in active:
                if self.mask_hysteresis:
                    self.views[i].remember_masks(current[i])
                # Sum metrics add up over replicas, which all see the same masks.
                changes = self.views[i].mask_changes(hard[i], current[i])
                self._trackers[f"{self.view_names[i]}_changes"].update_state(changes / replicas)
        for i in active:
            name = self.view_names[i]
            for key in ("loss", "ce", "kd", "hint"):
                self._trackers[f"{name}_{key}"].update_state(terms[i][key] * replicas)
            self.task.update(self._view_metrics[name], targets, keras.tree.flatten(outputs[i][0]), sample_weight)
            self._trackers[f"{name}_kept"].update_state(self.views[i].kept_fraction(current[i]))
        self._trackers["loss"].update_state(total * replicas)
        return self._logs(active, frozen)

    def _pretrained_once(self, inputs):
        """`pretrained(kind)`: the (logits, hints) of the frozen pre-trained teacher ("teacher") or of the
        ladder's rung ("ladder") on `inputs`, run at most once per step however many views learn from it."""
        found = {}

        def pretrained(kind):
            if kind not in found:
                if kind == "ladder":
                    found[kind] = self.ladder_teacher(self._rung, inputs)
                elif self.teacher is None:
                    raise ValueError("Training the top view needs the pre-trained teacher; pass teacher=.")
                else:
                    found[kind] = self.teacher_forward(inputs)
            return found[kind]

        return pretrained

    def _view_loss(self, index: int, outputs, pretrained, targets, sample_weight) -> dict:
        """View `index`'s loss terms: the pair loss against each of its teachers, averaged with their weights (the
        model's own loss is the same in each, so it keeps its weight)."""
        teachers = self._teachers(index, outputs, pretrained)
        terms = [losses.pair_loss(targets, outputs[index][0], logits, outputs[index][1], hints,
                                  kd_weight=self.kd_weight, temperature=self.temperature,
                                  hint_weight=self.hint_weight, task=self.task, sample_weight=sample_weight)
                 for logits, hints in teachers]
        if len(terms) == 1:
            return terms[0]
        weights = self._teacher_weights(index, len(terms))
        return {key: tf.add_n([w * t[key] for w, t in zip(weights, terms)]) for key in terms[0]}

    def _apply_score_gradients(self, score_grads) -> None:
        """Eq. 5: view i's scores step along view i+1's score gradient."""
        per_view = len(self.trace.groups)
        grads = [score_grads[i * per_view:(i + 1) * per_view] for i in range(len(self.views))]
        if len(self.views) == 1:
            pairs = list(zip(grads[0], self.views[0].scores))
        else:
            pairs = [
                (g, s)
                for i in range(len(self.views) - 1)
                for g, s in zip(grads[i + 1], self.views[i].scores)
            ]
        self.score_optimizer.apply([g for g, _ in pairs], [s for _, s in pairs])

    def test_step(self, data):
        inputs, targets, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        active = self._active_views()
        frozen = self.phase != "joint"
        for i in active:
            logits, _ = self.view_forward(i, inputs, training=False)
            name = self.view_names[i]
            self.task.update(self._view_metrics[name], targets, keras.tree.flatten(logits), sample_weight)
            self._trackers[f"{name}_kept"].update_state(self.views[i].kept_fraction(self.views[i].hard_masks(frozen)))
        logs = {}
        for i in active:
            logs.update(self._metric_logs(self.view_names[i]))
            logs[f"{self.view_names[i]}_kept"] = self._trackers[f"{self.view_names[i]}_kept"].result()
        return logs

    def _metric_logs(self, name: str) -> dict:
        """View `name`'s task metrics under their log names (`student_acc`, `student_mean_io_u`, ...)."""
        return {f"{name}_{self.task.log_name(key)}": value for key, value in self._view_metrics[name].result().items()}

    def metric_name(self, view: str = "student") -> str:
        """The log key of a view's primary metric (what `evaluate` and the teacher ladder report)."""
        return f"{view}_{self.task.log_name()}"

    def _logs(self, active, frozen) -> dict:
        logs = {"loss": self._trackers["loss"].result()}
        for i in active:
            name = self.view_names[i]
            logs[f"{name}_loss"] = self._trackers[f"{name}_loss"].result()
            logs.update(self._metric_logs(name))
            logs[f"{name}_kept"] = self._trackers[f"{name}_kept"].result()
            if not frozen:
                logs[f"{name}_changes"] = self._trackers[f"{name}_changes"].result()
        return logs

    def get_config(self):
        return {
            **super().get_config(),
            "model": keras.saving.serialize_keras_object(self.source_model),
            "prune_ratios": self.prune_ratios,
            "kd_weight": self.kd_weight,
            "temperature": self.temperature,
            "hint_weight": self.hint_weight,
            "max_layer_prune_ratio": self.max_layer_prune_ratio,
            "min_layer_filters": self.min_layer_filters,
            "mask_hysteresis": self.mask_hysteresis,
            "unpruned_layers": self.unpruned_layers,
            "macs_fractions": self.macs_fractions,
            "round_to": self.round_to,
            "saliency": self.saliency,
            "distill_from": self.distill_from,
            "seed": self.seed,
        }


def _one_overflow_decision(grads: list) -> list:
    """Makes every gradient non-finite when any is (float16 loss scaling).

    The weights and the scores have a `LossScaleOptimizer` each, and each
    skips its step and halves its scale when one of its own gradients
    overflows. Deciding once for all gradients keeps the two scales equal
    (same start, same growth), so the scores are unscaled by the scale the
    loss was multiplied with, and both steps are skipped together.
    """
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None])
    poison = tf.where(finite, 0.0, float("nan"))
    return [None if g is None else g + tf.cast(poison, g.dtype) for g in grads]


def own_layers(model_trace: graph.Trace) -> List[str]:
    """Layers each view has its own copy of: stems, normalizations and the dense head."""
    return list(dict.fromkeys(model_trace.stems + model_trace.normalizations + model_trace.head))


def clone_layer(layer: keras.layers.Layer, name: str) -> keras.layers.Layer:
    """A new, unbuilt layer of `layer`'s config, under the current dtype policy.

    The policy is the run's (--mixed_precision), whatever the model was saved
    with. A BatchNormalization is synchronized across replicas when there are
    several, as the built-in architectures' are. A Lambda layer is shared
    as it is: it holds no weights, and Keras refuses to rebuild a Python
    function from a config; so is any other weightless layer that cannot be
    rebuilt.

    Raises:
        graph.UnsupportedLayerError: A layer that cannot be rebuilt from its
            config: the cascade trains copies, never the model's own layers.
    """
    if isinstance(layer, keras.layers.Lambda):
        return layer
    changes = {"name": name, "dtype": keras.config.dtype_policy().name}
    if isinstance(layer, keras.layers.BatchNormalization) and tf.distribute.get_strategy().num_replicas_in_sync > 1:
        changes["synchronized"] = True
    try:
        return flatten.rebuilt(layer, **changes)
    except Exception as error:  # pylint: disable=broad-except  (whatever the class raises)
        if not layer.weights:  # nothing to train: the layer itself serves every view
            return layer
        raise graph.UnsupportedLayerError(
            f"Layer {layer.name!r} ({type(layer).__name__}) cannot be rebuilt from its config "
            f"({' '.join(str(error).split())[:200]}); hsd_tf trains copies of a model's layers, never the layers "
            "themselves.") from None


def filter_kernel(layer: keras.layers.Layer, kind: str) -> np.ndarray:
    """The kernel of a conv or dense layer with its output filters on the last axis."""
    if kind == "separable":
        return layer.get_weights()[1]  # the pointwise kernel makes the output filters
    kernel = layer.get_weights()[0]
    return np.swapaxes(kernel, -1, -2) if kind == "transpose" else kernel


def _float32(logits):
    if keras.backend.standardize_dtype(logits.dtype) != "float32":
        logits = keras.ops.cast(logits, "float32")  # mixed precision: softmax and losses need the range
    return logits


def _packed(outputs: list):
    """float32 outputs as Keras gives a model's: the one tensor, or the list."""
    outputs = [_float32(o) for o in outputs]
    return outputs[0] if len(outputs) == 1 else outputs
