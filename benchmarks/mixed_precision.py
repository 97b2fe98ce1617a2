"""Mixed precision on the demo recipe: the same training (seed, steps, data order) in float32 and
under ``--mixed_precision``, final accuracy side by side and throughput.

Each run is ``elasticvit-train --preset=demo --steps=N --mixed_precision=P`` (``TrainConfig.demo``)
into its own model_dir under ``--work_dir``; the final EMA min and max subnets are evaluated as
the training does (BN recalibrated, full test split). A finished run is kept in the JSON and
skipped on a rerun; an interrupted one resumes from its checkpoint.

    python benchmarks/mixed_precision.py [--steps=600] [--precisions=float32,bfloat16]
    python benchmarks/mixed_precision.py --report_only

Writes benchmarks/results/mixed_precision.json. The throughput of sequential runs moves with
the machine's load: benchmarks/supernet_step.py --mixed_precision times the steps interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def render(doc: dict) -> str:
    runs = doc["runs"]
    lines = [
        f"Demo recipe, {doc['steps']} steps, seed {doc['seed']}",
        "",
        "| precision | min top-1 | max top-1 | images/s | train s | load |",
        "|---|---|---|---|---|---|",
    ]
    for p, r in runs.items():
        lines.append(
            f"| {p} | {100 * r['min_top1']:.2f} % | {100 * r['max_top1']:.2f} % | "
            f"{r['images_per_second']:.0f} | {r['train_seconds']:.0f} | {r['loadavg']:.2f} |"
        )
    if "float32" in runs:
        for p, r in runs.items():
            if p != "float32":
                d_min = 100 * (r["min_top1"] - runs["float32"]["min_top1"])
                d_max = 100 * (r["max_top1"] - runs["float32"]["max_top1"])
                lines.append(f"\n{p} - float32: min {d_min:+.2f} points, max {d_max:+.2f} points")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precisions", default="float32,bfloat16")
    p.add_argument("--out", default=os.path.join(RESULTS, "mixed_precision.json"))
    p.add_argument("--work_dir", default=os.path.join(RESULTS, "mixed_precision_work"))
    p.add_argument("--report_only", action="store_true")
    args = p.parse_args(argv)
    if args.report_only:
        if not os.path.exists(args.out):
            print(f"--report_only: {args.out} does not exist; run the benchmark first")
            return 2
        with open(args.out) as f:
            print(render(json.load(f)))
        return 0

    from elasticvit_tf.fileio import write_json_atomic
    from elasticvit_tf.train import train_lib

    precisions = [s for s in args.precisions.split(",") if s]
    bad = [s for s in precisions if s not in train_lib.MIXED_PRECISION]
    if bad or args.steps < 1:
        print(
            f"--precisions={args.precisions} --steps={args.steps}: expected names from "
            f"{list(train_lib.MIXED_PRECISION)} and steps >= 1",
            file=sys.stderr,
        )
        return 2
    doc = {"benchmark": "mixed_precision", "steps": args.steps, "seed": args.seed, "runs": {}}
    if os.path.exists(args.out):
        with open(args.out) as f:
            old = json.load(f)
        if old.get("steps") == args.steps and old.get("seed") == args.seed:
            doc = old
    for precision in precisions:
        if precision in doc["runs"]:
            print(f"{precision}: done earlier, kept", flush=True)
            continue
        cfg = train_lib.TrainConfig.demo(
            os.path.join(args.work_dir, f"{precision}_s{args.steps}_seed{args.seed}"),
            steps=args.steps,
            warmup_steps=max(1, min(100, args.steps // 10)),  # the demo's 100 at >= 1000 steps
            seed=args.seed,
            mixed_precision=precision,
            verbose=0,
        )
        print(f"{precision}: training {args.steps} steps", flush=True)
        t0 = time.perf_counter()
        r = train_lib.train(cfg)
        doc["runs"][precision] = {
            "min_top1": r["min_top1"],
            "max_top1": r["max_top1"],
            "images_per_second": r["images_per_second"],
            "train_seconds": r["train_seconds"],
            "wall_seconds": time.perf_counter() - t0,
            "resumed_from_step": r["resumed_from_step"],
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "loadavg": os.getloadavg()[0],
            "host": platform.node(),
        }
        write_json_atomic(args.out, doc)
    print(render(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
