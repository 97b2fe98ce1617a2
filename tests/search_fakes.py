"""Test helpers for the search: a small enumerable space, a known fitness, a fake predictor, and
a subprocess driver (``python tests/search_fakes.py ...``) for the kill/resume and distributed
tests."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import sys
import time
import zlib

from elasticvit_tf.arch import ArchConfig
from elasticvit_tf.flops import count_flops
from elasticvit_tf.space import SearchSpace, StageSpace, StemSpace, get_space


def small_space() -> SearchSpace:
    """``tiny`` with most dimensions pinned: 2048 archs, small enough to enumerate."""
    t = get_space("tiny")
    conv = dict(kind="C")
    tr = dict(kind="T")
    return dataclasses.replace(
        t,
        name="small",
        stem=StemSpace(widths=(4,), depths=(1,), kernels=(3,)),
        stages=(
            StageSpace(
                widths=(8,),
                depths=(1, 2),
                downsample=False,
                expand_ratios=(1, 2),
                kernels=(3,),
                **conv,
            ),
            StageSpace(
                widths=(8, 16),
                depths=(1, 2),
                downsample=True,
                se=True,
                expand_ratios=(1,),
                kernels=(5,),
                **conv,
            ),
            StageSpace(
                widths=(16,), depths=(1,), downsample=False, mlp_ratios=(1, 2), v_scales=(1,), **tr
            ),
            StageSpace(
                widths=(16, 32),
                depths=(1, 2),
                downsample=False,
                mlp_ratios=(1,),
                v_scales=(2,),
                **tr,
            ),
            StageSpace(
                widths=(32,), depths=(1, 2), downsample=True, mlp_ratios=(2,), v_scales=(1,), **tr
            ),
            StageSpace(
                widths=(32, 48),
                depths=(1, 2),
                downsample=False,
                mlp_ratios=(1,),
                v_scales=(1,),
                **tr,
            ),
        ),
        flops_levels=(),
        min_archs=(),
    )


def enumerate_archs(space: SearchSpace):
    """Every arch of a (small) space."""
    from elasticvit_tf.search.hyperparameters import hp_choices, values_to_arch

    choices = hp_choices(space)
    names = list(choices)
    for combo in itertools.product(*(choices[n] for n in names)):
        values = dict(zip(names, combo))
        try:
            yield values_to_arch(space, values)
        except ValueError:
            continue


def _weight(name: str) -> float:
    # Deterministic per-dimension weight in [-0.3, 1.0] (crc32, never hash()).
    return -0.3 + 1.3 * (zlib.crc32(name.encode()) % 1000) / 999.0


def fake_top1(space: SearchSpace, arch: ArchConfig) -> float:
    """A known, non-trivial function of the arch: weighted dimension positions with diminishing
    returns, so the in-budget optimum is not simply the biggest arch."""
    from elasticvit_tf.search.hyperparameters import arch_to_values, hp_choices

    values = arch_to_values(space, arch)
    score = 0.0
    for name, choices in hp_choices(space).items():
        if len(choices) < 2:
            continue
        pos = choices.index(values[name]) / (len(choices) - 1)
        score += _weight(name) * pos
    return 0.5 + 0.4 * math.tanh(score / 3.0)


class FakePredictor:
    """Latency = FLOPs * ms_per_mflop, with the LatencyPredictor interface."""

    mode = "fake"

    def __init__(self, space: SearchSpace, ms_per_mflop: float = 1.0):
        self.space = space
        self.ms_per_mflop = ms_per_mflop

    def predict(self, arch: ArchConfig) -> float:
        return self.ms_per_mflop * count_flops(self.space, arch)


class LoggingEvaluator:
    """Fake evaluator that appends every evaluated arch key to a log file, then sleeps."""

    def __init__(self, space, log_path, sleep_s=0.0, tag=""):
        self.space, self.log_path, self.sleep_s, self.tag = space, log_path, sleep_s, tag

    def __call__(self, arch):
        with open(self.log_path, "a") as f:
            f.write(f"{self.tag} {arch.key()}\n")
        time.sleep(self.sleep_s)
        return fake_top1(self.space, arch)


def main(argv=None) -> int:
    """Subprocess driver: one run_search with the fake evaluator/predictor on ``tiny``."""
    p = argparse.ArgumentParser()
    p.add_argument("--directory", required=True)
    p.add_argument("--project", default="p")
    p.add_argument("--log", required=True)
    p.add_argument("--max_trials", type=int, default=30)
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--budget", type=float, default=1.5)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--summary", default=None)
    a = p.parse_args(argv)

    from elasticvit_tf.search.search_lib import SearchConfig, run_search

    space = get_space("tiny")
    tag = os.environ.get("KERASTUNER_TUNER_ID", "local")
    cfg = SearchConfig(
        space="tiny",
        latency_budgets_ms=(a.budget,),
        max_trials=a.max_trials,
        population=a.population,
        directory=a.directory,
        project_name=a.project,
        seed=7,
    )
    result = run_search(
        cfg,
        evaluator=LoggingEvaluator(space, a.log, a.sleep, tag),
        predictor=FakePredictor(space),
    )
    if a.summary:
        with open(a.summary, "w") as f:
            json.dump({k: result.get(k) for k in ("role", "trials", "evaluations", "front")}, f)
    return 0


def fake_lut(space: SearchSpace, mode: str = "fp32") -> dict:
    """A minimal LUT JSON (elasticvit_tf/lut.py format): one linear model per block kind."""
    from elasticvit_tf.blocks import BlockKind

    return {
        "format": "elasticvit-latency-lut",
        "version": 2,
        "space": space.name,
        "space_fingerprint": space.fingerprint(),
        "mode": mode,
        "entries": [],
        "models": {
            k.value: {"features": ["macs"], "coef": [1e-5], "intercept": 0.01} for k in BlockKind
        },
        "constant_ms": 0.05,
        "provenance": {"target": "fake", "note": "tests/search_fakes.py"},
    }


if __name__ == "__main__":
    sys.exit(main())
