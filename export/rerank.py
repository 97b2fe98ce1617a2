"""Int8-aware choice: re-rank a search's best candidates by their real int8 accuracy and their
measured latency (docs/method.md#int8-aware-choice).

The search ranks subnets by the *float* top-1 of inherited weights and a *predicted* latency.
What ships is the int8 file, and quantization does not cost every subnet the same accuracy. So
``elasticvit-export --rerank_from=<search>/pareto.json --rerank_budget_ms=B`` takes the
``rerank_top_k`` points of the search with the best float top-1 whose predicted latency fits
``B``, exports each one as ``elasticvit-export`` would (extract, BN recalibration, the shipped
int8 recipe, verification, benchmark on ``--target``), but verifies on the **search split** (a
choice made on test would be tuned to test), then keeps the candidate with the best int8 top-1
whose **measured** int8 latency fits ``B`` (none fits: the fastest, flagged). The winner's files
land in ``output_dir`` as a plain export does, next to ``rerank.json`` / ``rerank.md`` (every
candidate's float and int8 top-1, predicted and measured latency, and the cost of the re-rank)
and each candidate's ``export_report.json`` under ``rerank_candidates/``.

Search and export exchange files only: this module reads the search's ``pareto.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from typing import Any, Callable

from elasticvit_tf.export import export_lib
from elasticvit_tf.fileio import write_json_atomic, write_text_atomic

RERANK_JSON = "rerank.json"
RERANK_MD = "rerank.md"
CANDIDATES_DIR = "rerank_candidates"


def candidates(pareto_path: str, budget_ms: float, top_k: int) -> list[dict[str, Any]]:
    """The ``top_k`` points of a search's ``pareto.json`` with the best float top-1 among those
    whose predicted latency fits ``budget_ms`` (ties: lower latency). ValueError naming the
    file when it is not a search's points file or when no point fits."""
    try:
        with open(pareto_path) as f:
            doc = json.load(f)
        points = doc["points"]
        rows = [
            {
                "arch": p["arch"],
                "arch_key": p["arch_key"],
                "float_top1": float(p["top1"]),
                "predicted_ms": float(p["latency_ms"]),
                "mflops": float(p.get("mflops", math.nan)),
                "trial_id": p.get("trial_id"),
            }
            for p in points
        ]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"--rerank_from={pareto_path}: not a search's pareto.json ({type(e).__name__}: {e}); "
            "expected the file elasticvit-search writes next to report.md"
        ) from None
    fits = [r for r in rows if math.isfinite(r["float_top1"]) and r["predicted_ms"] <= budget_ms]
    if not fits:
        lo = min((r["predicted_ms"] for r in rows), default=math.nan)
        raise ValueError(
            f"--rerank_budget_ms={budget_ms:g}: no point of {pareto_path} fits (its fastest is "
            f"predicted at {lo:.3g} ms); expected a budget the search was run with"
        )
    fits.sort(key=lambda r: (-r["float_top1"], r["predicted_ms"], str(r["trial_id"])))
    return fits[:top_k]


def choose(rows: list[dict[str, Any]], budget_ms: float) -> tuple[int, bool]:
    """Index of the winner among exported candidates: the best int8 top-1 whose measured int8
    latency fits the budget (ties: faster); when none fits, the fastest. Returns
    ``(index, fits)``."""
    fit = [i for i, r in enumerate(rows) if r["measured_ms"] <= budget_ms]
    if fit:
        return min(fit, key=lambda i: (-rows[i]["int8_top1"], rows[i]["measured_ms"])), True
    return min(range(len(rows)), key=lambda i: rows[i]["measured_ms"]), False


def _row(cand: dict, report: dict) -> dict[str, Any]:
    """One candidate's row; top-1 as fractions like the search's, the drop in points."""
    int8 = report["modes"]["int8"]
    ver = int8["verification"]
    top1 = ver.get("accuracy")
    if top1 is None:  # no labels: agreement with the float model is all there is
        top1 = ver.get("top1_agreement")
    keras = ver.get("keras_accuracy")
    return {
        **{k: cand[k] for k in ("arch_key", "trial_id", "mflops", "float_top1", "predicted_ms")},
        "keras_top1": None if keras is None else keras / 100.0,
        "int8_top1": float(top1) / 100.0,
        "int8_drop": ver.get("accuracy_drop"),
        "measured_ms": float(int8["benchmark"]["median_ms"]),
        "export_seconds": report["seconds"],
    }


