"""A search space as ``keras_tuner.HyperParameters`` and back.

Archs are per stage (docs/design.md#arch-granularity), so the mapping is flat: one ordered
``Choice`` per elastic dimension, no conditional scopes. Names:

* ``resolution``
* ``stem/width``, ``stem/depth``, ``stem/kernel``
* ``stage{i}/width``, ``stage{i}/depth`` and either ``stage{i}/expand_ratio``,
  ``stage{i}/kernel`` (conv stages) or ``stage{i}/mlp_ratio``, ``stage{i}/v_scale``
  (transformer stages).

The non-decreasing width rule cannot be written as independent choices; ``values_to_arch``
validates every arch against the space, and the oracles only propose valid archs.
"""

from __future__ import annotations

from typing import Any, Mapping

import keras_tuner

from elasticvit_tf.arch import ArchConfig, StageArch, StemArch
from elasticvit_tf.space import SearchSpace

_CONV_FIELDS = ("width", "depth", "expand_ratio", "kernel")
_TRANSFORMER_FIELDS = ("width", "depth", "mlp_ratio", "v_scale")


def _stage_fields(space: SearchSpace, i: int) -> tuple[str, ...]:
    return _TRANSFORMER_FIELDS if space.stages[i].is_transformer else _CONV_FIELDS


def _stage_choices(space: SearchSpace, i: int, field: str) -> tuple[int, ...]:
    st = space.stages[i]
    return {
        "width": st.widths,
        "depth": st.depths,
        "expand_ratio": st.expand_ratios,
        "kernel": st.kernels,
        "mlp_ratio": st.mlp_ratios,
        "v_scale": st.v_scales,
    }[field]


def hp_choices(space: SearchSpace) -> dict[str, tuple[int, ...]]:
    """Ordered mapping ``hp name -> choices`` for every elastic dimension of ``space``."""
    out: dict[str, tuple[int, ...]] = {"resolution": space.resolutions}
    out["stem/width"] = space.stem.widths
    out["stem/depth"] = space.stem.depths
    out["stem/kernel"] = space.stem.kernels
    for i in range(len(space.stages)):
        for field in _stage_fields(space, i):
            out[f"stage{i}/{field}"] = _stage_choices(space, i, field)
    return out


def build_hyperparameters(space: SearchSpace) -> keras_tuner.HyperParameters:
    """One ordered ``Choice`` per dimension, default = the smallest value (the min arch)."""
    hp = keras_tuner.HyperParameters()
    for name, choices in hp_choices(space).items():
        hp.Choice(name, list(choices), ordered=True, default=min(choices))
    return hp


def arch_to_values(space: SearchSpace, arch: ArchConfig) -> dict[str, int]:
    """``ArchConfig`` -> ``{hp name: value}``; the arch must belong to ``space``."""
    space.validate_arch(arch)
    values = {
        "resolution": arch.resolution,
        "stem/width": arch.stem.width,
        "stem/depth": arch.stem.depth,
        "stem/kernel": arch.stem.kernel,
    }
    for i, st in enumerate(arch.stages):
        for field in _stage_fields(space, i):
            values[f"stage{i}/{field}"] = int(getattr(st, field))
    return values


def values_to_arch(space: SearchSpace, values: Mapping[str, Any]) -> ArchConfig:
    """``{hp name: value}`` (e.g. ``trial.hyperparameters.values``) -> validated ``ArchConfig``.

    Raises:
        ValueError: a name is missing or unknown, or the arch is not in ``space``.
    """
    names = hp_choices(space)
    missing = sorted(set(names) - set(values))
    unknown = sorted(set(values) - set(names))
    if missing or unknown:
        raise ValueError(
            f"hyperparameter values for space '{space.name}': missing {missing}, unknown "
            f"{unknown}; expected exactly {list(names)}"
        )

    def get(name):
        v = values[name]
        if isinstance(v, bool) or int(v) != v:
            raise ValueError(f"hyperparameter {name}={v!r}: expected an integer")
        return int(v)

    stages = []
    for i in range(len(space.stages)):
        kw = {f: get(f"stage{i}/{f}") for f in _stage_fields(space, i)}
        stages.append(StageArch(**kw))
    arch = ArchConfig(
        resolution=get("resolution"),
        stem=StemArch(get("stem/width"), get("stem/depth"), get("stem/kernel")),
        stages=tuple(stages),
    )
    space.validate_arch(arch)
    return arch
