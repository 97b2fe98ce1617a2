"""Supernet vs extracted static model: train-step time of the same subnet, and retraces.

For the min, a middle (median-FLOPs of 201 samples) and the max arch of each space, times a
full train step (forward + backward + AdamW update, same batch, inputs already at the arch
resolution) of the supernet running the subnet and of the extracted static model, interleaved
in one process; reports medians, p10/p90 and the ratio. Then counts the traces of the
supernet's train step (fixed input shape) over random archs after warm-up.

Usage:
  python benchmarks/supernet_step.py [--spaces demo,elasticvit] [--reps 20] [--archs 200]
Writes benchmarks/results/supernet_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from elasticvit_tf.extract import extract_subnet
from elasticvit_tf.flops import count_flops
from elasticvit_tf.space import get_space
from elasticvit_tf.supernet import ElasticSupernet

BATCH = {"tiny": 8, "demo": 16, "elasticvit": 2}


def _loss(y, logits):
    return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))


def make_grad(model, call):
    """Forward + backward only (no optimizer): isolates the graph overhead of the supernet
    from the optimizer update, which touches every super-weight (by design,
    docs/method.md#training-recipe)."""
    variables = model.trainable_variables

    @tf.function(jit_compile=False)
    def grad(x, y):
        with tf.GradientTape() as tape:
            loss = _loss(y, call(x))
        grads = tape.gradient(loss, variables)
        return tf.add_n([tf.reduce_sum(g) for g in grads if g is not None]) + loss

    return grad


def make_step(model, call):
    opt = keras.optimizers.AdamW(1e-4)
    variables = model.trainable_variables
    opt.build(variables)

    @tf.function(jit_compile=False)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = _loss(y, call(x))
        grads = tape.gradient(loss, variables)
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
        opt.apply_gradients(zip(grads, variables))
        return loss

    return step


def middle_arch(space, seed=0):
    rng = np.random.default_rng(seed)
    archs = [space.sample(rng) for _ in range(201)]
    archs.sort(key=lambda a: count_flops(space, a))
    return archs[100]


def _timed(fn, *args):
    t = time.perf_counter()
    fn(*args).numpy()
    return time.perf_counter() - t


def bench_space(name, reps, n_archs, num_classes=10):
    space = get_space(name)
    net = ElasticSupernet(space, num_classes, num_slots=1)
    super_step = make_step(net, lambda x: net(x, training=True, slot=0))
    super_grad = make_grad(net, lambda x: net(x, training=True, slot=0))
    rows = []
    rng = np.random.default_rng(0)
    for label, arch in (
        ("min", space.min_arch()),
        ("middle", middle_arch(space)),
        ("max", space.max_arch()),
    ):
        r, b = arch.resolution, BATCH[name]
        x = tf.constant(rng.normal(size=(b, r, r, 3)).astype("float32"))
        y = tf.constant(rng.integers(0, num_classes, size=b))
        net.set_arch(arch)
        model = extract_subnet(net, arch)
        static_step = make_step(model, lambda x, m=model: m(x, training=True))
        static_grad = make_grad(model, lambda x, m=model: m(x, training=True))
        fns = [super_step, static_step, super_grad, static_grad]
        for _ in range(3):  # warm-up (traces, grappler, allocator)
            for fn in fns:
                fn(x, y).numpy()
        times = [[] for _ in fns]
        for _ in range(reps):
            for fn, t in zip(fns, times):
                t.append(_timed(fn, x, y))
        ts, tm, gs, gm = (np.array(t) for t in times)
        row = {
            "space": name,
            "arch": label,
            "key": arch.key(),
            "mflops": round(count_flops(space, arch), 3),
            "batch": b,
            "supernet_ms": float(np.median(ts) * 1e3),
            "static_ms": float(np.median(tm) * 1e3),
            "supernet_p10_p90_ms": [
                float(np.percentile(ts, 10) * 1e3),
                float(np.percentile(ts, 90) * 1e3),
            ],
            "static_p10_p90_ms": [
                float(np.percentile(tm, 10) * 1e3),
                float(np.percentile(tm, 90) * 1e3),
            ],
        }
        row["ratio"] = row["supernet_ms"] / row["static_ms"]
        row["supernet_fwd_bwd_ms"] = float(np.median(gs) * 1e3)
        row["static_fwd_bwd_ms"] = float(np.median(gm) * 1e3)
        row["ratio_fwd_bwd"] = row["supernet_fwd_bwd_ms"] / row["static_fwd_bwd_ms"]
        row["supernet_params"] = int(sum(np.prod(v.shape) for v in net.trainable_variables))
        row["static_params"] = int(sum(np.prod(v.shape) for v in model.trainable_variables))
        rows.append(row)
        print(
            f"{name:10s} {label:6s} {row['mflops']:9.2f} MFLOPs b={b:3d}  supernet "
            f"{row['supernet_ms']:8.1f} ms  static {row['static_ms']:8.1f} ms  "
            f"ratio {row['ratio']:.3f} | fwd+bwd {row['supernet_fwd_bwd_ms']:.1f} vs "
            f"{row['static_fwd_bwd_ms']:.1f} ms ratio {row['ratio_fwd_bwd']:.3f}",
            flush=True,
        )
    if n_archs <= 0:
        return rows, {"space": name, "archs": 0, "retraces": None}
    # retraces over random archs at a fixed input shape, after warm-up
    r = min(space.resolutions)  # any fixed input size works (resized in-model)
    b = BATCH[name]
    x = tf.constant(rng.normal(size=(b, r, r, 3)).astype("float32"))
    y = tf.constant(rng.integers(0, num_classes, size=b))
    net.set_arch(space.sample(rng))
    super_step(x, y).numpy()
    before = super_step.experimental_get_tracing_count()
    t = time.perf_counter()
    for _ in range(n_archs):
        net.set_arch(space.sample(rng))
        super_step(x, y).numpy()
    elapsed = time.perf_counter() - t
    retraces = super_step.experimental_get_tracing_count() - before
    print(
        f"{name:10s} retraces over {n_archs} random archs (train step): {retraces}  "
        f"({elapsed / n_archs * 1e3:.1f} ms/step)",
        flush=True,
    )
    return rows, {
        "space": name,
        "archs": n_archs,
        "retraces": retraces,
        "ms_per_step": elapsed / n_archs * 1e3,
        "input": [b, r, r, 3],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--spaces", default="demo,elasticvit")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--archs", type=int, default=200)
    p.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "results", "supernet_step.json")
    )
    args = p.parse_args()
    all_rows, traces = [], []
    for name in args.spaces.split(","):
        rows, tr = bench_space(name, args.reps, args.archs)
        all_rows += rows
        traces.append(tr)
    print(
        "\n| space | arch | MFLOPs | batch | supernet ms | static ms | ratio "
        "| fwd+bwd supernet ms | fwd+bwd static ms | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in all_rows:
        print(
            f"| {r['space']} | {r['arch']} | {r['mflops']:.2f} | {r['batch']} | "
            f"{r['supernet_ms']:.1f} | {r['static_ms']:.1f} | {r['ratio']:.3f} | "
            f"{r['supernet_fwd_bwd_ms']:.1f} | {r['static_fwd_bwd_ms']:.1f} | "
            f"{r['ratio_fwd_bwd']:.3f} |"
        )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    result = {
        "benchmark": "supernet_step",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "reps": args.reps,
        "rows": all_rows,
        "traces": traces,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
