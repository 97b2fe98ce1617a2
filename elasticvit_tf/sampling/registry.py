"""Samplers by name: ``make_sampler(name, space, seed, **cfg)`` (docs/method.md#samplers).

The one place that knows every sampler class, so that ``samplers`` (base classes and
baselines) and ``level_samplers`` (built on them) import in one direction only.
"""

from __future__ import annotations

from elasticvit_tf.sampling.level_samplers import (
    ComplexityAwareSampler,
    ElasticViTSampler,
    PerformanceAwareSampler,
)
from elasticvit_tf.sampling.samplers import Sampler, SandwichSampler, UniformSampler
from elasticvit_tf.space import SearchSpace

SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls
    for cls in (
        UniformSampler,
        SandwichSampler,
        ComplexityAwareSampler,
        PerformanceAwareSampler,
        ElasticViTSampler,
    )
}
SAMPLER_NAMES = tuple(SAMPLERS)


def make_sampler(name: str, space: SearchSpace, seed: int, **cfg) -> Sampler:
    """Builds a sampler by name: one of ``SAMPLER_NAMES``; ``cfg`` goes to its constructor.

    Raises:
        ValueError: unknown name (the message lists the known ones) or bad configuration.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {list(SAMPLER_NAMES)}")
    try:
        return SAMPLERS[name](space, seed, **cfg)
    except TypeError as e:
        raise ValueError(f"sampler {name!r}: bad configuration {sorted(cfg)}: {e}") from None
