"""The main job end to end: train -> latency LUT -> search -> export -> report.

``run_demo(DemoConfig(...))`` composes the flag-free libraries of the other parts:

1. **train** (``elasticvit_tf.train.train_lib``): the ``demo`` supernet on Fashion-MNIST (digits
   with a notice where the Debian package is missing), time-boxed to ``train_minutes``
   (``train_lib.TimeBox``: a short probe inside the LR warm-up measures the step rate, then the
   run resumes from the probe's checkpoint with as many steps as fit).
2. **lut** (``export.lut_builder.build_lut``): fp32 + int8 latency LUTs of this CPU, 1 thread.
3. **search** (``search.search_lib.run_budget_searches``): Keras Tuner evolution under three
   budgets at the 25/50/75 % points between the min and max subnet's predicted fp32 latency
   (``LatencyBudgets.spread``), plus a small search for each budget that no trial fits.
4. **export** (``export.export_lib.run_export``): the best subnet of each budget as float32 + int8
   TFLite, verified on the test split and benchmarked with LiteRT.

Each finished stage writes ``stages/<name>.json`` with a fingerprint of its inputs; re-running
with ``resume=True`` reuses a stage whose fingerprint is unchanged (training also resumes from
its last checkpoint when it was interrupted). This package is the only one that imports both
``search`` and ``export``.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Callable

from elasticvit_tf.pipeline.demo_config import TRAIN_PLAN_KEYS, DemoConfig
from elasticvit_tf.pipeline.stages import (
    LATENCY_MODE,
    Heartbeat,
    Layout,
    banner,
    fingerprint,
    lut_settings,
    resolve_dataset,
    run_export_stage,
    run_lut,
    run_search_stage,
    run_stage,
    run_train,
    search_config,
    train_config,
)
from elasticvit_tf.search.budgets import LatencyBudgets

STAGES = ("train", "lut", "search", "export")


# ------------------------------------------------------------------------------- main
def run_demo(config: DemoConfig, log: Callable[[str], None] = print) -> dict:
    """Runs the whole demo; writes ``report.md``/``report.json``/PNGs; returns the report dict."""
    from elasticvit_tf import model_dir as md
    from elasticvit_tf.pipeline import report as report_lib
    from elasticvit_tf.space import get_space

    plan = config.plan()
    layout = Layout(config.output_dir)
    dataset, data_dir, notices = resolve_dataset(config)  # bad data: refused, nothing written
    os.makedirs(layout.root, exist_ok=True)
    if not config.resume and os.path.isdir(layout.stages_dir):
        shutil.rmtree(layout.stages_dir)
    t_start = time.monotonic()
    load_start = os.getloadavg()
    space = get_space("demo")
    stages: dict[str, dict] = {}

    # ---- train
    banner("stage 1/4: train the demo supernet")
    for n in notices:
        log(f"NOTICE: {n}")
    tc = train_config(config, plan, dataset, data_dir, layout)
    # Inputs = what the demo decides (its flags, plan and data), not the training library's
    # other defaults: a library update alone does not throw away a trained supernet.
    train_plan = {k: plan[k] for k in TRAIN_PLAN_KEYS}
    if plan["num_subnets"]:
        train_plan["num_subnets"] = plan["num_subnets"]
    train_fp = fingerprint(
        {
            "plan": train_plan,
            "dataset": [dataset, data_dir],
            "seed": config.seed,
            "recipe": "TrainConfig.demo v2",  # v2: elasticvit sampler, no augmentation
        }
    )
    train_res, secs, reused = run_stage(
        layout,
        "train",
        train_fp,
        config.resume,
        lambda: {**run_train(tc, plan, log), "files": [layout.model_dir]},
        log,
    )
    stages["train"] = {"seconds": secs, "reused": reused}
    log(
        f"[train] step {train_res['step']}: min subnet top-1 {train_res['min_top1']:.4f}, "
        f"max subnet top-1 {train_res['max_top1']:.4f} ({secs:.0f}s)"
    )

    # ---- lut
    banner("stage 2/4: latency LUT of this CPU (fp32 + int8, 1 thread)")
    lut_fp = fingerprint(
        {k: plan[k] for k in ("lut_budget_s", "lut_warmup", "lut_runs", "lut_calibration")}
        | {"space": space.fingerprint(), "seed": config.seed, "threads": config.num_threads}
        | ({"clock": config.lut_clock} if config.lut_clock != "wall" else {})
    )
    with Heartbeat("lut"):
        lut_res, secs, reused = run_stage(
            layout,
            "lut",
            lut_fp,
            config.resume,
            lambda: run_lut(space, plan, config, layout, log),
            log,
        )
    stages["lut"] = {"seconds": secs, "reused": reused}
    fp32 = lut_res["modes"][LATENCY_MODE]
    if config.budgets_ms:
        budgets, budget_source = config.budgets_ms, "--budgets_ms"
    else:
        budgets = LatencyBudgets.spread(fp32["min_arch_ms"], fp32["max_arch_ms"])
        budget_source = "25/50/75% between the min and max subnet's predicted fp32 latency"
    log(
        f"[lut] predicted fp32: min subnet {fp32['min_arch_ms']:.3f} ms, max subnet "
        f"{fp32['max_arch_ms']:.3f} ms; budgets {budgets.to_list()} ms ({budget_source})"
    )

    # ---- search
    banner(f"stage 3/4: search under budgets {budgets.to_list()} ms ({LATENCY_MODE})")
    sc = search_config(plan, config, layout, lut_res["paths"][LATENCY_MODE], budgets)
    search_fp = fingerprint(
        {
            "plan": {k: v for k, v in plan.items() if k.startswith("search_")},
            "seed": config.seed,
            "trials": [plan["max_trials"], plan["population"]],
            "budgets": budgets.to_list(),
            "train": train_fp,
            "lut": lut_fp,
            "impl": 2,  # per-budget fallback searches
        }
    )
    search_res, secs, reused = run_stage(
        layout, "search", search_fp, config.resume, lambda: run_search_stage(sc, space, log), log
    )
    stages["search"] = {"seconds": secs, "reused": reused}

    # ---- export
    banner("stage 4/4: export the chosen subnets (float32 + int8 TFLite), verify, benchmark")
    export_fp = fingerprint(
        {
            "search": search_fp,
            "plan": {k: v for k, v in plan.items() if k.startswith("export")},
            "threads": config.num_threads,
            "seed": config.seed,
        }
    )
    export_res, secs, reused = run_stage(
        layout,
        "export",
        export_fp,
        config.resume,
        lambda: run_export_stage(plan, config, layout, search_res["best"], log),
        log,
    )
    stages["export"] = {"seconds": secs, "reused": reused}

    # ---- report
    banner("report")
    context = {
        "config": config.to_dict(),
        "plan": plan,
        "layout": layout,
        "dataset": {"name": dataset, "data_dir": data_dir, "notices": notices},
        "train_config": tc.to_dict(),
        "train": train_res,
        "lut": lut_res,
        "lut_settings": lut_settings(plan, config),
        "budgets_ms": budgets,
        "budget_source": budget_source,
        "search_config": sc.to_dict(),
        "search": search_res,
        "export": export_res,
        "stages": stages,
        "wall_seconds": time.monotonic() - t_start,
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "curves": md.read_training_curves(layout.model_dir),
    }
    report = report_lib.write_report(context)
    log(f"wrote {layout.report_md} and {layout.report_json}")
    return report
