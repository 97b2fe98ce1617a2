"""The demo's report: ``report.json`` (every figure), ``report.md`` (the same figures as tables),
``pareto.png`` (copied from the search) and ``training_curve.png``.

Accuracies: ``train.*_top1`` and ``search_top1`` are fractions in [0, 1] (the training and
search libraries' convention); export accuracies are percentages (the export report's).
``report.md`` prints every number from ``report.json`` with fixed formats (fractions as
percentages with 2 decimals, milliseconds with 3), so the two can be checked against each other.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any, Optional

from elasticvit_tf.fileio import write_json_atomic, write_text_atomic
from elasticvit_tf.search.budgets import LatencyBudgets

GOAL_LARGEST_TOP1 = 85.0  # percent, Fashion-MNIST test top-1 of the largest chosen subnet
GOAL_EVERY_TOP1 = 80.0  # percent, every chosen subnet in float
GOAL_INT8_DROP = 1.0  # points, int8 vs float


# ------------------------------------------------------------------------------- commands
def commands(ctx: dict) -> dict[str, Any]:
    """The command line of every step, rendered by the binary that owns the flags."""
    from elasticvit_tf.export import export_main, lut_main
    from elasticvit_tf.export.export_lib import ExportConfig
    from elasticvit_tf.pipeline import demo_config
    from elasticvit_tf.search import search_main
    from elasticvit_tf.search.search_lib import SearchConfig
    from elasticvit_tf.train import train_main
    from elasticvit_tf.train.train_lib import TrainConfig

    tc = TrainConfig.from_dict(dict(ctx["train_config"], steps=ctx["train"]["planned_steps"]))
    return {
        "demo": demo_config.command_line(demo_config.DemoConfig(**ctx["config"])),
        "train": train_main.command_line(tc),
        "lut": lut_main.command_line("demo", ctx["layout"].lut_dir, **ctx["lut_settings"]),
        "search": search_main.command_line(SearchConfig(**ctx["search_config"])),
        "search_extra": [
            search_main.command_line(SearchConfig(**c))
            for c in ctx["search"].get("extra_configs", [])
        ],
        "export": [
            export_main.command_line(ExportConfig(**ec)) for ec in ctx["export"]["configs"].values()
        ],
    }


# ------------------------------------------------------------------------------- plots
def plot_training_curve(path: str, curves: dict[str, list]) -> bool:
    """Training loss (and LR) vs step, with evaluation points; False when nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss_keys = [k for k in curves if k == "loss" or k.endswith("/loss") or k.startswith("loss")]
    eval_keys = [k for k in curves if k.startswith("eval/")]
    if not loss_keys and not eval_keys:
        return False
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for k in sorted(loss_keys)[:6]:
        s, v = zip(*curves[k])
        ax[0].plot(s, v, label=k, lw=1)
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("training loss")
    ax[0].set_title("supernet training")
    if loss_keys:
        ax[0].legend(fontsize=7)
    for k in sorted(eval_keys):
        s, v = zip(*curves[k])
        ax[1].plot(s, [100 * x for x in v], "o-", label=k.split("/", 1)[1])
    ax[1].set_xlabel("step")
    ax[1].set_ylabel("test top-1 (%)")
    ax[1].set_title("min / max subnet (EMA, BN recalibrated)")
    if eval_keys:
        ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------- report
def _rel(path: Optional[str], root: str) -> Optional[str]:
    return None if path is None else os.path.relpath(path, root)


def int8_speed(modes: dict) -> dict | None:
    """float32 vs int8 measured medians of one export (None unless both were timed)."""
    f, q = (modes.get(m, {}).get("median_ms") for m in ("float32", "int8"))
    if not f or not q:
        return None
    return {"float32_ms": f, "int8_ms": q, "speedup": f / q}


