"""Pareto front (search/pareto.py) and reports (search/report.py)."""

import json
import math
import os

import numpy as np
import pytest

from elasticvit_tf.search import report
from elasticvit_tf.search.budgets import LatencyBudgets
from elasticvit_tf.search.pareto import dominates, pareto_front
from elasticvit_tf.space import get_space


def _brute_front(points):
    return sorted(
        i
        for i, p in enumerate(points)
        if all(math.isfinite(v) for v in p)
        and not any(dominates(q, p) for j, q in enumerate(points) if j != i)
    )


def test_front_small_known_case():
    pts = [(1.0, 0.5), (2.0, 0.6), (2.0, 0.55), (1.5, 0.4), (3.0, 0.6), (0.5, 0.1), (2.0, 0.6)]
    # (2.0, 0.6) twice: exact duplicates are both on the front; (3.0, 0.6) is dominated.
    assert sorted(pareto_front(pts)) == [0, 1, 5, 6]
    assert pareto_front(pts)[0] == 5  # sorted by latency


def test_front_matches_brute_force_on_random_points():
    rng = np.random.default_rng(3)
    for trial in range(30):
        n = int(rng.integers(1, 60))
        # Coarse grids create many ties in x and y.
        pts = [(float(rng.integers(0, 10)), float(rng.integers(0, 8))) for _ in range(n)]
        if trial % 5 == 0:
            pts.append((math.nan, 100.0))
        front = pareto_front(pts)
        assert sorted(front) == _brute_front(pts)
        on = set(front)
        for i, p in enumerate(pts):
            if i in on:  # no dominated point on the front
                assert not any(dominates(q, p) for q in pts)
            elif all(math.isfinite(v) for v in p):  # no non-dominated point off it
                assert any(dominates(q, p) for q in pts)


def _records(space, n=12, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = space.sample(rng)
        out.append(
            {
                "trial_id": f"{i:02d}",
                "generation": 0,
                "arch_key": a.key(),
                "arch": a.to_dict(),
                "top1": float(rng.uniform(0.2, 0.9)),
                "latency_ms": float(rng.uniform(1, 5)),
                "mflops": float(rng.uniform(0.3, 3)),
            }
        )
    return out


def test_write_reports_outputs(tmp_path):
    space = get_space("tiny")
    recs = _records(space)
    paths = report.write_reports(
        str(tmp_path), recs, space, budgets=LatencyBudgets((3.0, 5.0, 0.5)), latency_mode="fp32"
    )
    for name in ("pareto.json", "pareto.png", "report.md", "best_arch_3.json", "best_arch_5.json"):
        assert os.path.isfile(tmp_path / name), name
    assert "best_arch_0.5.json" not in paths  # no trial fits 0.5 ms
    with open(tmp_path / "pareto.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    best3 = json.loads((tmp_path / "best_arch_3.json").read_text())
    want = max((r for r in recs if r["latency_ms"] <= 3.0), key=lambda r: r["top1"])
    assert best3["trial_id"] == want["trial_id"]
    assert best3["metrics"]["top1"] == pytest.approx(want["top1"])
    assert best3["arch"] == want["arch"] and best3["budget_ms"] == 3.0
    pj = json.loads((tmp_path / "pareto.json").read_text())
    pts = [(p["latency_ms"], p["top1"]) for p in pj["points"]]
    assert sorted(i for i, p in enumerate(pj["points"]) if p["on_front"]) == _brute_front(pts)
    assert set(pj["front"]) == {p["trial_id"] for p in pj["points"] if p["on_front"]}
    md = (tmp_path / "report.md").read_text()
    assert "| 0.5 | no trial fits" in md and want["arch_key"] in md


def test_best_for_budget_none_means_best_overall():
    space = get_space("tiny")
    recs = _records(space, 8, seed=1)
    assert report.best_for_budget(recs, None)["top1"] == max(r["top1"] for r in recs)
    assert report.best_for_budget(recs, 0.1) is None
