"""Samplers by name: ``make_sampler(name, space, seed, **cfg)`` (docs/method.md#samplers).

The one place that knows every sampler class, so that ``samplers`` (base classes and
baselines) and ``level_samplers`` (built on them) import in one direction only.
"""

from __future__ import annotations

from typing import Optional

from elasticvit_tf.sampling.level_samplers import (
    ComplexityAwareSampler,
    ElasticViTSampler,
    PerformanceAwareSampler,
)
from elasticvit_tf.sampling.samplers import (
    Sampler,
    SandwichCESampler,
    SandwichSampler,
    UniformSampler,
)
from elasticvit_tf.space import SearchSpace

SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls
    for cls in (
        UniformSampler,
        SandwichSampler,
        SandwichCESampler,
        ComplexityAwareSampler,
        PerformanceAwareSampler,
        ElasticViTSampler,
    )
}
SAMPLER_NAMES = tuple(SAMPLERS)


def make_sampler(
    name: str, space: SearchSpace, seed: int, total_steps: Optional[int] = None, **cfg
) -> Sampler:
    """Builds a sampler by name: one of ``SAMPLER_NAMES``; ``cfg`` goes to its constructor.

    With ``total_steps``, the sampler's schedule is scaled to a run of that length
    (``Sampler.run_length_defaults``, e.g. the memory banks' ``p_bank`` schedule); entries of
    ``cfg`` override the scaled values.

    Raises:
        ValueError: unknown name (the message lists the known ones) or bad configuration.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {list(SAMPLER_NAMES)}")
    cls = SAMPLERS[name]
    if total_steps is not None:
        cfg = {**cls.run_length_defaults(int(total_steps), cfg), **cfg}
    try:
        return cls(space, seed, **cfg)
    except TypeError as e:
        raise ValueError(f"sampler {name!r}: bad configuration {sorted(cfg)}: {e}") from None
