"""Subnet samplers for supernet training: pure host-side objects with an explicit numpy RNG.

Every sampler returns, once per training step, a ``StepSample`` holding ``num_subnets`` archs
(4 by default for every sampler, so that ablations compare equal forward/backward budgets) and
one role per slot (``roles``, fixed per sampler). ``distillation`` tells the train step which
slots learn from which: the last, ``"min"`` slot from the mean prediction of the others
(``"min_from_mean"``), every slot from the max subnet in slot 0 (``"from_max"``), or none.

Samplers (``registry.make_sampler(name, space, seed, **cfg)``):
  * ``uniform``: ``num_subnets`` uniform block-wise subnets, roles all ``"uniform"``.
  * ``sandwich``: max + random + ... + min with in-place distillation from the max subnet
    (BigNAS baseline); ``sandwich_ce``: the same subnets, max and random ones trained on the
    labels, the min one distilled from the mean of the others.
  * ``complexity_aware``: FLOPs levels with an adjacent-step lazy random walk
    (docs/method.md#complexity-aware-sampling); ``num_subnets - 1`` subnets sampled in the level's
    bin + the level's min subnet.
  * ``performance_aware``: level drawn uniformly every step; per-level memory banks of
    (arch, score), a bank-sampling probability schedule and the candidate preference
    (docs/method.md#performance-aware-sampling).
  * ``elasticvit``: the official recipe, both together (conflict-aware sampling).

The samplers never touch the model: the training loop evaluates the subnets and feeds scores
back with ``update_scores`` (score = -cross-entropy on the batch, higher is better).
State (RNG, level, banks, schedule, counters) round-trips through JSON with
``get_state``/``set_state`` so that a resumed run samples exactly the same sequence.

The FLOPs-level samplers live in ``level_samplers``, their FLOPs-level tables in
``level_tables``; ``registry.make_sampler`` builds any of them by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np

from elasticvit_tf.arch import ArchConfig
from elasticvit_tf.space import SearchSpace

ROLES = ("uniform", "random", "max", "min")


@dataclasses.dataclass(frozen=True)
class StepSample:
    """The subnets of one training step.

    Attributes:
        archs: one arch per slot; the LAST one is the min/distilled subnet when its role is
            ``"min"``.
        roles: one of ``ROLES`` per slot.
        level: FLOPs level F of the step (MFLOPs) for level-based samplers, else ``None``.
        from_bank: per slot, whether the arch was drawn from a memory bank.
    """

    archs: tuple[ArchConfig, ...]
    roles: tuple[str, ...]
    level: Optional[float] = None
    from_bank: tuple[bool, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "archs", tuple(self.archs))
        object.__setattr__(self, "roles", tuple(self.roles))
        fb = tuple(self.from_bank) if self.from_bank else (False,) * len(self.archs)
        object.__setattr__(self, "from_bank", fb)
        n = len(self.archs)
        if len(self.roles) != n or len(self.from_bank) != n:
            raise ValueError(
                f"StepSample: got {n} archs, {len(self.roles)} roles and "
                f"{len(self.from_bank)} from_bank flags; expected equal lengths"
            )
        for r in self.roles:
            if r not in ROLES:
                raise ValueError(f"StepSample: unknown role {r!r}; expected one of {ROLES}")

    @property
    def num_subnets(self) -> int:
        return len(self.archs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "archs": [a.to_dict() for a in self.archs],
            "roles": list(self.roles),
            "level": self.level,
            "from_bank": list(self.from_bank),
        }


class Sampler:
    """Base class: an explicit ``np.random.Generator`` plus step/epoch counters.

    Args:
        space: the ``SearchSpace`` to sample from.
        seed: integer seed of the sampler's own RNG (``np.random.default_rng(seed)``).
        num_subnets: subnets per step (default 4).

    Subclasses implement ``_sample_step`` and may extend ``_extra_state``/``_load_extra_state``.
    """

    name = "base"
    min_subnets = 1

    def __init__(self, space: SearchSpace, seed: int, num_subnets: int = 4):
        if not isinstance(space, SearchSpace):
            raise ValueError(f"sampler: space must be a SearchSpace, got {type(space).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"sampler: seed must be an integer, got {seed!r}")
        if (
            isinstance(num_subnets, bool)
            or not isinstance(num_subnets, (int, np.integer))
            or num_subnets < self.min_subnets
        ):
            raise ValueError(
                f"sampler '{self.name}': num_subnets={num_subnets!r}; expected an integer "
                f">= {self.min_subnets}"
            )
        self.space = space
        self.seed = int(seed)
        self.num_subnets = int(num_subnets)
        self._rng = np.random.default_rng(self.seed)
        self.step = 0  # number of sample_step() calls so far
        self.epoch = 0  # number of end_epoch() calls so far

    # ------------------------------------------------------------------------ public API
    @property
    def roles(self) -> tuple[str, ...]:
        """The role of each slot, the same at every step (the train step is traced for it)."""
        raise NotImplementedError

    @property
    def distillation(self) -> str:
        """How the train step distils between the step's subnets (docs/method.md#training-step):
        ``"min_from_mean"`` (the last, ``"min"`` slot from the mean of the others), ``"from_max"``
        (every slot after the first from the max subnet in slot 0) or ``"none"``."""
        return "min_from_mean" if self.roles[-1] == "min" else "none"

    @classmethod
    def run_length_defaults(cls, total_steps: int, cfg: dict[str, Any]) -> dict[str, Any]:
        """Constructor arguments that scale the sampler's schedule to a run of ``total_steps``
        steps, given the caller's own arguments ``cfg`` (none for samplers without a
        schedule)."""
        del total_steps, cfg
        return {}

    def sample_step(self) -> StepSample:
        """Samples the subnets of the next training step."""
        sample = self._sample_step()
        self.step += 1
        return sample

    def update_scores(self, archs_with_scores: Sequence[tuple[ArchConfig, float]]) -> None:
        """Feeds back per-subnet scores (-CE on the batch). No-op for samplers without banks."""
        del archs_with_scores

    def archs_to_rescore(
        self, batch_index: int, steps_per_epoch: Optional[int] = None
    ) -> list[ArchConfig]:
        """Archs whose scores should be refreshed on this batch (none without banks)."""
        del batch_index, steps_per_epoch
        return []

    def end_epoch(self) -> None:
        """Called once after every epoch."""
        self.epoch += 1

    def get_config(self) -> dict[str, Any]:
        """The resolved constructor arguments (JSON): ``make_sampler(**get_config())``-able
        after popping ``name`` and ``space``; for a run's recorded config."""
        return {
            "name": self.name,
            "space": self.space.name,
            "seed": self.seed,
            "num_subnets": self.num_subnets,
        }

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable state; ``set_state`` of it resumes the sequence exactly."""
        state = {
            "sampler": self.name,
            "space": self.space.name,
            "space_fingerprint": self.space.fingerprint(),
            "num_subnets": self.num_subnets,
            "rng": _jsonable(self._rng.bit_generator.state),
            "step": self.step,
            "epoch": self.epoch,
        }
        state.update(self._extra_state())
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            raise ValueError(f"sampler state: expected a dict, got {type(state).__name__}")
        for key in ("sampler", "space_fingerprint", "rng", "step", "epoch"):
            if key not in state:
                raise ValueError(f"sampler state: missing key {key!r}; got keys {sorted(state)}")
        if state["sampler"] != self.name:
            raise ValueError(
                f"sampler state was saved by sampler {state['sampler']!r}; this sampler is "
                f"{self.name!r}"
            )
        fp = self.space.fingerprint()
        if state["space_fingerprint"] != fp:
            raise ValueError(
                f"sampler state belongs to space {state.get('space')!r} (fingerprint "
                f"{state['space_fingerprint']}); this sampler's space is {self.space.name!r} "
                f"(fingerprint {fp})"
            )
        if state.get("num_subnets", self.num_subnets) != self.num_subnets:
            raise ValueError(
                f"sampler state has num_subnets={state['num_subnets']}; this sampler has "
                f"{self.num_subnets}"
            )
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        self._rng = rng
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self._load_extra_state(state)

    # ------------------------------------------------------------------------ for subclasses
    def _sample_step(self) -> StepSample:
        raise NotImplementedError

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        del state

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(space={self.space.name!r}, seed={self.seed}, "
            f"num_subnets={self.num_subnets})"
        )


def _jsonable(obj):
    """numpy scalars/dicts -> plain Python (bit_generator.state holds Python ints already)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj


