"""Latency predictor accuracy on held-out random subnets (issue 6 item 2).

For each space and mode: build a LUT on this machine (``export.lut_builder.build_lut``, or
reuse one with ``--lut_dir``), then measure held-out random subnets end to end as the file
``elasticvit-export`` ships (``extract_subnet`` of a random-weight supernet, converted by the
export's conversion, ``lut_blocks.build_arch_model`` + ``lut_builder.convert_for_latency``;
LiteRT, ``--num_threads``), ``--repeats`` timing sessions each (the first right after
conversion, the others in later passes over all subnets, so slow drift of the machine's load
shows up in the ground truth's own coefficient of variation). Reports the share of subnets
predicted within +-10% and +-5%, RMSE, MAPE and Spearman rank correlation, for the LUT
predictor and for a FLOPs proxy fitted on the LUT's calibration subnets (baseline).

Prints a table and writes JSON (updated after every subnet, so an interrupted run keeps its
data) under ``benchmarks/results/``.

  python benchmarks/latency_predictor.py --spaces=demo --num_subnets=100
  python benchmarks/latency_predictor.py --spaces=elasticvit --num_subnets=20 --lut_budget_s=600
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from elasticvit_tf import get_space  # noqa: E402
from elasticvit_tf import lut as lut_lib  # noqa: E402
from elasticvit_tf.arch import ArchConfig  # noqa: E402
from elasticvit_tf.export import lut_builder  # noqa: E402
from elasticvit_tf.export.lut_blocks import build_arch_model  # noqa: E402
from elasticvit_tf.flops import count_flops, stratified_sample  # noqa: E402
from elasticvit_tf.lut import load_predictor  # noqa: E402
from elasticvit_tf.search.latency import FlopsProxyPredictor  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_list("spaces", ["demo"], "Space presets to evaluate.")
    flags.DEFINE_list("modes", ["fp32"], "Quantization modes (fp32, int8).")
    flags.DEFINE_integer("num_subnets", 100, "Held-out random subnets per space and mode.")
    flags.DEFINE_integer(
        "strata", 4, "FLOPs strata the held-out subnets are spread over (equal counts)."
    )
    flags.DEFINE_float(
        "measure_fraction", 1.0, "LUT: measure at most this share of the blocks (lut_builder)."
    )
    flags.DEFINE_integer("repeats", 3, "Timing sessions per subnet right after conversion.")
    flags.DEFINE_integer("late_repeats", 1, "Extra sessions per subnet after all conversions.")
    flags.DEFINE_integer("num_threads", 1, "LiteRT threads.")
    flags.DEFINE_integer("warmup", 5, "Warm-up invocations per timing session.")
    flags.DEFINE_integer("runs", 30, "Timed invocations per timing session (median taken).")
    flags.DEFINE_float("lut_budget_s", 240.0, "LUT build budget per space (all modes).")
    flags.DEFINE_integer(
        "num_calibration",
        12,
        "Whole subnets per mode for the LUT calibration (>= 8: per-block-type scales).",
    )
    flags.DEFINE_enum(
        "calibration_design",
        "mixed",
        ["mixed", "uniform", "spread"],
        "LUT calibration subnets (lut_builder.calibration_archs).",
    )
    flags.DEFINE_string("lut_dir", None, "Reuse LUTs from here when present (else build).")
    flags.DEFINE_list(
        "reuse_truth",
        [],
        "Earlier result JSONs of this benchmark: a held-out subnet found there (same space, "
        "mode, threads and clock; by arch key) keeps its measured ground truth instead of "
        "being timed again (to score a changed predictor on the same subnets).",
    )
    flags.DEFINE_list(
        "prior_luts", [], "Earlier LUT JSONs whose measured blocks the new build keeps."
    )
    flags.DEFINE_enum(
        "clock", "wall", ["wall", "cpu"], "wall latency, or 1-thread CPU time (shared CPUs)."
    )
    flags.DEFINE_integer(
        "seed",
        2026,
        "Held-out sampling seed; no fitting step sees it (LUT design and calibration use 0).",
    )
    flags.DEFINE_string("output_dir", "benchmarks/results", "Where the JSON goes.")
    flags.DEFINE_list(
        "report_only",
        [],
        "Print the table of earlier (possibly interrupted) runs' JSON files; runs of the same "
        "space, mode and LUT are merged (e.g. shards with different --seed).",
    )
    flags.DEFINE_string("tag", "", "Suffix of the output file name (e.g. a shard name).")
    flags.DEFINE_bool(
        "refit",
        False,
        "With --report_only: also re-predict with lut_builder.refit_lut(LUT) (the LUT's own "
        "measurements refitted by the current code; no held-out data is used).",
    )


def metrics(pred, true) -> dict:
    from scipy.stats import spearmanr

    p, t = np.asarray(pred, float), np.asarray(true, float)
    if len(t) == 0:
        return {}
    rel = (p - t) / t
    return {
        "n": int(len(t)),
        "within_10pct": float(np.mean(np.abs(rel) <= 0.10)),
        "within_5pct": float(np.mean(np.abs(rel) <= 0.05)),
        "rmse_ms": float(np.sqrt(np.mean((p - t) ** 2))),
        "mape": float(np.mean(np.abs(rel))),
        "bias": float(np.median(rel)),
        "spearman": float(spearmanr(p, t).statistic) if len(t) > 2 else float("nan"),
    }


def get_lut(space, mode, budget_s, log):
    if FLAGS.lut_dir:
        for name in sorted(os.listdir(FLAGS.lut_dir)) if os.path.isdir(FLAGS.lut_dir) else []:
            if name.startswith(f"lut_{space.name}_local_{mode}_t{FLAGS.num_threads}_"):
                path = os.path.join(FLAGS.lut_dir, name)
                log(f"reusing {path}")
                with open(path) as f:
                    return json.load(f), path
    priors = {}
    for path in FLAGS.prior_luts:
        with open(path) as f:
            d = json.load(f)
        if d.get("space_fingerprint") == space.fingerprint() and d.get("mode") == mode:
            priors[mode] = d
            log(f"keeping the {len(d['entries'])} measured blocks of {path}")
    out = lut_builder.build_lut(
        space,
        priors=priors,
        modes=(mode,),
        num_threads=FLAGS.num_threads,
        budget_s=budget_s,
        output_path=FLAGS.lut_dir or os.path.join(FLAGS.output_dir, "luts"),
        num_calibration=FLAGS.num_calibration,
        calibration_design=FLAGS.calibration_design,
        log=log,
        clock=FLAGS.clock,
        measure_fraction=FLAGS.measure_fraction,
    )[mode]
    return out["lut"], out["path"]


def run_one(space, mode, result, save):
    def log(s):
        print(s, flush=True)

    budget = FLAGS.lut_budget_s / len(FLAGS.modes)
    lut, lut_path = get_lut(space, mode, budget, log)
    pred = load_predictor(lut, space, mode)
    cal = lut["calibration"]
    cal_archs = [ArchConfig.from_dict(a) for a in cal["archs"]] if "archs" in cal else []
    cal_archs = cal_archs or lut_builder.calibration_archs(
        space, len(cal["whole_ms"]), 0, "uniform"
    )
    proxy = FlopsProxyPredictor.fit(space, cal_archs, lut["calibration"]["whole_ms"])
    archs, strata = stratified_sample(
        space, FLAGS.num_subnets, FLAGS.seed, FLAGS.strata, [a.key() for a in cal_archs]
    )
    rec = {
        "space": space.name,
        "mode": mode,
        "lut_path": lut_path,
        "lut_build_seconds": lut["provenance"].get("build_seconds"),
        "lut_measured_blocks": len(lut["entries"]),
        "lut_design": lut.get("design"),
        "lut_kind_scales": lut.get("kind_scales"),
        "lut_models": {
            k: {"n": v["n_samples"], "train_mape": v["train_mape"]}
            for k, v in lut["models"].items()
        },
        "subnets": [],
    }
    result["runs"].append(rec)
    timing = lut_builder.MeasureConfig(
        FLAGS.num_threads, FLAGS.warmup, FLAGS.runs, 0.05, sessions=1, clock=FLAGS.clock
    )
    tmp = tempfile.mkdtemp(prefix="latbench_")
    files = []
    reuse = reused_truth(space.name, mode)
    for i, (a, stratum) in enumerate(zip(archs, strata)):
        record = {
            "arch": a.to_dict(),
            "stratum": stratum,
            "mflops": count_flops(space, a),
            "pred_ms": pred.predict(a),
            "proxy_ms": proxy.predict(a),
        }
        old = reuse.get(a.key())
        if old is not None:  # measured by an earlier run: only the predictions are new
            rec["subnets"].append(
                dict(
                    record,
                    sessions_ms=list(old["sessions_ms"]),
                    within_cv=list(old["within_cv"]),
                    convert_s=old.get("convert_s"),
                    reused_truth=True,
                )
            )
            files.append(None)
            continue
        t0 = time.monotonic()
        tfl = lut_builder.convert_for_latency(build_arch_model(space, a), mode)
        conv_s = time.monotonic() - t0
        path = os.path.join(tmp, f"{i}.tflite")
        with open(path, "wb") as f:
            f.write(tfl)
        files.append(path)
        sess = [lut_builder.time_model(tfl, timing) for _ in range(FLAGS.repeats)]
        st = min(sess, key=lambda r: r["median_ms"])
        del tfl
        rec["subnets"].append(
            dict(
                record,
                sessions_ms=[r["median_ms"] for r in sess],
                within_cv=[r["robust_cv"] for r in sess],
                convert_s=conv_s,
            )
        )
        s = rec["subnets"][-1]
        log(
            f"{space.name}/{mode} {i + 1}/{len(archs)}: {s['mflops']:.1f} MFLOPs true "
            f"{st['median_ms']:.4f} (sessions {[round(r['median_ms'], 4) for r in sess]}) "
            f"pred {s['pred_ms']:.4f} ms (convert {conv_s:.1f}s)"
        )
        summarize(rec)
        save()
    for _ in range(FLAGS.late_repeats):  # later passes: slow drift of the machine's load
        for s, path in zip(rec["subnets"], files):
            if path is None:
                continue
            with open(path, "rb") as f:
                st = lut_builder.time_model(f.read(), timing)
            s["sessions_ms"].append(st["median_ms"])
            s["within_cv"].append(st["robust_cv"])
        summarize(rec)
        save()
    summarize(rec)
    save()
    for path in files:
        if path is not None:
            os.remove(path)
    os.rmdir(tmp)


def reused_truth(space_name, mode):
    """``{arch key: subnet record}`` from ``--reuse_truth`` runs of ``space_name``/``mode``
    measured with this run's threads and clock (other runs in the files are ignored)."""
    out = {}
    for path in FLAGS.reuse_truth:
        with open(path) as f:
            doc = json.load(f)
        prov = doc.get("provenance", {})
        if prov.get("num_threads") != FLAGS.num_threads or prov.get("clock") != FLAGS.clock:
            raise SystemExit(
                f"--reuse_truth={path}: measured with {prov.get('num_threads')} threads, clock "
                f"{prov.get('clock')!r}; expected {FLAGS.num_threads} and {FLAGS.clock!r}"
            )
        for run in doc.get("runs", []):
            if run.get("space") == space_name and run.get("mode") == mode:
                for s in run.get("subnets", []):
                    out[ArchConfig.from_dict(s["arch"]).key()] = s
    return out