def build_report(ctx: dict) -> dict:
    """The JSON report from the pipeline's context (see ``demo.run_demo``)."""
    layout = ctx["layout"]
    root = layout.root
    plan, train = ctx["plan"], ctx["train"]
    chosen = []
    for b in ctx["budgets_ms"]:
        tag = LatencyBudgets.tag(b)
        rec = ctx["search"]["best"].get(tag)
        exp = ctx["export"]["budgets"].get(tag)
        row = {"budget_ms": b, "found": rec is not None}
        if rec is not None:
            row.update(
                {
                    k: rec[k]
                    for k in (
                        "arch_key",
                        "arch",
                        "trial_id",
                        "search_top1",
                        "latency_ms",
                        "mflops",
                        "params_m",
                    )
                }
            )
            row["within_budget"] = rec["latency_ms"] <= b
        if exp is not None:
            row["export"] = {
                "name": exp["name"],
                "arch_json": _rel(exp["arch_path"], root),
                "report_md": _rel(exp["report_md"], root),
                "report_json": _rel(exp["report_json"], root),
                "num_verify_images": exp["num_verify_images"],
                "seconds": exp["seconds"],
                "modes": {m: dict(e, file=_rel(e["file"], root)) for m, e in exp["modes"].items()},
            }
            row["export"]["int8_speed"] = int8_speed(exp["modes"])
        chosen.append(row)

    exported = [r for r in chosen if "export" in r]
    float_acc = [r["export"]["modes"]["float32"]["keras_accuracy"] for r in exported]
    drops = [
        r["export"]["modes"]["float32"]["accuracy"] - r["export"]["modes"]["int8"]["accuracy"]
        for r in exported
        if r["export"]["modes"]["int8"]["accuracy"] is not None
    ]
    largest = exported[-1]["export"]["modes"]["float32"]["keras_accuracy"] if exported else None
    goals = {
        "largest_subnet_top1": largest,
        "largest_subnet_top1_goal": GOAL_LARGEST_TOP1,
        "largest_subnet_ok": largest is not None and largest >= GOAL_LARGEST_TOP1,
        "min_float_top1": min(float_acc) if float_acc else None,
        "every_subnet_goal": GOAL_EVERY_TOP1,
        "every_subnet_ok": bool(float_acc) and min(float_acc) >= GOAL_EVERY_TOP1,
        "max_int8_drop": max(drops) if drops else None,
        "int8_drop_goal": GOAL_INT8_DROP,
        "int8_ok": bool(drops) and max(drops) <= GOAL_INT8_DROP,
        "all_within_budget": all(r.get("within_budget", False) for r in chosen),
        "int8_slower_budgets_ms": [
            r["budget_ms"]
            for r in exported
            if r["export"]["int8_speed"] and r["export"]["int8_speed"]["speedup"] < 1.0
        ],
    }

    stages = {k: dict(v) for k, v in ctx["stages"].items()}
    stage_budget_s = {"train": 9 * 60, "lut": 120, "search": 120, "export": 120}
    for k, v in stages.items():
        v["budget_s"] = stage_budget_s[k]
    files = {
        "report_md": "report.md",
        "report_json": "report.json",
        "pareto_png": "pareto.png",
        "training_curve_png": "training_curve.png",
        "model_dir": _rel(layout.model_dir, root),
        "pareto_json": _rel(ctx["search"]["paths"].get("pareto.json"), root),
        "search_report_md": _rel(ctx["search"]["paths"].get("report.md"), root),
        "lut_fp32": _rel(ctx["lut"]["paths"].get("fp32"), root),
        "lut_int8": _rel(ctx["lut"]["paths"].get("int8"), root),
    }
    train_keys = (
        "time_box_s",
        "probe_overhead_s",
        "step",
        "target_steps",
        "planned_steps",
        "time_boxed",
        "probe_steps",
        "probe_steps_per_s",
        "min_top1",
        "max_top1",
        "eval_split",
        "train_seconds",
        "images_per_second",
        "resumed_from_step",
        "trace_count",
    )
    return {
        "format": "elasticvit-demo-report",
        "version": 1,
        "config": ctx["config"],
        "plan": plan,
        "dataset": ctx["dataset"],
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_start": ctx["load_average"]["start"],
            "load_average_end": ctx["load_average"]["end"],
        },
        "stages": stages,
        "total_seconds": sum(v["seconds"] for v in stages.values()),
        "wall_seconds": ctx["wall_seconds"],
        "train": {k: train.get(k) for k in train_keys},
        "lut": ctx["lut"]["modes"],
        "budgets_ms": list(ctx["budgets_ms"]),
        "budget_source": ctx["budget_source"],
        "search": {
            "trials": ctx["search"]["trials"],
            "stop_reason": ctx["search"]["stop_reason"],
            "front": ctx["search"]["front"],
            "points": ctx["search"]["points"],
        },
        "chosen": chosen,
        "goals": goals,
        "commands": commands(ctx),
        "files": files,
    }


def _pct(frac: Optional[float]) -> str:
    return "-" if frac is None else f"{100 * frac:.2f}"


