"""Supernet vs extracted static model: the ``elasticvit-train`` step of the same subnet.

For each arch (default ``min``, ``elastic_S1``, ``elastic_L3``; ``min``/``middle``/``max`` of
the non-elasticvit spaces) times, interleaved in one process on the same batch:

* the full train step that ``elasticvit-train`` runs (``train_lib.make_trainer``: the
  ``SupernetTrainer`` step, label-smoothed CE, AGC, ``FusedAdamW``, EMA) of the supernet with
  one slot running the subnet, with the default semantics (every super-weight updated) and with
  ``--skip_unused_updates`` (rows marked ``skip_unused_updates: true``);
* the same trainer step on the extracted static model (wrapped as a one-slot net);
* forward + backward alone (no optimizer) of both.

Reports medians and ratios, then counts traces of the supernet step over random archs after
warm-up (expected: 0).

``--pieces`` instead times the per-weight work outside forward/backward over the supernet's
and the static elastic_S1 model's variable lists (Keras AdamW, ``FusedAdamW``, AGC, EMA,
zero-fill + accumulate), each as its own ``tf.function`` with constant gradients.

Usage:
  python benchmarks/supernet_step.py [--spaces=elasticvit] [--batch=8] [--reps=10]
      [--archs=min,elastic_S1,elastic_L3] [--device=GPU:0] [--retrace_archs=20] [--pieces]
Writes benchmarks/results/supernet_step.json (``--pieces``: supernet_step_pieces.json).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from elasticvit_tf.extract import extract_subnet
from elasticvit_tf.fileio import write_json_atomic
from elasticvit_tf.flops import count_flops
from elasticvit_tf.space import get_published_arch, get_space
from elasticvit_tf.supernet import ElasticSupernet
from elasticvit_tf.train import train_lib

NUM_CLASSES = {"elasticvit": 1000}


class StaticAsNet(keras.Model):
    """An extracted static model behind the supernet interface the trainer uses (one slot)."""

    DECAY_KEYS = ("qkv", "proj", "fc1", "fc2", "attention_bias", "dw_v", "head")

    def __init__(self, model, num_classes):
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.num_slots = 1

    def _check_slot(self, slot):
        return slot

    def call(self, x, training=False, slot=0):
        return self.model(x, training=training)

    def weight_decay_variables(self):
        return [
            v
            for v in self.model.trainable_variables
            if len(v.shape) >= 2 and any(k in v.path for k in self.DECAY_KEYS)
        ]


def make_step(net, skip_unused=False, mixed_precision="float32", fused_update=True):
    """The compiled ``elasticvit-train`` step of ``net`` (defaults of ``TrainConfig``);
    ``fused_update=False``: the Keras ``apply_gradients`` path instead of ``optim.FusedUpdate``."""
    config = train_lib.TrainConfig(
        model_dir="unused",
        num_subnets=net.num_slots,
        skip_unused_updates=skip_unused,
        mixed_precision=mixed_precision,
    )
    _, trainer = train_lib.make_trainer(config, net, 1e-4)
    trainer.set_roles(["uniform"] * net.num_slots)
    trainer.fused_update = fused_update
    step = tf.function(lambda x, y: trainer.train_step((x, y))["loss"], jit_compile=False)
    return step, trainer


def make_fwd_bwd(net):
    """Forward + backward only (no optimizer, AGC or EMA)."""
    variables = net.trainable_variables

    @tf.function(jit_compile=False)
    def grad(x, y):
        with tf.GradientTape() as tape:
            logits = net(x, training=True, slot=0)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            )
        grads = tape.gradient(loss, variables)
        return tf.add_n([tf.reduce_sum(g) for g in grads if g is not None]) + loss

    return grad


def time_pieces(reps):
    """Medians (ms) of the optimizer-side pieces over the supernet's and elastic_S1's weights."""
    from elasticvit_tf.model_dir import EmaWeights
    from elasticvit_tf.train import optim

    net = ElasticSupernet(get_space("elasticvit"), 1000, num_slots=1)
    static = extract_subnet(net, get_published_arch("elastic_S1"))

    def pieces(variables):
        grads = [tf.ones_like(v) * 1e-3 for v in variables]
        keras_opt, fused = keras.optimizers.AdamW(1e-4), optim.FusedAdamW(1e-4)
        keras_opt.build(variables)
        fused.build(variables)
        ema = EmaWeights(variables)

        def done(*_):
            return tf.constant(0.0)

        return {
            "keras_adamw": tf.function(
                lambda: done(keras_opt.apply_gradients(zip(grads, variables)))
            ),
            "fused_adamw": tf.function(lambda: done(fused.apply_gradients(zip(grads, variables)))),
            "agc": tf.function(
                lambda: tf.add_n(
                    [tf.reduce_sum(g) for g in optim.adaptive_clip_gradients(grads, variables)]
                )
            ),
            "ema": tf.function(lambda: done(optim.ema_update(ema.shadow, variables, 0.999))),
            "zero_fill_accumulate": tf.function(
                lambda: tf.add_n(
                    [tf.reduce_sum(tf.zeros(v.shape) + g) for v, g in zip(variables, grads)]
                )
            ),
        }

    sets = {
        "supernet": pieces(net.trainable_variables),
        "static_elastic_S1": pieces(static.trainable_variables),
    }
    for _ in range(2):
        for fns in sets.values():
            for fn in fns.values():
                fn().numpy()
    times = {(m, k): [] for m, fns in sets.items() for k in fns}
    for _ in range(reps):
        for m, fns in sets.items():
            for k, fn in fns.items():
                times[(m, k)].append(_timed(fn))
    rows = [{"model": m, "piece": k, "ms": _ms(t)} for (m, k), t in times.items()]
    for r in rows:
        print(f"{r['model']:18s} {r['piece']:22s} {r['ms']:8.1f} ms", flush=True)
    return rows


def pick_archs(space, names):
    rng = np.random.default_rng(0)
    out = []
    for n in names:
        if n == "min":
            out.append((n, space.min_arch()))
        elif n == "max":
            out.append((n, space.max_arch()))
        elif n == "middle":
            archs = sorted((space.sample(rng) for _ in range(201)), key=space_flops(space))
            out.append((n, archs[100]))
        else:
            out.append((n, get_published_arch(n)))
    return out


def space_flops(space):
    return lambda a: count_flops(space, a)


def _timed(fn, *args):
    t = time.perf_counter()
    fn(*args).numpy()
    return time.perf_counter() - t


def _ms(ts):
    return float(np.median(ts) * 1e3)


def bench_space(
    name, arch_names, batch, reps, retrace_archs, mixed_precision="", keras_update=False, save=None
):
    space = get_space(name)
    num_classes = NUM_CLASSES.get(name, 10)
    net = ElasticSupernet(space, num_classes, num_slots=1)
    super_step, _ = make_step(net)
    skip_step, _ = make_step(net, skip_unused=True)
    super_grad = make_fwd_bwd(net)
    unfused = {"keras_update": make_step(net, fused_update=False)[0]} if keras_update else {}
    mixed = {}
    if mixed_precision:  # the same step under --mixed_precision, same weights
        mp_net = ElasticSupernet(
            space,
            num_classes,
            num_slots=1,
            dtype_policy=train_lib.MIXED_PRECISION[mixed_precision],
        )
        mp_net.set_weights(net.get_weights())
        mixed = {"mixed": make_step(mp_net, mixed_precision=mixed_precision)[0]}
    rng = np.random.default_rng(0)
    rows = []
    for label, arch in pick_archs(space, arch_names):
        r = arch.resolution
        x = tf.constant(rng.normal(size=(batch, r, r, 3)).astype("float32"))
        y = tf.constant(rng.integers(0, num_classes, size=batch).astype("int32"))
        net.set_arch(arch)
        if mixed:
            mp_net.set_arch(arch)
        static = StaticAsNet(extract_subnet(net, arch), num_classes)
        static_step, _ = make_step(static)
        static_grad = make_fwd_bwd(static)
        if keras_update:
            unfused["static_keras_update"] = make_step(static, fused_update=False)[0]
        fns = {
            "supernet": super_step,
            "skip": skip_step,
            "static": static_step,
            "supernet_fb": super_grad,
            "static_fb": static_grad,
            **mixed,
            **unfused,
        }
        for _ in range(2):  # warm-up (traces, allocator)
            for fn in fns.values():
                fn(x, y).numpy()
        times = {k: [] for k in fns}
        load0 = os.getloadavg()
        for _ in range(reps):
            for k, fn in fns.items():
                times[k].append(_timed(fn, x, y))
        base = {
            "space": name,
            "arch": label,
            "key": arch.key(),
            "mflops": round(count_flops(space, arch), 3),
            "batch": batch,
            "num_classes": num_classes,
            "reps": reps,
            "loadavg": [round(v, 2) for v in os.getloadavg()],
            "loadavg_start": [round(v, 2) for v in load0],
            "static_ms": _ms(times["static"]),
            "supernet_fwd_bwd_ms": _ms(times["supernet_fb"]),
            "static_fwd_bwd_ms": _ms(times["static_fb"]),
            "supernet_params": int(sum(np.prod(v.shape) for v in net.trainable_variables)),
            "static_params": int(sum(np.prod(v.shape) for v in static.trainable_variables)),
        }
        base["ratio_fwd_bwd"] = base["supernet_fwd_bwd_ms"] / base["static_fwd_bwd_ms"]
        variants = [("supernet", False, "float32", "fused"), ("skip", True, "float32", "fused")]
        if mixed:
            variants.append(("mixed", False, mixed_precision, "fused"))
        if keras_update:
            variants.append(("keras_update", False, "float32", "keras"))
        for key, skip, precision, update in variants:
            row = dict(
                base,
                skip_unused_updates=skip,
                mixed_precision=precision,
                update=update,
                supernet_ms=_ms(times[key]),
            )
            if update == "keras":  # both steps on the Keras apply_gradients path
                row["static_ms"] = _ms(times["static_keras_update"])
            row["ratio"] = row["supernet_ms"] / row["static_ms"]
            if precision != "float32":  # float32 supernet step / this step
                row["speedup_vs_float32"] = _ms(times["supernet"]) / row["supernet_ms"]
            rows.append(row)
            kind = (
                "skip_unused "
                if skip
                else (f"{precision:12s}" if mixed and key == "mixed" else "default     ")
            )
            kind = "keras_update" if update == "keras" else kind
            print(
                f"{name:10s} {label:10s} {row['mflops']:8.2f} MFLOPs b={batch} "
                f"{kind} supernet {row['supernet_ms']:7.1f}"
                f" ms static {row['static_ms']:7.1f} ms ratio {row['ratio']:.3f} | fwd+bwd "
                f"{row['supernet_fwd_bwd_ms']:.1f} vs {row['static_fwd_bwd_ms']:.1f} ms ratio "
                f"{row['ratio_fwd_bwd']:.3f}  load {row['loadavg'][0]}",
                flush=True,
            )
        if save is not None:  # after every arch: a killed run keeps its rows
            save(rows)
    trace = None
    if retrace_archs > 0:
        r = min(space.resolutions)
        x = tf.constant(rng.normal(size=(batch, r, r, 3)).astype("float32"))
        y = tf.constant(rng.integers(0, num_classes, size=batch).astype("int32"))
        counts = {}
        for key, fn in (("default", super_step), ("skip_unused_updates", skip_step)):
            net.set_arch(space.sample(rng))
            fn(x, y).numpy()
            before = fn.experimental_get_tracing_count()
            for _ in range(retrace_archs):
                net.set_arch(space.sample(rng))
                fn(x, y).numpy()
            counts[key] = fn.experimental_get_tracing_count() - before
        trace = {"space": name, "archs": retrace_archs, "retraces": counts}
        print(f"{name:10s} retraces over {retrace_archs} random archs: {counts}", flush=True)
    return rows, trace


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--spaces", default="elasticvit")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--archs", default="", help="default: min,elastic_S1,elastic_L3 (elasticvit)")
    p.add_argument("--retrace_archs", type=int, default=20)
    p.add_argument("--device", default="", help="e.g. GPU:0 (default: TensorFlow's placement)")
    p.add_argument("--graph_optimizations", default="auto", choices=("auto", "on", "off"))
    p.add_argument("--pieces", action="store_true", help="time the optimizer-side pieces only")
    p.add_argument(
        "--mixed_precision",
        default="",
        choices=("", "bfloat16", "float16"),
        help="also time the supernet step under this --mixed_precision (rows marked)",
    )
    p.add_argument(
        "--compare_keras_update",
        action="store_true",
        help="also time both steps with the Keras apply_gradients update (rows update=keras)",
    )
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    name = "supernet_step_pieces.json" if args.pieces else "supernet_step.json"
    args.out = args.out or os.path.join(os.path.dirname(__file__), "results", name)
    gpus = tf.config.list_physical_devices("GPU")
    if args.device.upper().startswith("GPU") and not gpus:
        print(f"--device={args.device}: no GPU visible to TensorFlow; nothing to time")
        return 2
    graph_opt = args.graph_optimizations
    if graph_opt == "off" or (graph_opt == "auto" and not gpus):  # as elasticvit-train
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    if args.pieces:
        rows = time_pieces(args.reps)
        write_json_atomic(
            args.out,
            {"benchmark": "supernet_step_pieces", "loadavg": os.getloadavg(), "rows": rows},
        )
        print(f"wrote {args.out}")
        return 0
    all_rows, traces = [], []
    result = {
        "benchmark": "supernet_step",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python benchmarks/supernet_step.py "
        + " ".join(f"--{k}={v}" for k, v in vars(args).items() if k != "out"),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": args.device or "default",
        "gpus": [d.name for d in gpus],
        "rows": all_rows,
        "traces": traces,
    }

    def save(space_rows):
        write_json_atomic(args.out, dict(result, rows=all_rows + space_rows))

    for name in args.spaces.split(","):
        names = args.archs.split(",") if args.archs else None
        if names is None:
            names = ["min", "elastic_S1", "elastic_L3"] if name == "elasticvit" else None
            names = names or ["min", "middle", "max"]
        with tf.device(args.device or None):
            rows, tr = bench_space(
                name,
                names,
                args.batch,
                args.reps,
                args.retrace_archs,
                args.mixed_precision,
                keras_update=args.compare_keras_update,
                save=save,
            )
        all_rows += rows
        traces.append(tr)
    print(
        "\n| space | arch | update | skip_unused | precision | batch | supernet ms | static ms "
        "| ratio | fwd+bwd supernet ms | fwd+bwd static ms | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in all_rows:
        print(
            f"| {r['space']} | {r['arch']} | {r['update']} | "
            f"{'yes' if r['skip_unused_updates'] else 'no'} | {r['mixed_precision']} | "
            f"{r['batch']} | {r['supernet_ms']:.1f} | {r['static_ms']:.1f} | {r['ratio']:.3f} | "
            f"{r['supernet_fwd_bwd_ms']:.1f} | {r['static_fwd_bwd_ms']:.1f} | "
            f"{r['ratio_fwd_bwd']:.3f} |"
        )
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
