"""The demo's stages: training (time-boxed), latency LUT, search and export, plus the stage
bookkeeping (inputs fingerprint, reuse of finished stages, progress heartbeat).

Each stage adapts the demo's settings (``DemoConfig`` and its plan) to the flag-free library of
one part: ``train.train_lib``, ``export.lut_builder`` + ``search.latency``,
``search.search_lib`` and ``export.export_lib``; the algorithms live there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import threading
import time
from typing import Any, Callable, Optional

from elasticvit_tf.fileio import write_json_atomic
from elasticvit_tf.pipeline.demo_config import DemoConfig

LATENCY_MODE = "fp32"
# Quantized exports are verified with a loose drop limit so the demo always reports the figure;
# the report checks the 1-point goal itself.
EXPORT_MAX_DROP = 100.0


# ------------------------------------------------------------------------------- helpers
def fingerprint(obj: Any) -> str:
    """Short stable hash of a JSON-able object (stage inputs)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def banner(text: str) -> None:
    line = "=" * 78
    print(f"\n{line}\n== {text}\n{line}", flush=True)


class Heartbeat:
    """Prints ``[stage] elapsed (progress)`` every ``every`` seconds while a stage runs."""

    def __init__(self, stage: str, progress: Callable[[], str] = lambda: "", every: float = 15.0):
        self.stage, self.progress, self.every = stage, progress, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def _run(self):
        while not self._stop.wait(self.every):
            try:
                extra = self.progress()
            except Exception:  # progress is cosmetic
                extra = ""
            elapsed = time.monotonic() - self._t0
            print(f"[{self.stage}] {elapsed:.0f}s elapsed {extra}".rstrip(), flush=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=1.0)


class Layout:
    """Paths inside the demo's output directory."""

    def __init__(self, output_dir: str):
        self.root = os.path.abspath(output_dir)
        self.model_dir = os.path.join(self.root, "model_dir")
        self.lut_dir = os.path.join(self.root, "lut")
        self.search_dir = os.path.join(self.root, "search")
        self.export_dir = os.path.join(self.root, "export")
        self.stages_dir = os.path.join(self.root, "stages")
        self.report_md = os.path.join(self.root, "report.md")
        self.report_json = os.path.join(self.root, "report.json")
        self.pareto_png = os.path.join(self.root, "pareto.png")
        self.curve_png = os.path.join(self.root, "training_curve.png")

    def stage_file(self, name: str) -> str:
        return os.path.join(self.stages_dir, f"{name}.json")

    def stage_outputs(self, name: str) -> list[str]:
        return {
            "train": [self.model_dir],
            "lut": [self.lut_dir],
            "search": [self.search_dir],
            "export": [self.export_dir],
        }[name]


def finished(layout: Layout, name: str, fp: str) -> Optional[dict]:
    """The stage record when the stage finished with inputs ``fp`` and its outputs exist."""
    rec = _read_json(layout.stage_file(name))
    if not rec or rec.get("fingerprint") != fp or rec.get("status") != "done":
        return None
    for path in rec.get("result", {}).get("files", []):
        if not os.path.exists(path):
            return None
    return rec


def run_stage(layout, name, fp, resume, fn, log=print) -> tuple[dict, float, bool]:
    """Runs (or reuses) one stage; returns ``(result, seconds, reused)``."""
    rec = finished(layout, name, fp) if resume else None
    if rec is not None:
        log(f"[{name}] inputs unchanged (fingerprint {fp}): reusing {layout.stage_file(name)}")
        return rec["result"], float(rec["seconds"]), True
    started = _read_json(layout.stage_file(name))
    partial_ok = resume and started is not None and started.get("fingerprint") == fp
    if not partial_ok:
        for path in layout.stage_outputs(name):
            if os.path.isdir(path):
                shutil.rmtree(path)
    write_json_atomic(layout.stage_file(name), {"fingerprint": fp, "status": "running"})
    t0 = time.monotonic()
    result = fn()
    seconds = time.monotonic() - t0
    write_json_atomic(
        layout.stage_file(name),
        {"fingerprint": fp, "status": "done", "seconds": seconds, "result": result},
        default=str,
    )
    return result, seconds, False


