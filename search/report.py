"""Search outputs: best arch per budget, ``pareto.json``, ``pareto.png`` and ``report.md``.

Every completed trial enters the Pareto front and the per-budget bests: the oracle's
constraint is the largest budget, and each smaller budget picks the best trial whose predicted
latency fits it.

``best_arch_<budget>.json``: ``{"arch": <ArchConfig JSON>, "metrics": {top1, latency_ms,
mflops}, "budget_ms", "latency_mode", "space", "space_hash", "trial_id"}`` (``elasticvit-info``
and ``elasticvit-export`` read the ``arch`` entry). Without a latency budget the file is
``best_arch_all.json``.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional, Sequence

from elasticvit_tf.fileio import write_json_atomic
from elasticvit_tf.search import hyperparameters as hp_lib
from elasticvit_tf.search.budgets import LatencyBudgets
from elasticvit_tf.search.pareto import pareto_front
from elasticvit_tf.space import SearchSpace


def trial_records(oracle, space: SearchSpace) -> list[dict[str, Any]]:
    """One record per completed trial of ``oracle``: arch, metrics, trial id, generation."""
    from keras_tuner.engine.trial import TrialStatus

    generation = getattr(oracle, "trial_generation", {})
    out = []
    for tid in sorted(oracle.trials):
        trial = oracle.trials[tid]
        if trial.status != TrialStatus.COMPLETED:
            continue
        arch = hp_lib.values_to_arch(space, trial.hyperparameters.values)

        def metric(name):
            m = trial.metrics
            return float(m.get_last_value(name)) if m.exists(name) else math.nan

        out.append(
            {
                "trial_id": tid,
                "generation": generation.get(tid),
                "arch_key": arch.key(),
                "arch": arch.to_dict(),
                "top1": metric("top1"),
                "latency_ms": metric("latency_ms"),
                "mflops": metric("mflops"),
            }
        )
    return out


def best_for_budget(records: Sequence[dict], budget_ms: Optional[float]) -> Optional[dict]:
    """Highest top-1 record with ``latency_ms <= budget_ms`` (ties: lower latency, trial id)."""
    fits = [
        r
        for r in records
        if math.isfinite(r["top1"]) and (budget_ms is None or r["latency_ms"] <= budget_ms)
    ]
    if not fits:
        return None
    return min(fits, key=lambda r: (-r["top1"], r["latency_ms"], r["trial_id"]))


def _best_arch(rec: dict, budget_ms, latency_mode, space: SearchSpace, extra=None) -> dict:
    """The ``best_arch_*.json`` content of one record (``extra``: the device fields)."""
    return {
        "arch": rec["arch"],
        "metrics": {k: rec[k] for k in ("top1", "latency_ms", "mflops")},
        "budget_ms": budget_ms,
        **(extra or {}),
        "latency_mode": latency_mode,
        "space": space.name,
        "space_hash": space.fingerprint(),
        "trial_id": rec["trial_id"],
        "arch_key": rec["arch_key"],
    }


def _pareto_header(space: SearchSpace, latency_mode, x: str) -> dict:
    return {
        "space": space.name,
        "space_hash": space.fingerprint(),
        "latency_mode": latency_mode,
        "x": x,
        "y": "top1 (search split, maximised)",
    }


def _settings_lines(space: SearchSpace, settings) -> list[str]:
    lines = [f"# Subnet search report: space `{space.name}` ({space.fingerprint()})", ""]
    lines += ["## Settings", "", "| setting | value |", "|---|---|"]
    return lines + [f"| {k} | `{settings[k]}` |" for k in sorted(settings or {})]


def _save_plot(fig, ax, path: str) -> None:
    """The shared y axis, grid and legend; writes ``path`` and closes the figure."""
    import matplotlib.pyplot as plt

    ax.set_ylabel("top-1 on the search split (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_pareto(path: str, records, front_ids, budgets, x_label: str) -> None:
    """Top-1 vs predicted latency of every trial, the front highlighted (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    xs = [r["latency_ms"] for r in records]
    ys = [100 * r["top1"] for r in records]
    ax.scatter(xs, ys, s=12, c="#9aa5b1", label=f"trials ({len(records)})")
    front = sorted(
        (r for r in records if r["trial_id"] in front_ids), key=lambda r: r["latency_ms"]
    )
    if front:
        fx = [r["latency_ms"] for r in front]
        fy = [100 * r["top1"] for r in front]
        ax.step(fx, fy, where="post", c="#d1495b", lw=1.2)
        ax.scatter(fx, fy, s=28, c="#d1495b", label=f"Pareto front ({len(front)})", zorder=3)
    shown = [b for b in budgets if b is not None]
    for i, b in enumerate(shown):
        ax.axvline(b, ls="--", lw=0.8, c="#30638e", label="latency budgets" if i == 0 else None)
    ax.set_xlabel(x_label)
    _save_plot(fig, ax, path)


def write_reports(
    output_dir: str,
    records: Sequence[dict],
    space: SearchSpace,
    budgets: LatencyBudgets = LatencyBudgets(),
    latency_mode: Optional[str] = None,
    settings: Optional[dict] = None,
) -> dict[str, str]:
    """Writes all search outputs into ``output_dir``; returns ``{name: path}``."""
    os.makedirs(output_dir, exist_ok=True)
    budgets = list(budgets) or [None]
    settings = dict(settings or {})
    paths: dict[str, str] = {}

    front_idx = pareto_front([(r["latency_ms"], r["top1"]) for r in records])
    front_ids = {records[i]["trial_id"] for i in front_idx}
    points = [dict(r, on_front=r["trial_id"] in front_ids) for r in records]
    paths["pareto.json"] = os.path.join(output_dir, "pareto.json")
    write_json_atomic(
        paths["pareto.json"],
        {
            **_pareto_header(space, latency_mode, _x_axis(latency_mode)[0]),
            "front": [records[i]["trial_id"] for i in front_idx],
            "points": points,
        },
    )

    best = {}
    for b in budgets:
        rec = best_for_budget(records, b)
        best[b] = rec
        if rec is None:
            continue
        name = f"best_arch_{LatencyBudgets.tag(b)}.json"
        paths[name] = os.path.join(output_dir, name)
        write_json_atomic(paths[name], _best_arch(rec, b, latency_mode, space))

    x_label = _x_axis(latency_mode)[1]
    paths["pareto.png"] = os.path.join(output_dir, "pareto.png")
    plot_pareto(paths["pareto.png"], records, front_ids, budgets, x_label)

    paths["report.md"] = os.path.join(output_dir, "report.md")
    with open(paths["report.md"], "w") as f:
        f.write(_markdown(records, front_idx, best, space, latency_mode, settings))
    return paths


def _x_axis(latency_mode: Optional[str]) -> tuple[str, str]:
    """The cost axis ``(pareto.json "x", plot/table label)``: predicted latency, or MFLOPs when
    the search ran without a LUT (``FlopsProxyPredictor``, mode ``flops``: the ``latency_ms``
    fields then hold MFLOPs at 1 ms per MFLOP)."""
    if latency_mode == "flops":
        return "latency_ms = MFLOPs (no --latency_lut: FLOPs proxy), minimised", "MFLOPs (no LUT)"
    return "latency_ms (predicted, minimised)", "predicted latency (ms)" + (
        f", {latency_mode}" if latency_mode else ""
    )


def _markdown(records, front_idx, best, space, latency_mode, settings) -> str:
    x_label = _x_axis(latency_mode)[1]
    lines = _settings_lines(space, settings)
    lines += ["", f"Completed trials: **{len(records)}**; latency mode: `{latency_mode}`.", ""]
    lines += [
        "## Best subnet per latency budget",
        "",
        f"| budget | top-1 (%) | {x_label} | MFLOPs | trial | arch |",
        "|---|---|---|---|---|---|",
    ]
    for b, r in best.items():
        if r is None:
            lines.append(f"| {LatencyBudgets.tag(b)} | no trial fits | | | | |")
        else:
            lines.append(
                f"| {LatencyBudgets.tag(b)} | {100 * r['top1']:.2f} | {r['latency_ms']:.4g} | "
                f"{r['mflops']:.4g} | {r['trial_id']} | `{r['arch_key']}` |"
            )
    lines += [
        "",
        f"## Pareto front ({len(front_idx)} of {len(records)} trials)",
        "",
        "![pareto](pareto.png)",
        "",
    ]
    lines += _front_table(x_label, [(records[i]["latency_ms"], records[i]) for i in front_idx])
    lines.append("")
    return "\n".join(lines)


def _front_table(x_label: str, rows) -> list[str]:
    """Markdown rows of a Pareto front: ``rows`` of ``(latency, record)``."""
    out = [f"| {x_label} | top-1 (%) | MFLOPs | trial | arch |", "|---|---|---|---|---|"]
    return out + [
        f"| {ms:.4g} | {100 * r['top1']:.2f} | {r['mflops']:.4g} | {r['trial_id']} | "
        f"`{r['arch_key']}` |"
        for ms, r in rows
    ]


# ------------------------------------------------------------------------ several devices
def write_device_reports(
    output_dir: str,
    records: Sequence[dict],
    space: SearchSpace,
    devices: Sequence,
    latency_mode: Optional[str] = None,
    settings: Optional[dict] = None,
) -> dict[str, Any]:
    """Outputs of a several-device search (``search/devices.py``) into ``output_dir``.

    ``records`` carry ``latency_ms_by_device``. Per device: its Pareto front (top-1 vs its
    predicted latency) and per budget ``best_arch_<device>_<budget>.json`` (the single-device
    layout plus ``device`` and ``lut``); ``pareto.json`` holds every point and a ``devices``
    section; ``pareto.png`` one front per device; ``report.md``.

    Returns:
        ``{"paths": {name: path}, "best": {"<device>/<tag>": record or None}, "front":
        {device: [trial ids]}}``; a best record's ``latency_ms`` is that device's.
    """
    os.makedirs(output_dir, exist_ok=True)
    paths: dict[str, str] = {}
    best: dict[str, Optional[dict]] = {}
    fronts: dict[str, list] = {}
    section = {}
    for d in devices:
        pts = [dict(r, latency_ms=r["latency_ms_by_device"][d.name]) for r in records]
        front_idx = pareto_front([(p["latency_ms"], p["top1"]) for p in pts])
        fronts[d.name] = [pts[i]["trial_id"] for i in front_idx]
        chosen = {}
        for b in list(d.budgets) or [None]:
            tag = LatencyBudgets.tag(b)
            rec = best_for_budget(pts, b)
            best[f"{d.name}/{tag}"] = rec
            chosen[tag] = None if rec is None else rec["trial_id"]
            if rec is None:
                continue
            name = f"best_arch_{d.name}_{tag}.json"
            paths[name] = os.path.join(output_dir, name)
            extra = {"device": d.name, "lut": d.lut_path}
            write_json_atomic(paths[name], _best_arch(rec, b, latency_mode, space, extra))
        section[d.name] = {
            "lut": d.lut_path,
            "budgets_ms": d.budgets.to_list(),
            "front": fronts[d.name],
            "best": chosen,
        }
    points = [
        dict(r, on_front={n: r["trial_id"] in set(f) for n, f in fronts.items()}) for r in records
    ]
    paths["pareto.json"] = os.path.join(output_dir, "pareto.json")
    write_json_atomic(
        paths["pareto.json"],
        {
            **_pareto_header(
                space, latency_mode, "latency_ms_by_device (predicted per device, minimised)"
            ),
            "devices": section,
            "points": points,
        },
    )
    paths["pareto.png"] = os.path.join(output_dir, "pareto.png")
    plot_device_fronts(paths["pareto.png"], records, devices, fronts, latency_mode)
    paths["report.md"] = os.path.join(output_dir, "report.md")
    with open(paths["report.md"], "w") as f:
        f.write(_device_markdown(records, devices, fronts, best, space, latency_mode, settings))
    return {"paths": paths, "best": best, "front": fronts}


def plot_device_fronts(path: str, records, devices, fronts, latency_mode) -> None:
    """One plot: per device its trials (faint), its front and its budgets, in one colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, d in enumerate(devices):
        c = colors[i % len(colors)]
        xs = [r["latency_ms_by_device"][d.name] for r in records]
        ax.scatter(xs, [100 * r["top1"] for r in records], s=8, color=c, alpha=0.25)
        ids = set(fronts[d.name])
        front = sorted(
            (r for r in records if r["trial_id"] in ids),
            key=lambda r: r["latency_ms_by_device"][d.name],
        )
        fx = [r["latency_ms_by_device"][d.name] for r in front]
        fy = [100 * r["top1"] for r in front]
        ax.step(fx, fy, where="post", color=c, lw=1.2)
        ax.scatter(fx, fy, s=24, color=c, zorder=3, label=f"{d.name} front ({len(front)})")
        for b in d.budgets:
            ax.axvline(b, ls="--", lw=0.8, color=c)
    ax.set_xscale("log")
    ax.set_xlabel(_x_axis(latency_mode)[1] + " per device (log)")
    _save_plot(fig, ax, path)


def _device_markdown(records, devices, fronts, best, space, latency_mode, settings) -> str:
    lines = _settings_lines(space, settings)
    lines += [
        "",
        f"Completed trials: **{len(records)}**, each predicted on {len(devices)} devices; "
        f"latency mode: `{latency_mode}`.",
        "",
        "## Best subnet per device and budget",
        "",
        "| device | budget (ms) | top-1 (%) | predicted ms | MFLOPs | trial | arch |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in best.items():
        dev, tag = key.rsplit("/", 1)
        if r is None:
            lines.append(f"| {dev} | {tag} | no trial fits | | | | |")
        else:
            lines.append(
                f"| {dev} | {tag} | {100 * r['top1']:.2f} | {r['latency_ms']:.4g} | "
                f"{r['mflops']:.4g} | {r['trial_id']} | `{r['arch_key']}` |"
            )
    lines += ["", "![pareto](pareto.png)", ""]
    by_id = {r["trial_id"]: r for r in records}
    for d in devices:
        lines += [
            f"## Pareto front on {d.name} ({len(fronts[d.name])} of {len(records)} trials)",
            "",
        ]
        rows = sorted(
            ((by_id[t]["latency_ms_by_device"][d.name], by_id[t]) for t in fronts[d.name]),
            key=lambda x: x[0],
        )
        lines += _front_table("predicted ms", rows) + [""]
    return "\n".join(lines)