def summarize(rec):
    subs = rec["subnets"]
    # Ground truth = best session median, the statistic the LUT blocks were measured with
    # (load on a shared CPU only adds time); the median over sessions is reported as well.
    true = [float(np.min(s["sessions_ms"])) for s in subs]
    true_med = [float(np.median(s["sessions_ms"])) for s in subs]
    for s, t in zip(subs, true):
        s["true_ms"] = t
        m = s["sessions_ms"]
        s["between_session_cv"] = float(np.std(m) / np.mean(m)) if len(m) > 1 else None
    rec["lut"] = metrics([s["pred_ms"] for s in subs], true)
    rec["flops_proxy"] = metrics([s["proxy_ms"] for s in subs], true)
    rec["lut_vs_median_of_sessions"] = metrics([s["pred_ms"] for s in subs], true_med)
    rec["lut_by_stratum"] = {
        str(k): metrics(
            [s["pred_ms"] for s in subs if s.get("stratum") == k],
            [t for s, t in zip(subs, true) if s.get("stratum") == k],
        )
        for k in sorted({s.get("stratum") for s in subs if s.get("stratum") is not None})
    }
    bcv = [s["between_session_cv"] for s in subs if s["between_session_cv"] is not None]
    rec["ground_truth_noise"] = {
        "between_session_cv_median": float(np.median(bcv)) if bcv else None,
        "between_session_cv_p90": float(np.percentile(bcv, 90)) if bcv else None,
        "within_session_robust_cv_median": float(
            np.median([c for s in subs for c in s["within_cv"]])
        ),
        "true_ms_range": [float(min(true)), float(max(true))],
    }