# ------------------------------------------------------------------------------- data
def resolve_dataset(config: DemoConfig) -> tuple[str, Optional[str], list[str]]:
    """``(dataset, data_dir, notices)``: Fashion-MNIST falls back to digits with a notice."""
    from elasticvit_tf import data as data_lib

    dcfg = data_lib.DataConfig(dataset=config.dataset, data_dir=config.data_dir)
    dcfg, notices = data_lib.resolve_data_config(dcfg, fallback=True)
    return dcfg.dataset, dcfg.data_dir, list(notices)


# ------------------------------------------------------------------------------- train
def train_config(config: DemoConfig, plan: dict, dataset: str, data_dir: Optional[str], layout):
    """The ``TrainConfig`` of the demo (the training part's demo recipe + the plan)."""
    from elasticvit_tf.train import train_lib

    search_size = plan["search_size"]
    if dataset == "digits":  # 1797 images in all
        search_size = min(search_size, 300)
    extra = {"num_subnets": plan["num_subnets"]} if plan["num_subnets"] else {}
    tc = train_lib.TrainConfig.demo(
        layout.model_dir,
        dataset=dataset,
        data_dir=data_dir,
        seed=config.seed,
        max_train_examples=plan["max_train_examples"],
        search_size=search_size,
        eval_batches=plan["train_eval_batches"],
        verbose=config.verbose,
        **extra,
    )
    steps = plan["train_steps"] or train_lib.total_steps(tc)
    if tc.warmup_steps + tc.cooldown_steps >= steps // 2:
        # A short run keeps a quarter of its steps for the warm-up.
        tc = dataclasses.replace(tc, warmup_steps=steps // 4, cooldown_steps=0)
    return tc


def run_train(tc, plan: dict, log=print) -> dict:
    """Trains ``plan["train_steps"]`` steps, else the recipe's steps time-boxed to
    ``plan["train_minutes"]`` (``train_lib.TimeBox``); returns the train result plus the
    planning figures of the report."""
    from elasticvit_tf.train import train_lib

    if plan["train_steps"]:
        steps = int(plan["train_steps"])
        result = train_lib.train(dataclasses.replace(tc, steps=steps))
        plan_figures = {"target_steps": steps, "planned_steps": steps, "time_box_s": None}
        return {**result, **plan_figures, "probe_steps": 0, "time_boxed": False}
    box = train_lib.TimeBox(float(plan["train_minutes"]) * 60.0, probe_steps=plan["probe_steps"])
    return train_lib.train(tc, time_box=box, log=log)


# ------------------------------------------------------------------------------- lut
def lut_settings(plan: dict, config: DemoConfig) -> dict:
    """The demo's keyword arguments of ``lut_builder.build_lut`` (besides the space and the
    output path); the report renders them as the ``elasticvit-lut`` command."""
    extra = {"clock": config.lut_clock} if config.lut_clock != "wall" else {}
    return dict(
        modes=("fp32", "int8"),
        target="local",
        num_threads=config.num_threads,
        budget_s=float(plan["lut_budget_s"]),
        warmup=plan["lut_warmup"],
        runs=plan["lut_runs"],
        num_calibration=plan["lut_calibration"],
        seed=config.seed,
        **extra,
    )


def run_lut(space, plan: dict, config: DemoConfig, layout, log=print) -> dict:
    from elasticvit_tf import lut as lut_lib
    from elasticvit_tf.export import lut_builder

    out = lut_builder.build_lut(
        space, output_path=layout.lut_dir, log=log, **lut_settings(plan, config)
    )
    result = {"paths": {}, "files": [], "modes": {}}
    for mode, r in out.items():
        pred = lut_lib.load_predictor(r["path"], space, mode=mode)
        lut = r["lut"]
        result["paths"][mode] = r["path"]
        result["files"].append(r["path"])
        result["modes"][mode] = {
            "blocks_measured": len(lut["entries"]),
            "build_seconds": lut["provenance"]["build_seconds"],
            "constant_ms": lut["constant_ms"],
            "min_arch_ms": pred.predict(space.min_arch()),
            "max_arch_ms": pred.predict(space.max_arch()),
        }
    return result


# ------------------------------------------------------------------------------- search
def search_config(plan: dict, config: DemoConfig, layout, lut_path: str, budgets):
    from elasticvit_tf.search.search_lib import SearchConfig

    return SearchConfig(
        model_dir=layout.model_dir,
        space="demo",
        latency_lut=lut_path,
        latency_mode=LATENCY_MODE,
        latency_budgets_ms=budgets,
        max_trials=plan["max_trials"],
        population=plan["population"],
        seed=config.seed,
        directory=layout.root,
        project_name="search",
        calibration_batches=plan["search_calibration_batches"],
        eval_batches=plan["search_eval_batches"],
        batch_size=plan["search_batch_size"],
    )


def run_search_stage(sc, space, log=print) -> dict:
    """``search_lib.run_budget_searches`` (a fallback search for each budget that no trial
    fits), each search with a progress heartbeat."""
    from elasticvit_tf.search import search_lib

    def search(c):
        project = os.path.join(c.directory, c.project_name)
        done = lambda: search_lib.completed_trials(project)  # noqa: E731
        with Heartbeat("search", lambda: f"({done()}/{c.max_trials} trials done)", every=10.0):
            return search_lib.run_search(c)

    res = search_lib.run_budget_searches(sc, space, search=search, log=log)
    return {**res, "files": list(res["paths"].values())}


# ------------------------------------------------------------------------------- export
def export_config(plan: dict, config: DemoConfig, layout, arch_path: str, out_dir: str):
    from elasticvit_tf.export.export_lib import ExportConfig

    return ExportConfig(
        output_dir=out_dir,
        model_dir=layout.model_dir,
        arch=arch_path,
        space="demo",
        quantize=("float32", "int8"),
        representative_steps=plan["export_representative_steps"],
        calibration_batches=plan["export_calibration_batches"],
        verify_images=plan["export_verify_images"],
        max_accuracy_drop=EXPORT_MAX_DROP,
        num_threads=config.num_threads,
        warmup_runs=plan["export_warmup_runs"],
        benchmark_runs=plan["export_benchmark_runs"],
        seed=config.seed,
    )


def _mode_summary(entry: dict, out_dir: str) -> dict:
    ver, bench = entry["verification"], entry.get("benchmark", {})
    return {
        "file": os.path.join(out_dir, entry["file"]),
        "size_bytes": entry["size_bytes"],
        "accuracy": ver.get("accuracy"),
        "keras_accuracy": ver.get("keras_accuracy"),
        "accuracy_drop": ver.get("accuracy_drop"),
        "max_abs_error": ver.get("max_abs_error"),
        "top1_agreement": ver.get("top1_agreement"),
        "median_ms": bench.get("median_ms"),
        "p5_ms": bench.get("p5_ms"),
        "p95_ms": bench.get("p95_ms"),
    }


def run_export_stage(plan, config, layout, best: dict, log=print) -> dict:
    """Exports each budget's best arch (an arch chosen by several budgets is exported once)."""
    from elasticvit_tf.arch import ArchConfig
    from elasticvit_tf.export.export_lib import run_export

    os.makedirs(layout.export_dir, exist_ok=True)
    done: dict[str, dict] = {}
    result = {"budgets": {}, "files": [], "configs": {}}
    for tag, rec in best.items():
        if rec is None:
            result["budgets"][tag] = None
            continue
        key = rec["arch_key"]
        if key not in done:
            name = f"subnet_{len(done)}"
            arch_path = os.path.join(layout.export_dir, f"{name}_arch.json")
            with open(arch_path, "w") as f:
                f.write(ArchConfig.from_dict(rec["arch"]).to_json(indent=2))
            out_dir = os.path.join(layout.export_dir, name)
            ec = export_config(plan, config, layout, arch_path, out_dir)
            banner(f"export {name} (budget {tag} ms): {key}")
            t0 = time.monotonic()
            report = run_export(ec, log=log)
            modes = {m: _mode_summary(e, out_dir) for m, e in report["modes"].items()}
            done[key] = {
                "name": name,
                "arch_path": arch_path,
                "output_dir": out_dir,
                "report_json": os.path.join(out_dir, "export_report.json"),
                "report_md": os.path.join(out_dir, "export_report.md"),
                "seconds": time.monotonic() - t0,
                "num_verify_images": report["num_verify_images"],
                "modes": modes,
            }
            result["configs"][name] = dataclasses.asdict(ec)
            result["files"] += [arch_path, done[key]["report_json"]]
            result["files"] += [m["file"] for m in modes.values()]
        result["budgets"][tag] = done[key]
    return result
