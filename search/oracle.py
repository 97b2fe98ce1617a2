"""Constrained Keras Tuner oracles: evolution (docs/method.md#search) and a random-search baseline.

Both oracles register the whole space up front (``tune_new_entries=False``,
``allow_new_entries=False``), only ever emit archs that satisfy the constraints (a latency budget
in ms under a predictor and/or a FLOPs window), dedupe through Keras Tuner's values hash, and
give up with ``TrialStatus.STOPPED`` after bounded retries (no ``while True``: an infeasible
budget ends the search instead of hanging it).

The evolution follows docs/method.md#search generation by generation: generation 0 is the initial
population (memory-bank archs first, then random in-constraint archs); every later generation emits
``population - parents`` children, half mutations and half crossovers of parents drawn from the
current top-``parents`` completed trials. While a generation's trials are still running on other
workers the oracle answers ``IDLE``. The generation bookkeeping, the RNG state and the constraints
are part of ``oracle.json`` (``get_state``/``set_state`` extend the base state), so re-running a
project resumes it.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable, Optional, Sequence, Union

import keras_tuner
import numpy as np
from keras_tuner.engine.trial import TrialStatus

from elasticvit_tf.arch import ArchConfig, StageArch, StemArch
from elasticvit_tf.fileio import write_json_atomic
from elasticvit_tf.flops import count_flops
from elasticvit_tf.search import hyperparameters as hp_lib
from elasticvit_tf.search.budgets import LatencyBudgets
from elasticvit_tf.search.evaluator import arch_fn
from elasticvit_tf.space import SearchSpace

logger = logging.getLogger(__name__)

Predictor = Union[Callable[[ArchConfig], float], Any]  # a callable or an object with .predict()
_STATE_KEY = "elasticvit"
_DONE = (TrialStatus.COMPLETED, TrialStatus.FAILED)


def _predict_fn(predictor: Optional[Predictor]) -> Optional[Callable[[ArchConfig], float]]:
    return None if predictor is None else arch_fn(predictor, "predict", "predictor", "ms")


def _check_mflops_range(mflops_range) -> Optional[tuple[float, float]]:
    if mflops_range is None:
        return None
    try:
        lo, hi = (float(v) for v in mflops_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"mflops_range={mflops_range!r}: expected two numbers (lo, hi) in MFLOPs"
        ) from None
    if not (0 <= lo <= hi) or not math.isfinite(hi):
        raise ValueError(f"mflops_range=({lo}, {hi}): expected finite 0 <= lo <= hi")
    return (lo, hi)


def check_feasible(
    space: SearchSpace,
    predictor: Optional[Predictor] = None,
    latency_budgets: LatencyBudgets = LatencyBudgets(),
    mflops_range: Optional[Sequence[float]] = None,
) -> None:
    """Raises ``ValueError`` when the constraints exclude every subnet of ``space``.

    Checked on the extreme archs: the smallest subnet must fit every budget and the FLOPs
    window must overlap ``[FLOPs(min arch), FLOPs(max arch)]``. Passing this check does not
    guarantee that both constraints can hold at once; the oracles then stop after bounded
    retries.
    """
    window = _check_mflops_range(mflops_range)
    smallest = space.min_arch()
    latency_budget_ms = latency_budgets.smallest_ms
    if latency_budget_ms is not None:
        predict = _predict_fn(predictor)
        if predict is None:
            raise ValueError("a latency budget is set but no latency predictor was given")
        lat = float(predict(smallest))
        if latency_budget_ms < lat:
            mode = getattr(predictor, "mode", "?")
            raise ValueError(
                f"latency budget {latency_budget_ms:g} ms is below the smallest subnet's "
                f"predicted latency {lat:.4g} ms (space '{space.name}', mode '{mode}'): "
                f"expected a budget >= {lat:.4g} ms"
            )
    if window is not None:
        fmin, fmax = count_flops(space, smallest), count_flops(space, space.max_arch())
        if window[1] < fmin or window[0] > fmax:
            raise ValueError(
                f"mflops_range=({window[0]:g}, {window[1]:g}) does not overlap the FLOPs of "
                f"space '{space.name}': expected a window inside [{fmin:.4g}, {fmax:.4g}] MFLOPs"
            )


class ConstrainedOracleBase(keras_tuner.Oracle):
    """Shared constraint checks, dedupe, state and crash-safe persistence.

    Args:
        space: the ``SearchSpace`` searched.
        predictor: latency predictor (``predict(arch) -> ms``, or a callable); required with
            latency budgets, otherwise optional (only used for reporting).
        latency_budgets: the budgets (``LatencyBudgets``); the constraint on the predicted
            latency is the largest. Several budgets are searched at once: random draws cycle
            through them (draw ``i`` must also fit ``budgets[i % n]``), so every budget gets
            candidates even when it admits a small share of the space; the evolution oracle
            also picks its parents per budget (stratum). Empty: no latency constraint.
        mflops_range: optional ``(lo, hi)`` window on the analytic FLOPs (MFLOPs).
        max_trials: number of trials (archs evaluated) in total.
        seed: integer seed of the oracle's NumPy generator (spec default 2012).
        max_attempts: bounded random draws per emitted trial before giving up with ``STOPPED``.
        max_retries_per_trial, max_consecutive_failed_trials: as in ``keras_tuner.Oracle``.
    """

    def __init__(
        self,
        space: SearchSpace,
        predictor: Optional[Predictor] = None,
        latency_budgets: LatencyBudgets = LatencyBudgets(),
        mflops_range: Optional[Sequence[float]] = None,
        max_trials: int = 100,
        seed: int = 2012,
        max_attempts: int = 1000,
        max_retries_per_trial: int = 0,
        max_consecutive_failed_trials: int = 3,
    ):
        if not isinstance(space, SearchSpace):
            raise ValueError(f"space: expected a SearchSpace, got {type(space).__name__}")
        if not isinstance(latency_budgets, LatencyBudgets):
            raise ValueError(
                f"latency_budgets: expected a LatencyBudgets, got {type(latency_budgets).__name__}"
            )
        if latency_budgets and predictor is None:
            raise ValueError(
                f"latency budgets {latency_budgets.to_list()} ms are set but no latency "
                "predictor was given"
            )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed={seed!r}: expected a non-negative integer")
        if not isinstance(max_trials, int) or max_trials < 1:
            raise ValueError(f"max_trials={max_trials!r}: expected a positive integer")
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts={max_attempts!r}: expected a positive integer")
        super().__init__(
            objective=keras_tuner.Objective("top1", "max"),
            max_trials=max_trials,
            hyperparameters=hp_lib.build_hyperparameters(space),
            allow_new_entries=False,
            tune_new_entries=False,
            seed=int(seed),
            max_retries_per_trial=max_retries_per_trial,
            max_consecutive_failed_trials=max_consecutive_failed_trials,
        )
        self.seed = int(seed)  # the base class replaces a seed of 0 by a random one
        self.space = space
        self.predictor = predictor
        self.latency_budgets = latency_budgets
        self.latency_budget_ms = latency_budgets.constraint_ms
        self.mflops_range = _check_mflops_range(mflops_range)
        self.max_attempts = max_attempts
        self.budget_strata_ms = latency_budgets.strata_ms
        self._random_draws = 0  # random draws issued (the stratum of the next one)
        self._predict = _predict_fn(predictor)
        self._rng = np.random.default_rng(self.seed)
        self.rejections = 0  # candidates refused by the constraints (reported)
        self.stop_reason: Optional[str] = None

    # ------------------------------------------------------------------------ constraints
    def predict_latency(self, arch: ArchConfig) -> Optional[float]:
        return None if self._predict is None else float(self._predict(arch))

    def constraint_violation(self, arch: ArchConfig) -> Optional[str]:
        """``None`` when ``arch`` satisfies every constraint, else a short reason."""
        if self.mflops_range is not None:
            f = count_flops(self.space, arch)
            if not self.mflops_range[0] <= f <= self.mflops_range[1]:
                return f"{f:.4g} MFLOPs outside {self.mflops_range}"
        if self.latency_budget_ms is not None:
            lat = self.predict_latency(arch)
            if lat > self.latency_budget_ms:
                return f"{lat:.4g} ms over the {self.latency_budget_ms:g} ms budget"
        return None

    def _accept(self, arch: Optional[ArchConfig]) -> Optional[dict[str, int]]:
        """Values of ``arch`` if it is new and satisfies the constraints, else ``None``."""
        if arch is None or not self.space.contains(arch):
            return None
        if self.constraint_violation(arch) is not None:
            self.rejections += 1
            return None
        values = hp_lib.arch_to_values(self.space, arch)
        if self._duplicate(values):
            return None
        return values

    def _random_arch(self) -> ArchConfig:
        return self.space.sample(self._rng)

    def _next_limit(self) -> Optional[float]:
        """The stratum budget of the next random draw (None without strata)."""
        if not self.budget_strata_ms:
            return None
        limit = self.budget_strata_ms[self._random_draws % len(self.budget_strata_ms)]
        self._random_draws += 1
        return limit

    def _fits(self, arch: ArchConfig, limit: Optional[float]) -> bool:
        return limit is None or self._predict(arch) <= limit

    def _draw_random(self, limit: Optional[float]) -> Optional[dict[str, int]]:
        """A new in-constraint random arch that also fits ``limit`` (a stratum budget)."""
        for _ in range(self.max_attempts):
            arch = self._random_arch()
            if not self._fits(arch, limit):
                continue
            values = self._accept(arch)
            if values is not None:
                return values
        return None

    def stratum(self, arch: ArchConfig) -> Optional[int]:
        """Index of the smallest budget stratum ``arch`` fits (None: no strata, or none)."""
        if not self.budget_strata_ms:
            return None
        lat = self._predict(arch)
        for i, b in enumerate(self.budget_strata_ms):
            if lat <= b:
                return i
        return None

    def _stop(self, reason: str) -> dict:
        self.stop_reason = reason
        logger.warning("oracle stops: %s", reason)
        return {"status": TrialStatus.STOPPED, "values": None}

    def trial_arch(self, trial) -> ArchConfig:
        return hp_lib.values_to_arch(self.space, trial.hyperparameters.values)

    # ------------------------------------------------------------------------------ state
    def _constraint_state(self) -> dict:
        return {
            "oracle": type(self).__name__,
            "space": self.space.name,
            "space_hash": self.space.fingerprint(),
            "latency_budget_ms": self.latency_budget_ms,
            "mflops_range": None if self.mflops_range is None else list(self.mflops_range),
            "latency_mode": getattr(self.predictor, "mode", None),
            **({"budget_strata_ms": list(self.budget_strata_ms)} if self.budget_strata_ms else {}),
        }

    def get_state(self):
        state = super().get_state()
        own = self._constraint_state()
        own.update(
            rng=self._rng.bit_generator.state,
            rejections=self.rejections,
            stop_reason=self.stop_reason,
            random_draws=self._random_draws,
        )
        state[_STATE_KEY] = own
        return state

    def set_state(self, state):
        super().set_state(state)
        own = state.get(_STATE_KEY)
        if own is None:
            raise ValueError("oracle.json has no ElasticViT oracle state: not a project of ours")
        want = self._constraint_state()
        for k, v in want.items():
            if own.get(k) != v:
                raise ValueError(
                    f"cannot resume project {self._project_dir!r}: it was created with "
                    f"{k}={own.get(k)!r}, this run has {k}={v!r}; use the same settings or "
                    "another --project_name"
                )
        self._rng.bit_generator.state = own["rng"]
        self.rejections = int(own.get("rejections", 0))
        self.stop_reason = own.get("stop_reason")
        self._random_draws = int(own.get("random_draws", 0))

    @keras_tuner.synchronized
    def end_trial(self, trial):
        super().end_trial(trial)
        # The base class saves before it pops the trial from ``ongoing_trials``: save again so
        # that oracle.json never shows a finished trial as running (a chief has no later save).
        self.save()

    def save(self):
        write_json_atomic(self._get_oracle_fname(), self.get_state(), indent=None)

    def _save_trial(self, trial):
        path = os.path.join(self._get_trial_dir(trial.trial_id), "trial.json")
        write_json_atomic(path, trial.get_state(), indent=None)

    def reload(self):
        """Base reload, then repair what a kill between two file writes can leave behind.

        ``oracle.json`` and ``trial_*/trial.json`` are written one after the other, so after a
        SIGKILL a finished trial may still be listed as ongoing (it must not run again) and a
        just-created trial may be missing from ``oracle.json`` (it must not be lost).
        """
        super().reload()
        retry = []
        for tid in self._retry_queue:
            if tid in self.trials and self.trials[tid].status not in _DONE and tid not in retry:
                retry.append(tid)
        for tid in sorted(self.trials):
            trial = self.trials[tid]
            if tid not in self.start_order:
                self.start_order.append(tid)
            if trial.status in _DONE:
                if tid not in self.end_order:
                    self.end_order.append(tid)
            elif tid not in retry and tid not in self.end_order:
                retry.append(tid)
            self._record_values(trial)
        self._retry_queue = retry
        self._after_reload()

    def _after_reload(self):
        pass


class ConstrainedRandomOracle(ConstrainedOracleBase):
    """Baseline: uniform archs from the space (``space.sample``), constraints by rejection."""

    def populate_space(self, trial_id):
        values = self._draw_random(self._next_limit())
        if values is None:
            return self._stop(
                f"no new arch satisfying the constraints in {self.max_attempts} random draws"
            )
        return {"status": TrialStatus.RUNNING, "values": values}


class ConstrainedEvolutionOracle(ConstrainedOracleBase):
    """Evolutionary search of docs/method.md#search under a latency budget and/or a FLOPs window.

    Args:
        space, predictor: see ``ConstrainedOracleBase``; its other arguments (the budgets,
            the FLOPs window, ``max_trials``, ``seed``, ...) are passed on as keywords.
        population: size of the initial population and of every later population
            (spec: 512).
        parents: top-k completed trials used as parents (spec: 256); every generation after the
            first emits ``population - parents`` children, half mutations, half crossovers.
        mutation_prob: per-dimension mutation probability (spec m_prob 0.2).
        depth_mutation_prob: probability of redrawing every stage depth (spec s_prob 0.4).
        uniform_prob: a mutated value is drawn uniformly with this probability, else the
            smallest choice is taken (spec 0.45 / 0.55). Resolution is always drawn uniformly.
        initial_archs: optional archs that open the initial population (the trained memory
            banks); those outside the space or the constraints are skipped.
        operator_attempts: tries of mutation, then of crossover, for one child before falling
            back to a random in-constraint arch (spec: each generator gives up after bounded
            attempts).
    """

    def __init__(
        self,
        space: SearchSpace,
        predictor: Optional[Predictor] = None,
        *,
        population: int = 32,
        parents: int = 16,
        mutation_prob: float = 0.2,
        depth_mutation_prob: float = 0.4,
        uniform_prob: float = 0.45,
        initial_archs: Sequence[ArchConfig] = (),
        operator_attempts: int = 50,
        **kwargs,
    ):
        super().__init__(space, predictor, **kwargs)
        if not isinstance(population, int) or population < 2:
            raise ValueError(f"population={population!r}: expected an integer >= 2")
        if not isinstance(parents, int) or not 1 <= parents < population:
            raise ValueError(
                f"parents={parents!r}: expected an integer in [1, population={population})"
            )
        for name, p in (
            ("mutation_prob", mutation_prob),
            ("depth_mutation_prob", depth_mutation_prob),
            ("uniform_prob", uniform_prob),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name}={p!r}: expected a probability in [0, 1]")
        if not isinstance(operator_attempts, int) or operator_attempts < 1:
            raise ValueError(f"operator_attempts={operator_attempts!r}: expected an integer >= 1")
        self.operator_attempts = operator_attempts
        self.population = population
        self.parents = parents
        self.mutation_prob = float(mutation_prob)
        self.depth_mutation_prob = float(depth_mutation_prob)
        self.uniform_prob = float(uniform_prob)
        self.initial_archs = tuple(initial_archs)
        self.generation = 0
        self.trial_generation: dict[str, int] = {}
        self.current_parents: list[str] = []  # trial ids of the current parents (top-k)
        self._seeds_used: set[int] = set()  # initial_archs entries already tried

    # ------------------------------------------------------------------------ generations
    def _quota(self, generation: int) -> int:
        return self.population if generation == 0 else self.population - self.parents

    def _issued(self, generation: int) -> list[str]:
        return [t for t, g in self.trial_generation.items() if g == generation]

    def _top_trials(self, k: int) -> list[str]:
        done = [
            t
            for t in self.trials.values()
            if t.status == TrialStatus.COMPLETED and t.score is not None
        ]
        done.sort(key=lambda t: (-t.score, t.trial_id))
        if not self.budget_strata_ms:
            return [t.trial_id for t in done[:k]]
        # Per stratum (latency band) its best k / n trials, then the best of the rest: the
        # tight budgets keep parents even when the loose ones hold the highest scores.
        bands: dict[Optional[int], list[str]] = {}
        for t in done:
            bands.setdefault(self.stratum(self.trial_arch(t)), []).append(t.trial_id)
        share = max(1, k // len(self.budget_strata_ms))
        picked = [
            tid for i in range(len(self.budget_strata_ms)) for tid in bands.get(i, [])[:share]
        ]
        picked += [t.trial_id for t in done if t.trial_id not in picked]
        return picked[:k]

    def _advance(self) -> bool:
        """Moves to the next generation when the current one is complete; False = wait."""
        ended = set(self.end_order)
        while len(self._issued(self.generation)) >= self._quota(self.generation):
            if not all(t in ended for t in self._issued(self.generation)):
                return False
            self.generation += 1
            self.current_parents = self._top_trials(self.parents)
            logger.info(
                "generation %d: %d parents, best top1 %s",
                self.generation,
                len(self.current_parents),
                self.trials[self.current_parents[0]].score if self.current_parents else None,
            )
        return True

    def populate_space(self, trial_id):
        if not self._advance():
            return {"status": TrialStatus.IDLE, "values": None}
        if self.generation == 0:
            values = self._draw_initial()
        else:
            values = self._draw_child(len(self._issued(self.generation)))
        if values is None:
            return self._stop(
                f"generation {self.generation}: no new arch satisfying the constraints after "
                f"bounded retries ({self.max_attempts} per generator)"
            )
        self.trial_generation[trial_id] = self.generation
        return {"status": TrialStatus.RUNNING, "values": values}

    def _draw_initial(self) -> Optional[dict[str, int]]:
        # The seed archs open the population in order; with strata, each draw takes the first
        # unused seed arch that fits its stratum, else a random arch of that stratum.
        limit = self._next_limit()
        for i, arch in enumerate(self.initial_archs):
            if i in self._seeds_used or not self._fits(arch, limit):
                continue
            self._seeds_used.add(i)
            values = self._accept(arch)
            if values is not None:
                return values
        return self._draw_random(limit)

    def _draw_child(self, index: int) -> Optional[dict[str, int]]:
        parent_archs = [self.trial_arch(self.trials[t]) for t in self.current_parents]
        if not parent_archs:  # every earlier trial failed: keep exploring at random
            return self._draw_random(self._next_limit())
        quota = self._quota(self.generation)
        first, second = (
            (self.mutate, self.crossover)
            if index < (quota + 1) // 2
            else (self.crossover, self.mutate)
        )
        for gen in (first, second):
            for _ in range(self.operator_attempts):
                values = self._accept(gen(parent_archs))
                if values is not None:
                    return values
        return self._draw_random(self._next_limit())

    # ------------------------------------------------------------------------- operators
    def _draw(self, choices: Sequence[int]) -> int:
        """docs/method.md#search: uniform with probability ``uniform_prob``, else the smallest
        choice."""
        choices = sorted(choices)
        if self._rng.random() < self.uniform_prob:
            return int(choices[int(self._rng.integers(len(choices)))])
        return int(choices[0])

    def mutate(self, parents: Sequence[ArchConfig]) -> ArchConfig:
        """Stage-wise mutation of a random parent (docs/method.md#search, official bugs fixed)."""
        rng, p = self._rng, self.mutation_prob
        parent = parents[int(rng.integers(len(parents)))]
        resolution = parent.resolution
        if rng.random() < p:
            # FIX (docs/method.md#bugs-fixed): the official code draws a new resolution but never
            # writes it into the child; here it is applied. Drawn uniformly, not min-biased
            # (docs/method.md#search).
            resolution = int(rng.choice(self.space.resolutions))
        depths = [s.depth for s in parent.stages]
        if rng.random() < self.depth_mutation_prob:
            # FIX (docs/method.md#bugs-fixed): the official range(min, max) never reaches the max
            # depth; here the draw is over the space's full depth grid, max included.
            # The depth redraw is uniform over the grid (the official range() choice); the
            # min-biased draw of docs/method.md#search applies to the per-dimension value mutations
            # below.
            depths = [int(rng.choice(st.depths)) for st in self.space.stages]
        # The stem is kept (docs/method.md#search). FIX: the official code resets the stem kernel to
        # 3; here the parent's stem kernel is kept (it changes through crossover).
        stem = parent.stem
        prev = stem.width
        stages = []
        for i, (ps, st) in enumerate(zip(parent.stages, self.space.stages)):
            width = ps.width
            if rng.random() < p:
                # FIX (docs/method.md#bugs-fixed): widths come from the space's own grid (the
                # official steps of 16 / 8 look swapped against the supernet grid), redrawn among
                # the widths >= the previous stage's width.
                width = self._draw([w for w in st.widths if w >= prev])
            if width < prev:  # an earlier stage grew past this one: smallest valid width
                width = min(w for w in st.widths if w >= prev)
            if st.is_transformer:
                mlp = self._draw(st.mlp_ratios) if rng.random() < p else ps.mlp_ratio
                v = self._draw(st.v_scales) if rng.random() < p else ps.v_scale
                stages.append(StageArch(width, depths[i], mlp_ratio=mlp, v_scale=v))
            else:
                e = self._draw(st.expand_ratios) if rng.random() < p else ps.expand_ratio
                k = self._draw(st.kernels) if rng.random() < p else ps.kernel
                stages.append(StageArch(width, depths[i], expand_ratio=e, kernel=k))
            prev = width
        return ArchConfig(resolution, stem, tuple(stages))

    def crossover(self, parents: Sequence[ArchConfig]) -> Optional[ArchConfig]:
        """docs/method.md#search: resolution, the width vector, the depth vector and each per-layer
        list (kernels incl. the stem's, expansion ratios, MLP ratios, V scales) each come from one
        of two random parents. Block-wise archs make the official stage-wise rebuild a no-op."""
        if len(parents) < 2:
            return None
        rng = self._rng
        i, j = rng.choice(len(parents), size=2, replace=False)
        pair = (parents[int(i)], parents[int(j)])

        def pick() -> ArchConfig:
            return pair[int(rng.integers(2))]

        res, w, d, k, e, m, v = (pick() for _ in range(7))
        stem = StemArch(w.stem.width, d.stem.depth, k.stem.kernel)
        stages = []
        for idx, st in enumerate(self.space.stages):
            if st.is_transformer:
                rest = dict(mlp_ratio=m.stages[idx].mlp_ratio, v_scale=v.stages[idx].v_scale)
            else:
                rest = dict(expand_ratio=e.stages[idx].expand_ratio, kernel=k.stages[idx].kernel)
            stages.append(StageArch(w.stages[idx].width, d.stages[idx].depth, **rest))
        return ArchConfig(res.resolution, stem, tuple(stages))

    # ------------------------------------------------------------------------------ state
    def _constraint_state(self) -> dict:
        state = super()._constraint_state()
        state.update(population=self.population, parents=self.parents)
        return state

    def get_state(self):
        state = super().get_state()
        state[_STATE_KEY].update(
            generation=self.generation,
            trial_generation=self.trial_generation,
            current_parents=self.current_parents,
            seeds_used=sorted(self._seeds_used),
        )
        return state

    def set_state(self, state):
        super().set_state(state)
        own = state[_STATE_KEY]
        self.generation = int(own["generation"])
        self.trial_generation = {str(k): int(g) for k, g in own["trial_generation"].items()}
        self.current_parents = list(own["current_parents"])
        self._seeds_used = {int(i) for i in own["seeds_used"]}

    def _after_reload(self):
        # A trial created just before a kill may be missing from oracle.json's bookkeeping.
        for tid in self.trials:
            self.trial_generation.setdefault(tid, self.generation)