def print_table(result):
    hdr = (
        f"{'space':<11}{'mode':<6}{'n':>4}  {'predictor':<12}{'±10%':>7}{'±5%':>7}"
        f"{'RMSE ms':>10}{'MAPE':>7}{'Spearman':>9}   ground truth CV (between / within)"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in result["runs"]:
        noise = r.get("ground_truth_noise", {})
        for name in ("lut", "lut_refit", "flops_proxy", "lut_vs_median_of_sessions"):
            m = r.get(name) or {}
            if not m:
                continue
            b = noise.get("between_session_cv_median")
            print(
                f"{r['space']:<11}{r['mode']:<6}{m['n']:>4}  {name[:12]:<12}"
                f"{100 * m['within_10pct']:>6.1f}%{100 * m['within_5pct']:>6.1f}%"
                f"{m['rmse_ms']:>10.4f}{100 * m['mape']:>6.1f}%{m['spearman']:>9.3f}   "
                f"{'-' if b is None else f'{100 * b:.1f}%'} / "
                f"{100 * noise['within_session_robust_cv_median']:.1f}%"
            )
        for k, m in (r.get("lut_by_stratum") or {}).items():
            if m:
                print(
                    f"{'':<17}FLOPs stratum {k}: n {m['n']}, ±10% {100 * m['within_10pct']:.1f}%,"
                    f" Spearman {m['spearman']:.3f}"
                )


def main(argv):
    del argv
    if FLAGS.report_only:
        merged = {}
        for path in FLAGS.report_only:
            with open(path) as f:
                for rec in json.load(f)["runs"]:
                    key = (rec["space"], rec["mode"], rec["lut_path"])
                    if key in merged:
                        merged[key]["subnets"] += rec["subnets"]
                    else:
                        merged[key] = rec
        result = {"runs": list(merged.values())}
        for rec in result["runs"]:
            summarize(rec)
            if FLAGS.refit:
                from elasticvit_tf.arch import ArchConfig

                space = get_space(rec["space"])
                with open(rec["lut_path"]) as f:
                    pred = load_predictor(lut_builder.refit_lut(json.load(f), space), space)
                p = [pred.predict(ArchConfig.from_dict(s["arch"])) for s in rec["subnets"]]
                rec["lut_refit"] = metrics(p, [s["true_ms"] for s in rec["subnets"]])
        print_table(result)
        return 0
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    prov = lut_lib.provenance("local", FLAGS.num_threads, FLAGS.warmup, FLAGS.runs, FLAGS.clock)
    day = prov["date"][:10].replace("-", "")
    out = os.path.join(
        FLAGS.output_dir,
        f"latency_predictor_{'-'.join(FLAGS.spaces)}_{'-'.join(FLAGS.modes)}_local_t"
        f"{FLAGS.num_threads}_{platform.node()}_{day}{FLAGS.tag and '_' + FLAGS.tag}.json",
    )
    result = {
        "benchmark": "latency_predictor",
        "provenance": prov,
        "flags": {
            k: FLAGS[k].value
            for k in (
                "spaces",
                "modes",
                "num_subnets",
                "strata",
                "measure_fraction",
                "repeats",
                "runs",
                "warmup",
                "lut_budget_s",
                "num_calibration",
                "calibration_design",
                "clock",
                "seed",
                "prior_luts",
                "reuse_truth",
            )
        },
        "load_average_start": os.getloadavg(),
        "runs": [],
    }

    def save():
        result["load_average_now"] = os.getloadavg()
        with open(out + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(out + ".tmp", out)

    t0 = time.monotonic()
    for name in FLAGS.spaces:
        space = get_space(name)
        for mode in FLAGS.modes:
            run_one(space, mode, result, save)
    result["total_seconds"] = time.monotonic() - t0
    save()
    print_table(result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