def run_rerank(cfg: export_lib.ExportConfig, log: Callable[[str], None] = print) -> dict:
    """Runs the int8-aware choice of ``cfg`` (``rerank_from``, ``rerank_budget_ms``,
    ``rerank_top_k``); returns the ``rerank.json`` content. Nothing is written to
    ``cfg.output_dir`` unless the winner passes the export's verification threshold."""
    from elasticvit_tf.model_dir import load_supernet

    cfg.validate()
    t0 = time.time()
    budget = float(cfg.rerank_budget_ms)
    cands = candidates(cfg.rerank_from, budget, int(cfg.rerank_top_k))
    supernet = load_supernet(cfg.model_dir, space_name=cfg.space, use_ema=cfg.use_ema)
    out_dir = os.path.abspath(cfg.output_dir)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    work = tempfile.mkdtemp(
        prefix=f".{os.path.basename(out_dir)}.rerank_", dir=os.path.dirname(out_dir)
    )
    try:
        rows, reports = [], []
        for i, cand in enumerate(cands):
            log(
                f"[rerank {i + 1}/{len(cands)}] {cand['arch_key']}: float top-1 "
                f"{cand['float_top1']:.4f}, predicted {cand['predicted_ms']:.3g} ms"
            )
            arch_path = os.path.join(work, f"arch_{i}.json")
            write_json_atomic(arch_path, cand["arch"])
            sub = dataclasses.replace(
                cfg,
                output_dir=os.path.join(work, f"candidate_{i}"),
                arch=arch_path,
                verify_split="search",
                max_accuracy_drop=100.0,  # every candidate is measured; the winner is checked
                rerank_from=None,
            )
            report = export_lib.run_export(sub, log=lambda m: log(f"  {m}"), supernet=supernet)
            reports.append(report)
            rows.append(_row(cand, report))
            log(
                f"  int8 top-1 {rows[-1]['int8_top1']:.4f}, measured "
                f"{rows[-1]['measured_ms']:.3g} ms"
            )
        win, fits = choose(rows, budget)
        drop = rows[win]["int8_drop"]
        if drop is not None and drop > cfg.max_accuracy_drop:
            from elasticvit_tf.export.verify import VerificationError

            raise VerificationError(
                f"the re-ranked int8 winner {rows[win]['arch_key']} loses {drop:.2f} points "
                f"to its float model (> --max_accuracy_drop={cfg.max_accuracy_drop:g}); nothing "
                f"was written to {cfg.output_dir!r}"
            )
        doc = {
            "budget_ms": budget,
            "top_k": int(cfg.rerank_top_k),
            "source": os.path.abspath(cfg.rerank_from),
            "target": cfg.target,
            "num_threads": cfg.num_threads,
            "verify_split": "search",
            "winner": win,
            "winner_fits_budget": fits,
            "float_choice": 0,  # the search's own pick: the best float top-1
            "candidates": rows,
            "seconds": round(time.time() - t0, 1),
        }
        staging = os.path.join(work, f"candidate_{win}")
        cand_dir = os.path.join(staging, CANDIDATES_DIR)
        for i, rep in enumerate(reports):
            write_json_atomic(
                os.path.join(cand_dir, f"{i}_{rows[i]['arch_key']}.json"), rep, default=str
            )
        write_json_atomic(os.path.join(staging, RERANK_JSON), doc)
        write_text_atomic(os.path.join(staging, RERANK_MD), markdown(doc))
        os.makedirs(out_dir, exist_ok=True)
        for name in sorted(os.listdir(staging)):
            dst = os.path.join(out_dir, name)
            if os.path.isdir(dst):
                shutil.rmtree(dst)
            os.replace(os.path.join(staging, name), dst)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(markdown(doc))
    return doc


def markdown(doc: dict) -> str:
    """``rerank.md``: the candidates side by side, the winner marked."""

    def f(v, spec=".4f"):
        return "n/a" if v is None else format(v, spec)

    lines = [
        f"# Int8-aware choice within {doc['budget_ms']:g} ms",
        "",
        f"{len(doc['candidates'])} best float candidates of `{doc['source']}` exported with the "
        f"shipped int8 recipe, top-1 on the search split, latency measured on "
        f"`{doc['target']}` ({doc['num_threads']} thread(s)); {doc['seconds']:.0f} s in all.",
        "",
        "| # | arch | MFLOPs | float top-1 | int8 top-1 | drop (pts) | predicted ms | "
        "measured int8 ms | |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(doc["candidates"]):
        mark = "**chosen**" if i == doc["winner"] else ("search's pick" if i == 0 else "")
        lines.append(
            f"| {i} | `{r['arch_key']}` | {f(r['mflops'], '.1f')} | {f(r['float_top1'])} | "
            f"{f(r['int8_top1'])} | {f(r['int8_drop'], '.2f')} | {f(r['predicted_ms'], '.3f')} | "
            f"{f(r['measured_ms'], '.3f')} | {mark} |"
        )
    if not doc["winner_fits_budget"]:
        lines += ["", "No candidate's measured int8 latency fits the budget: the fastest is kept."]
    return "\n".join(lines) + "\n"
