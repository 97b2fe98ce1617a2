"""Exported-model latency: the 9 published ElasticViT models vs keras.applications baselines.

Every model (untrained weights: latency does not depend on them) is converted exactly as
`elasticvit-export` does by default (`export/tflite.py::convert`, builtin ops only, fixed batch
1), in float32 and the shipped `int8` recipe (float I/O, random representative images; add
`int8_full` for the all-int8 model; the keras.applications baselines keep the all-int8
conversion in the `int8` column, as before), and timed with LiteRT (`export/benchmark.py::
benchmark_local`), `--num_threads` (default 1) on this CPU, the modes of a model interleaved in
one process. Per mode it also records the XNNPACK partitions, the op types left on builtin
kernels and the TRANSPOSE/RESHAPE/STRIDED_SLICE count per attention (SOFTMAX) layer; with
`--op_profile` the measured per-op profile by op type (`export/op_profile.py`). Prints a table
with the EfficientNetB0 / ElasticViT-S1 latency ratio next to the paper's 2.62x (measured on a
phone) and the int8 / float32 speed-up, and writes JSON under benchmarks/results/ (after every
model, so a partial run keeps its rows).

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
    from elasticvit_tf.export import op_profile as P
    from elasticvit_tf.export import tflite as T

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_ORDER))
    parser.add_argument("--modes", default="float32,int8")
    parser.add_argument("--num_threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--representative_steps", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=1, help="0: dynamic batch")
    parser.add_argument("--op_profile", action="store_true", help="measured per-op profile")
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
            "batch_size": args.batch_size,
            "int8_float_ops": list(T.INT8_FLOAT_OPS),
            "note": "untrained weights; LiteRT (XNNPACK) on the local CPU; modes interleaved",
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
        files = {}
        for mode in modes:
            tc = time.time()
            # The keras.applications baselines keep their plain full-integer conversion: the
            # recipe's float op list is chosen for ElasticViT's blocks.
            as_mode = mode
            if mode is T.QuantMode.INT8 and not name.startswith("elastic"):
                as_mode = T.QuantMode.INT8_FULL
            files[mode.value] = T.convert(
                model,
                as_mode,
                representative_dataset=rep if mode.needs_representative_data else None,
                batch_size=args.batch_size or None,
            )
            row[mode.value] = {"convert_s": time.time() - tc, "converted_as": as_mode.value}
        # Interleave the timed runs of the modes so that load changes hit them alike.
        chunk = max(1, args.runs // 5)
        results = {m: [] for m in files}
        for rep_i in range(-(-args.runs // chunk)):
            for m, data in files.items():
                res = B.benchmark_local(
                    data,
                    num_threads=args.num_threads,
                    warmup=args.warmup if rep_i == 0 else 1,
                    runs=chunk,
                )
                results[m].append(res)
        for m, data in files.items():
            # Median over the chunks' medians; p5 / p95: the extremes of the chunks' ones.
            medians = [r.median_ms for r in results[m]]
            ops = T.list_ops(data)
            delegated, partitions = P.delegation(data, args.num_threads)
            attn = ops.get("SOFTMAX", 0)
            entry = row[m]
            entry.update(
                median_ms=float(np.median(medians)),
                p5_ms=float(min(r.p5_ms for r in results[m])),
                p95_ms=float(max(r.p95_ms for r in results[m])),
                mean_ms=float(np.mean([r.mean_ms for r in results[m]])),
                runs=int(sum(r.runs for r in results[m])),
                init_ms=results[m][0].init_ms,
                size_mb=len(data) / 2**20,
                load_average=os.getloadavg()[0],
                xnnpack_partitions=partitions,
                builtin_kernel_ops=int(len(delegated) - sum(delegated)),
                float_op_types=T.float_op_types(data) if m.startswith("int8") else None,
                shape_ops_per_attention_layer=(
                    None
                    if not attn
                    else {
                        k: ops.get(k, 0) / attn for k in ("TRANSPOSE", "RESHAPE", "STRIDED_SLICE")
                    }
                ),
            )
            if args.op_profile:
                prof = P.profile_local(data, num_threads=args.num_threads, runs=10)
                entry["op_profile"] = {
                    k: v for k, v in prof.to_dict().items() if k not in ("ops", "method_text")
                }
                print(prof.table(), flush=True)
            print(
                f"{name:18s} {m:9s} median {entry['median_ms']:8.2f} ms  p5 {entry['p5_ms']:8.2f}"
                f"  p95 {entry['p95_ms']:8.2f}  size {entry['size_mb']:6.2f} MiB"
                f"  partitions {partitions}  builtin ops {entry['builtin_kernel_ops']}"
                f"  (convert {entry['convert_s']:.0f} s, load {os.getloadavg()[0]:.1f})",
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
    result["speedup_int8_over_float32"] = {
        r["model"]: r["float32"]["median_ms"] / r["int8"]["median_ms"]
        for r in result["rows"]
        if "float32" in r and "int8" in r
    }
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
    speedups = result.get("speedup_int8_over_float32", {})
    if speedups:
        lines.append(
            "int8 speed-up over float32 (float32 ms / int8 ms): "
            + ", ".join(f"{k} {v:.2f}x" for k, v in speedups.items())
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
