"""The main job end to end: train -> latency LUT -> search -> export -> report.

``run_demo(DemoConfig(...))`` composes the flag-free libraries of the other parts:

1. **train** (``elasticvit_tf.train.train_lib``): the ``demo`` supernet on Fashion-MNIST (digits
   with a notice where the Debian package is missing), time-boxed: a short probe run (inside the
   LR warm-up, so its schedule equals the final one) measures the step rate, then the run resumes
   from the probe's checkpoint with as many steps as fit into ``train_minutes``.
2. **lut** (``export.lut_builder.build_lut``): fp32 + int8 latency LUTs of this CPU, 1 thread.
3. **search** (``search.search_lib.run_search``): Keras Tuner evolution under three budgets at
   the 25/50/75 % points between the min and max subnet's predicted fp32 latency.
4. **export** (``export.main.run_export``): the best subnet of each budget as float32 + int8
   TFLite, verified on the test split and benchmarked with LiteRT.

Each finished stage writes ``stages/<name>.json`` with a fingerprint of its inputs; re-running
with ``resume=True`` reuses a stage whose fingerprint is unchanged (training also resumes from
its last checkpoint when it was interrupted). This package is the only one that imports both
``search`` and ``export``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Any, Callable, Optional

from elasticvit_tf.pipeline.stages import (
    LATENCY_MODE,
    Heartbeat,
    Layout,
    banner,
    choose_budgets,
    fingerprint,
    read_training_curve,
    resolve_dataset,
    run_export_stage,
    run_lut,
    run_search_stage,
    run_stage,
    run_train,
    search_config,
    train_config,
)

STAGES = ("train", "lut", "search", "export")

# Per-stage settings of the full run and of ``--quick`` (same code path, smaller numbers).
FULL_PLAN: dict[str, Any] = {
    "train_minutes": 9.0,
    "train_steps": None,  # None: the demo recipe's epochs
    "num_subnets": None,  # None: the demo recipe's (4 per step)
    "max_train_examples": None,
    "search_size": 5000,
    "train_eval_batches": 0,  # whole test split
    "probe_steps": 40,
    "lut_budget_s": 80.0,
    "lut_warmup": 5,
    "lut_runs": 30,
    "lut_calibration": 2,
    "max_trials": 40,
    "population": 16,
    "search_calibration_batches": 10,
    "search_eval_batches": 20,
    "search_batch_size": 96,
    "export_verify_images": 10000,
    "export_calibration_batches": 20,
    "export_representative_steps": 100,
    "export_benchmark_runs": 50,
    "export_warmup_runs": 10,
}
QUICK_PLAN: dict[str, Any] = {
    **FULL_PLAN,
    "train_minutes": 1.5,
    "train_steps": 40,
    "num_subnets": 2,  # max + min per step: half the graph to trace
    "max_train_examples": 2048,
    "search_size": 512,
    "train_eval_batches": 4,
    "probe_steps": 0,  # no probe: a fixed small step count
    "lut_budget_s": 8.0,
    "lut_warmup": 2,
    "lut_runs": 5,
    "lut_calibration": 2,
    "max_trials": 6,
    "population": 4,
    "search_calibration_batches": 3,
    "search_eval_batches": 3,
    "search_batch_size": 64,
    "export_verify_images": 256,
    "export_calibration_batches": 4,
    "export_representative_steps": 32,
    "export_benchmark_runs": 10,
    "export_warmup_runs": 3,
}
TRAIN_PLAN_KEYS = (
    "train_minutes", "train_steps", "max_train_examples", "search_size", "train_eval_batches",
    "probe_steps",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Settings of one demo run (``elasticvit-demo`` flags map 1:1 onto it).

    Attributes:
        output_dir: everything goes here (``model_dir/``, ``lut/``, ``search/``, ``export/``,
            ``report.md``...).
        quick: the ~2-4 minute CI version (fewer steps and examples, small LUT budget, few
            trials); same code path.
        dataset: ``fashion_mnist`` (falls back to ``digits`` with a notice when its files are
            missing), ``digits``, ``tfds:NAME`` or ``folder:PATH``.
        data_dir: folder holding the Fashion-MNIST IDX files (default: the Debian package's).
        seed: seed of training, LUT design and search.
        train_minutes: training time box (the step count is fitted to it); None = plan default.
        train_steps: total training steps; None = plan default (full: 3 epochs).
        max_train_examples: cap on the train split; None = plan default.
        max_trials: search trials; None = plan default.
        budgets_ms: override the three latency budgets (fp32, predicted ms).
        lut_budget_s: LUT measurement budget for both modes; None = plan default.
        resume: reuse finished stages whose inputs are unchanged; False starts afresh.
        num_threads: interpreter threads for the LUT and the benchmarks.
        lut_clock: ``"wall"`` (latency) or ``"cpu"`` (1-thread CPU time: stabler LUTs on a
            shared, overloaded CPU; needs ``num_threads=1``).
        verbose: Keras progress bars (1) or not (0).
    """

    output_dir: str = "runs/demo"
    quick: bool = False
    dataset: str = "fashion_mnist"
    data_dir: Optional[str] = None
    seed: int = 0
    train_minutes: Optional[float] = None
    train_steps: Optional[int] = None
    max_train_examples: Optional[int] = None
    max_trials: Optional[int] = None
    budgets_ms: tuple[float, ...] = ()
    lut_budget_s: Optional[float] = None
    resume: bool = True
    num_threads: int = 1
    lut_clock: str = "wall"
    verbose: int = 1

    def __post_init__(self):
        object.__setattr__(self, "budgets_ms", tuple(float(b) for b in self.budgets_ms))
        if not self.output_dir:
            raise ValueError("output_dir: expected a directory path, received an empty string")
        for b in self.budgets_ms:
            if not b > 0:
                raise ValueError(f"budgets_ms: expected positive milliseconds, received {b:g}")
        for name in ("train_steps", "max_train_examples", "max_trials", "num_threads"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name}={v!r}: expected a positive integer or None")
        if self.lut_clock not in ("wall", "cpu"):
            raise ValueError(f"lut_clock={self.lut_clock!r}: expected 'wall' or 'cpu'")
        for name in ("train_minutes", "lut_budget_s"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name}={v!r}: expected a positive number or None")

    def plan(self) -> dict[str, Any]:
        """The resolved per-stage settings (plan defaults overridden by explicit fields)."""
        plan = dict(QUICK_PLAN if self.quick else FULL_PLAN)
        for name in ("train_minutes", "train_steps", "max_train_examples", "max_trials"):
            if getattr(self, name) is not None:
                plan[name] = getattr(self, name)
        if self.train_minutes is not None and self.train_steps is None:
            plan["train_steps"] = None  # an explicit time box plans the steps (quick too)
        if self.lut_budget_s is not None:
            plan["lut_budget_s"] = self.lut_budget_s
        return plan

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------- main
def run_demo(config: DemoConfig, log: Callable[[str], None] = print) -> dict:
    """Runs the whole demo; writes ``report.md``/``report.json``/PNGs; returns the report dict."""
    from elasticvit_tf.pipeline import report as report_lib
    from elasticvit_tf.space import get_space

    plan = config.plan()
    layout = Layout(config.output_dir)
    os.makedirs(layout.root, exist_ok=True)
    if not config.resume and os.path.isdir(layout.stages_dir):
        shutil.rmtree(layout.stages_dir)
    t_start = time.monotonic()
    load_start = os.getloadavg()
    space = get_space("demo")
    stages: dict[str, dict] = {}

    # ---- train
    banner("stage 1/4: train the demo supernet")
    dataset, data_dir, notices = resolve_dataset(config)
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
        budgets, budget_source = sorted(config.budgets_ms), "--budgets_ms"
    else:
        budgets = choose_budgets(fp32["min_arch_ms"], fp32["max_arch_ms"])
        budget_source = "25/50/75% between the min and max subnet's predicted fp32 latency"
    log(
        f"[lut] predicted fp32: min subnet {fp32['min_arch_ms']:.3f} ms, max subnet "
        f"{fp32['max_arch_ms']:.3f} ms; budgets {budgets} ms ({budget_source})"
    )

    # ---- search
    banner(f"stage 3/4: search under budgets {budgets} ms ({LATENCY_MODE})")
    sc = search_config(plan, config, layout, lut_res["paths"][LATENCY_MODE], budgets)
    search_fp = fingerprint(
        {
            "plan": {k: v for k, v in plan.items() if k.startswith("search_")},
            "seed": config.seed,
            "trials": [plan["max_trials"], plan["population"]],
            "budgets": budgets,
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
        "budgets_ms": budgets,
        "budget_source": budget_source,
        "search_config": sc.to_dict(),
        "search": search_res,
        "export": export_res,
        "stages": stages,
        "wall_seconds": time.monotonic() - t_start,
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "curves": read_training_curve(layout.model_dir),
    }
    report = report_lib.write_report(context)
    log(f"wrote {layout.report_md} and {layout.report_json}")
    return report
