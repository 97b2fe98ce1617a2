"""Exported-model latency: the 9 published ElasticViT models vs keras.applications baselines.

Every model (untrained weights: latency does not depend on them) is converted the same way as
`elasticvit-export` does (`export/tflite.py::convert`, builtin ops only), in float32 and full
int8 (float I/O, random representative images), and timed with LiteRT (`export/benchmark.py::
benchmark_local`), batch 1, `--num_threads` (default 1) on this CPU. Prints a table with the
EfficientNetB0 / ElasticViT-S1 latency ratio next to the paper's 2.62x (measured on a phone) and
writes JSON under benchmarks/results/ (after every model, so a partial run keeps its rows).

    python benchmarks/export_latency.py [--models elastic_S1,EfficientNetB0] [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

PAPER_RATIO_EFFNET_B0_OVER_S1 = 2.62
ELASTIC = [
    "elastic_S1",
    "elastic_T1",
    "elastic_T2",
    "elastic_S2",
    "elastic_M",
    "elastic_L1",
    "elastic_L1.5",
    "elastic_L2",
    "elastic_L3",
]
BASELINES = ["EfficientNetB0", "MobileNetV3Small", "MobileNetV3Large"]
DEFAULT_ORDER = ["elastic_S1", "EfficientNetB0", "MobileNetV3Small", "MobileNetV3Large"] + [
    n for n in ELASTIC if n != "elastic_S1"
]


def _elastic_builder():
    from elasticvit_tf.extract import extract_subnet
    from elasticvit_tf.flops import count_flops, count_params
    from elasticvit_tf.model_dir import ensure_built
    from elasticvit_tf.space import get_published_arch, get_space
    from elasticvit_tf.supernet import ElasticSupernet

    space = get_space("elasticvit")
    state = {}

    def build(name):
        if "net" not in state:
            net = ElasticSupernet(space, 1000, num_slots=1)
            ensure_built(net, space)
            state["net"] = net
        arch = get_published_arch(name)
        model = extract_subnet(state["net"], arch)
        info = {
            "resolution": arch.resolution,
            "mflops": float(count_flops(space, arch)),
            "params_m": float(count_params(space, arch)) / 1e6,
        }
        return model, info

    return build


def _baseline(name):
    import keras

    cls = getattr(keras.applications, name)
    kwargs = {"weights": None, "input_shape": (224, 224, 3), "classes": 1000}
    model = cls(**kwargs)
    return model, {"resolution": 224, "mflops": None, "params_m": model.count_params() / 1e6}


def main():
    from elasticvit_tf.export import benchmark as B
    from elasticvit_tf.export import tflite as T

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_ORDER))
    parser.add_argument("--modes", default="float32,int8")
    parser.add_argument("--num_threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--representative_steps", type=int, default=8)
    parser.add_argument(
        "--output",
        default=os.path.join(os.path.dirname(__file__), "results", "export_latency.json"),
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in ELASTIC + BASELINES]
    if unknown:
        raise SystemExit(f"Unknown models {unknown}; expected among {ELASTIC + BASELINES}.")
    modes = T.parse_modes(args.modes)
    build_elastic = _elastic_builder()
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    rows = []
    result = {
        "provenance": {
            **B.runtime_versions(),
            "num_threads": args.num_threads,
            "warmup": args.warmup,
            "runs": args.runs,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average_start": os.getloadavg(),
            "note": "untrained weights; batch 1; LiteRT (XNNPACK) on the local CPU",
        },
        "rows": rows,
    }
    for name in names:
        t0 = time.time()
        model, info = build_elastic(name) if name.startswith("elastic") else _baseline(name)
        r = info["resolution"]
        rng = np.random.default_rng(0)
        rep = rng.standard_normal((args.representative_steps, r, r, 3)).astype(np.float32)
        row = {"model": name, **info}
        for mode in modes:
            tc = time.time()
            data = T.convert(
                model, mode, representative_dataset=rep if mode.value == "int8" else None
            )
            convert_s = time.time() - tc
            res = B.benchmark_local(
                data, num_threads=args.num_threads, warmup=args.warmup, runs=args.runs
            )
            row[mode.value] = {
                "median_ms": res.median_ms,
                "p5_ms": res.p5_ms,
                "p95_ms": res.p95_ms,
                "mean_ms": res.mean_ms,
                "init_ms": res.init_ms,
                "size_mb": len(data) / 2**20,
                "convert_s": convert_s,
                "load_average": os.getloadavg()[0],
            }
            print(
                f"{name:18s} {mode.value:8s} median {res.median_ms:8.2f} ms  p5 {res.p5_ms:8.2f}"
                f"  p95 {res.p95_ms:8.2f}  size {len(data) / 2**20:6.2f} MiB"
                f"  (convert {convert_s:.0f} s, load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
        row["seconds"] = time.time() - t0
        rows.append(row)
        _ratios(result, modes)
        with open(args.output + ".tmp", "w") as f:
            json.dump(result, f, indent=2)
        os.replace(args.output + ".tmp", args.output)
        del model
    print()
    print(table(result, modes))
    print(f"\nWrote {args.output}")


def _ratios(result, modes):
    by = {r["model"]: r for r in result["rows"]}
    out = {}
    if "EfficientNetB0" in by and "elastic_S1" in by:
        for mode in modes:
            m = mode.value
            out[m] = by["EfficientNetB0"][m]["median_ms"] / by["elastic_S1"][m]["median_ms"]
    result["ratio_efficientnet_b0_over_elastic_s1"] = out
    result["paper_ratio_efficientnet_b0_over_elastic_s1"] = PAPER_RATIO_EFFNET_B0_OVER_S1


def table(result, modes) -> str:
    mnames = [m.value for m in modes]
    head = "| model | res | MFLOPs | params M | " + " | ".join(
        f"{m} median ms (p5-p95) | {m} MiB" for m in mnames
    )
    lines = [head + " |", "|" + "---|" * (4 + 2 * len(mnames))]
    for r in result["rows"]:
        cells = [
            r["model"],
            str(r["resolution"]),
            "-" if r["mflops"] is None else f"{r['mflops']:.0f}",
            f"{r['params_m']:.2f}",
        ]
        for m in mnames:
            e = r[m]
            cells += [
                f"{e['median_ms']:.2f} ({e['p5_ms']:.2f}-{e['p95_ms']:.2f})",
                f"{e['size_mb']:.2f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    ratios = result.get("ratio_efficientnet_b0_over_elastic_s1", {})
    if ratios:
        lines.append("")
        lines.append(
            "EfficientNetB0 / ElasticViT-S1 latency: "
            + ", ".join(f"{m} {v:.2f}x" for m, v in ratios.items())
            + f" (paper, on a phone: {PAPER_RATIO_EFFNET_B0_OVER_S1:.2f}x)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