# ------------------------------------------------------------------------------ baselines
class UniformSampler(Sampler):
    """``num_subnets`` independent uniform block-wise subnets per step (no distillation)."""

    name = "uniform"

    @property
    def roles(self) -> tuple[str, ...]:
        return ("uniform",) * self.num_subnets

    def _sample_step(self) -> StepSample:
        archs = tuple(self.space.sample(self._rng) for _ in range(self.num_subnets))
        return StepSample(archs, self.roles, None)


class SandwichSampler(Sampler):
    """BigNAS sandwich rule with in-place distillation: max + (num_subnets - 2) random + min
    (last slot); the max subnet learns from the labels (or teachers), every other slot from the
    max subnet's predictions."""

    name = "sandwich"
    min_subnets = 2

    @property
    def roles(self) -> tuple[str, ...]:
        return ("max",) + ("random",) * (self.num_subnets - 2) + ("min",)

    @property
    def distillation(self) -> str:
        return "from_max"

    def _sample_step(self) -> StepSample:
        rand = tuple(self.space.sample(self._rng) for _ in range(self.num_subnets - 2))
        archs = (self.space.max_arch(),) + rand + (self.space.min_arch(),)
        return StepSample(archs, self.roles, None)


class SandwichCESampler(SandwichSampler):
    """The same subnets as ``sandwich``; max and random subnets learn from the labels (or
    teachers), the min subnet from the mean of the others (the ElasticViT step's
    distillation)."""

    name = "sandwich_ce"

    @property
    def distillation(self) -> str:
        return "min_from_mean"
