"""End-to-end demo time per stage (train, LUT, search, export) and the demo's accuracies.

    python benchmarks/demo_e2e.py                      # full demo into runs/demo_bench
    python benchmarks/demo_e2e.py --quick              # the CI version
    python benchmarks/demo_e2e.py --report=runs/demo/report.json   # tabulate a finished run

Prints a table (seconds per stage vs the issue's budget on 2 cores, accuracies vs the goals)
and writes ``benchmarks/results/demo_e2e[_quick].json``. The load average at start and end is
recorded: timings on a shared machine are pessimistic.
"""

from __future__ import annotations

import json
import os
import platform
import sys

from absl import app, flags

flags.DEFINE_bool("quick", False, "Run the quick demo.")
flags.DEFINE_string("output_dir", None, "Demo output dir (default runs/demo_bench[_quick]).")
flags.DEFINE_string("report", None, "Tabulate this report.json instead of running the demo.")
flags.DEFINE_bool("resume", False, "Reuse finished stages (default: measure every stage).")
flags.DEFINE_string("results", None, "JSON output (default benchmarks/results/demo_e2e*.json).")
FLAGS = flags.FLAGS

BUDGETS_S = {"train": 540, "lut": 120, "search": 120, "export": 120, "total": 900}


def table(report: dict) -> str:
    rows = ["| stage | seconds | budget s (2 idle cores) | reused |", "|---|---|---|---|"]
    for name, s in report["stages"].items():
        rows.append(f"| {name} | {s['seconds']:.1f} | {BUDGETS_S[name]} | {s['reused']} |")
    rows.append(f"| total | {report['total_seconds']:.1f} | {BUDGETS_S['total']} | |")
    g, t = report["goals"], report["train"]

    def f(v):
        return "-" if v is None else f"{v:.2f}"

    rows += [
        "",
        f"training: {t['step']}/{t['target_steps']} steps, min/max subnet top-1 "
        f"{100 * t['min_top1']:.2f} / {100 * t['max_top1']:.2f} %",
        f"largest chosen subnet float top-1: {f(g['largest_subnet_top1'])} % (goal >= 85)",
        f"smallest float top-1 of the chosen subnets: {f(g['min_float_top1'])} % (goal >= 80)",
        f"max int8 drop: {f(g['max_int8_drop'])} points (goal <= 1)",
        f"load average: {report['machine']['load_average_start'][0]:.1f} at start, "
        f"{report['machine']['load_average_end'][0]:.1f} at end, on {report['machine']['cpus']} "
        "CPUs",
    ]
    return "\n".join(rows)


def main(argv) -> int:
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if FLAGS.report:
        with open(FLAGS.report) as f:
            report = json.load(f)
    else:
        from elasticvit_tf.pipeline.demo_config import DemoConfig
        from elasticvit_tf.pipeline.demo_lib import run_demo

        out = FLAGS.output_dir or ("runs/demo_bench_quick" if FLAGS.quick else "runs/demo_bench")
        report = run_demo(DemoConfig(output_dir=out, quick=FLAGS.quick, resume=FLAGS.resume))
    text = table(report)
    print(text)
    quick = report["config"]["quick"]
    path = FLAGS.results or os.path.join(
        os.path.dirname(os.path.abspath(__file__)),
        "results",
        "demo_e2e_quick.json" if quick else "demo_e2e.json",
    )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(
            {
                "machine": {**report["machine"], "platform": platform.platform()},
                "quick": quick,
                "stages": report["stages"],
                "total_seconds": report["total_seconds"],
                "budgets_s": BUDGETS_S,
                "train": report["train"],
                "goals": report["goals"],
                "chosen": [
                    {k: c.get(k) for k in ("budget_ms", "latency_ms", "search_top1", "mflops")}
                    for c in report["chosen"]
                ],
                "table": text,
            },
            f,
            indent=2,
        )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