def _p(v: Optional[float], spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def markdown(r: dict) -> str:
    """``report.md`` from the JSON report (every figure formatted from ``r``)."""
    t, g = r["train"], r["goals"]
    cfg = r["config"]
    lines = [
        "# ElasticViT-TF demo report",
        "",
        f"Dataset: **{r['dataset']['name']}**"
        + (f" ({r['dataset']['data_dir']})" if r["dataset"]["data_dir"] else "")
        + f"; quick: {cfg['quick']}; seed: {cfg['seed']}; machine: {r['machine']['cpus']} CPUs, "
        f"load average {r['machine']['load_average_start'][0]:.1f} at start, "
        f"{r['machine']['load_average_end'][0]:.1f} at end.",
        "",
    ]
    for n in r["dataset"]["notices"]:
        lines += [f"> NOTICE: {n}", ""]
    lines += [
        "## Stage times",
        "",
        "| stage | seconds | budget s | reused |",
        "|---|---|---|---|",
    ]
    for name, s in r["stages"].items():
        lines.append(f"| {name} | {s['seconds']:.1f} | {s['budget_s']} | {s['reused']} |")
    lines += [
        f"| total | {r['total_seconds']:.1f} | 900 | |",
        "",
        "## Training",
        "",
        f"- steps: {t['step']} of {t['target_steps']} planned by the recipe"
        + (" (cut by the time box)" if t["time_boxed"] else ""),
        f"- min subnet top-1 ({t['eval_split']}): {_pct(t['min_top1'])} %",
        f"- max subnet top-1 ({t['eval_split']}): {_pct(t['max_top1'])} %",
        f"- throughput: {_p(t['images_per_second'], '.1f')} images/s",
        *(
            [
                f"- time box: {t['time_box_s'] / 60:.1f} min; probe of {t['probe_steps']} steps: "
                f"{_p(t['probe_steps_per_s'], '.3f')} steps/s, {_p(t['probe_overhead_s'], '.0f')} s "
                f"fixed costs -> {t['planned_steps']} steps planned"
            ]
            if t.get("probe_steps") and t.get("time_box_s")
            else []
        ),
        "",
        "![training curve](training_curve.png)",
        "",
        "## Latency LUT (this CPU, 1 thread)",
        "",
        "| mode | blocks measured | build s | min subnet ms | max subnet ms |",
        "|---|---|---|---|---|",
    ]
    for mode, m in r["lut"].items():
        lines.append(
            f"| {mode} | {m['blocks_measured']} | {m['build_seconds']:.1f} | "
            f"{m['min_arch_ms']:.3f} | {m['max_arch_ms']:.3f} |"
        )
    lines += [
        "",
        f"Budgets (fp32 ms): {', '.join(f'{b:.3f}' for b in r['budgets_ms'])} "
        f"({r['budget_source']}).",
        "",
        "## Search: subnet accuracy vs predicted latency",
        "",
        f"{r['search']['trials']} trials, stop reason: {r['search']['stop_reason']}. "
        f"Pareto front: {len(r['search']['front'])} trials.",
        "",
        "![pareto](pareto.png)",
        "",
        "| budget ms | trial | search top-1 % | predicted ms | MFLOPs | params M | within budget |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in r["chosen"]:
        if not c["found"]:
            lines.append(f"| {c['budget_ms']:.3f} | none | - | - | - | - | - |")
            continue
        lines.append(
            f"| {c['budget_ms']:.3f} | {c['trial_id']} | {_pct(c['search_top1'])} | "
            f"{c['latency_ms']:.3f} | {c['mflops']:.2f} | {c['params_m']:.3f} | "
            f"{_yes(c['within_budget'])} |"
        )
    front = sorted(
        (p for p in r["search"]["points"] if p.get("on_front")), key=lambda p: p["latency_ms"]
    )
    if front:
        lines += [
            "",
            "Pareto front (search split top-1 vs predicted latency):",
            "",
            "| trial | predicted ms | search top-1 % | MFLOPs |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {p['trial_id']} | {p['latency_ms']:.3f} | {_pct(p['top1'])} | "
            f"{_p(p['mflops'])} |"
            for p in front
        ]
    lines += ["", "Chosen archs:", ""]
    for c in r["chosen"]:
        if c["found"]:
            lines.append(f"- {c['budget_ms']:.3f} ms: `{c['arch_key']}`")
    lines += [
        "",
        "## Export (TFLite, test split)",
        "",
        "| budget ms | mode | top-1 % | Keras top-1 % | drop pts | max abs err | size KiB "
        "| median ms | p95 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in r["chosen"]:
        for mode, e in c.get("export", {}).get("modes", {}).items():
            lines.append(
                f"| {c['budget_ms']:.3f} | {mode} | {_p(e['accuracy'])} | "
                f"{_p(e['keras_accuracy'])} | {_p(e['accuracy_drop'])} | "
                f"{e['max_abs_error']:.3g} | {e['size_bytes'] / 1024:.1f} | "
                f"{_p(e['median_ms'], '.3f')} | {_p(e['p95_ms'], '.3f')} |"
            )
    export_links = list(
        dict.fromkeys(
            f"[{c['export']['name']}]({c['export']['report_md']})"
            for c in r["chosen"]
            if "export" in c and c["export"]["report_md"]
        )
    )
    speeds = [(c["budget_ms"], c["export"].get("int8_speed")) for c in r["chosen"] if "export" in c]
    speeds = [(b, sp) for b, sp in speeds if sp]
    if speeds:
        lines += ["", "int8 vs float32 speed (measured medians, float32 ms / int8 ms):", ""]
        for b, sp in speeds:
            word = "faster" if sp["speedup"] >= 1.0 else "SLOWER"
            lines.append(
                f"- {b:.3f} ms budget: float32 {sp['float32_ms']:.3f} ms, int8 "
                f"{sp['int8_ms']:.3f} ms -> int8 {sp['speedup']:.2f}x ({word})"
            )
        slower = [b for b, sp in speeds if sp["speedup"] < 1.0]
        if slower:
            lines += [
                "",
                f"**Warning: int8 is slower than float32 on this CPU for the subnet(s) of "
                f"budget(s) {', '.join(f'{b:.3f}' for b in slower)} ms**; ship float32 there "
                "or profile with `elasticvit-export --benchmark_only --enable_op_profiling`.",
            ]
    lines += ["", "Export reports: " + (", ".join(export_links) or "none"), ""]
    lines += [
        "## Goals",
        "",
        f"- largest chosen subnet float top-1 >= {g['largest_subnet_top1_goal']:g} %: "
        f"{_p(g['largest_subnet_top1'])} % -> {_yes(g['largest_subnet_ok'])}",
        f"- every chosen subnet float top-1 >= {g['every_subnet_goal']:g} %: min "
        f"{_p(g['min_float_top1'])} % -> {_yes(g['every_subnet_ok'])}",
        f"- int8 within {g['int8_drop_goal']:g} point of float: max drop "
        f"{_p(g['max_int8_drop'])} -> {_yes(g['int8_ok'])}",
        f"- every chosen arch within its budget (predicted): {_yes(g['all_within_budget'])}",
        "",
        "## Reproduce each step",
        "",
        "```",
        r["commands"]["demo"],
        "",
        r["commands"]["train"],
        r["commands"]["lut"],
        r["commands"]["search"],
        *r["commands"].get("search_extra", []),
        *r["commands"]["export"],
        "```",
        "",
        (
            "The demo's training ran a short probe inside the LR warm-up to measure the step "
            "rate, then resumed to the planned step count; the single `elasticvit-train` "
            "command above runs the same schedule."
            if t["probe_steps"]
            else "The training command runs the same schedule as the demo."
        ),
        "",
        "## Files",
        "",
    ]
    for k, v in r["files"].items():
        if v is not None:
            lines.append(f"- {k}: [{v}]({v})")
    lines.append("")
    return "\n".join(lines)


def write_report(ctx: dict) -> dict:
    """Writes ``report.json``, ``report.md``, ``pareto.png`` and ``training_curve.png``."""
    layout = ctx["layout"]
    report = build_report(ctx)
    paths = ctx["search"]["paths"]
    src = paths.get("pareto_all.png") or paths.get("pareto.png")
    if src and os.path.isfile(src):
        shutil.copyfile(src, layout.pareto_png)
    else:
        report["files"]["pareto_png"] = None
    if not plot_training_curve(layout.curve_png, ctx["curves"]):
        report["files"]["training_curve_png"] = None
    write_json_atomic(layout.report_json, report, default=_json_default)
    write_text_atomic(layout.report_md, markdown(report))
    return report


def _json_default(o):
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return str(o)
