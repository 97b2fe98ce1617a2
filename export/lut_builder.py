"""Latency lookup table (LUT) builder: measure blocks, fit per-block-type models, write JSON.

For one space, target and quantization mode the builder

0. measures the invoke overhead of a near-empty model; block entries are stored net of it
   (each one-block model pays it once, a whole subnet once in total: without this, a
   17-block ``tiny`` subnet was over-predicted 2x);
1. measures the TFLite latency of a designed sample of the space's blocks
   (``latency_ops.enumerate_ops``: first conv, stem blocks, MBConvs, transition MBConvs,
   transformer layers, head), each as its own batch-1 model, round-robin over block types so
   that every type gets samples when the time budget is short (extremes first, then random);
2. fits one non-negative linear model per block type on shape features (MACs, activation
   traffic, params, tokens, attention size, op count), in the spirit of nn-Meter's kernel
   predictors: a block not measured is predicted from its type's model;
3. measures a few whole subnets end to end and fits the per-model constant (and, given enough
   subnets, a scale): ``whole ~= scale * sum(blocks) + constant_ms``;
4. writes a versioned JSON (format ``elasticvit-latency-lut`` v1) with provenance (target,
   runtime and version, threads, warm-up and runs, date, host, builder commit) and the space
   fingerprint; ``search/latency.py`` reads it.

``--target=local`` times with LiteRT in this process; ``adb:SERIAL`` goes through
``export.benchmark.benchmark`` (the project's one ``benchmark_model`` runner and parser).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import json
import os
import platform
import subprocess
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from elasticvit_tf.arch import ArchConfig
from elasticvit_tf.latency_ops import OpKind, OpSignature, decompose, enumerate_ops, op_features
from elasticvit_tf.space import SearchSpace

LUT_FORMAT = "elasticvit-latency-lut"
LUT_VERSION = 1
MODES = ("fp32", "int8")
_MODE_ALIASES = {"fp32": "fp32", "float32": "fp32", "int8": "int8"}

# Features each block type's regressor uses (a subset of latency_ops.FEATURE_NAMES).
KIND_FEATURES: dict[OpKind, tuple[str, ...]] = {
    OpKind.FIRST_CONV: ("macs", "act_elems"),
    OpKind.STEM_BLOCK: ("macs", "act_elems"),
    OpKind.MBCONV: ("macs", "act_elems", "params", "ops"),
    OpKind.TRANSITION: ("macs", "act_elems", "params"),
    OpKind.TRANSFORMER: ("macs", "act_elems", "attn_elems", "tokens"),
    OpKind.HEAD: ("macs", "act_elems"),
}


def canonical_mode(mode: str) -> str:
    """'fp32'/'float32' -> 'fp32', 'int8' -> 'int8'; anything else raises ValueError."""
    m = _MODE_ALIASES.get(str(mode).strip().lower())
    if m is None:
        raise ValueError(f"mode={mode!r}: expected one of {list(MODES)} (or 'float32')")
    return m


# ------------------------------------------------------------------------- convert + time
def convert_for_latency(model, mode: str, num_calibration: int = 4, seed: int = 0) -> bytes:
    """Converts a batch-1 Keras model to TFLite (builtin ops only) for timing.

    The model is wrapped in a bare ``tf.Module`` (``tflite.fixed_batch_module``: its
    variables and one batch-1 traced signature) and converted with ``from_saved_model``: the
    same graph as ``from_keras_model`` but without Keras' per-layer SavedModel tracing, ~2x
    faster to write. ``int8`` is full-integer quantization with float I/O, calibrated on
    random normal inputs (latency does not depend on the calibration values).
    """
    import tensorflow as tf

    from elasticvit_tf.export.tflite import fixed_batch_module

    mode = canonical_mode(mode)
    module = fixed_batch_module(model, 1)
    shape = tuple(module.serve.input_signature[0].shape)
    with tempfile.TemporaryDirectory() as d:
        tf.saved_model.save(module, d, signatures=module.serve.get_concrete_function())
        conv = tf.lite.TFLiteConverter.from_saved_model(d)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if mode == "int8":
            rng = np.random.default_rng(seed)
            samples = [
                rng.standard_normal(shape).astype(np.float32) for _ in range(num_calibration)
            ]
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = lambda: iter([[s] for s in samples])
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        with contextlib.redirect_stdout(io.StringIO()):
            return bytes(conv.convert())


CLOCKS = ("wall", "cpu")


def time_tflite(
    tflite: bytes,
    num_threads: int = 1,
    warmup: int = 10,
    runs: int = 50,
    min_time_s: float = 0.0,
    clock: str = "wall",
) -> dict[str, float]:
    """Times ``invoke`` with LiteRT (XNNPACK default delegate): median, p5, p95, cv, runs.

    ``clock="wall"`` is the latency; ``clock="cpu"`` is the calling thread's CPU time, which
    equals it on an idle core with 1 thread (the interpreter runs inline) and stays right on a
    shared, overloaded CPU where wall time includes waiting for a core (measured: a 1.2 ms
    transformer block read 12 ms wall, 1.46 ms CPU at load 10 on 2 cores).
    """
    from ai_edge_litert.interpreter import Interpreter

    if clock not in CLOCKS:
        raise ValueError(f"clock={clock!r}: expected one of {list(CLOCKS)}")
    if clock == "cpu" and num_threads != 1:
        raise ValueError(
            f"clock='cpu' needs num_threads=1 (got {num_threads}): other threads' work is not "
            "counted by the calling thread's CPU time"
        )
    now = time.thread_time if clock == "cpu" else time.perf_counter

    it = Interpreter(model_content=tflite, num_threads=num_threads)
    it.allocate_tensors()
    rng = np.random.default_rng(0)
    for d in it.get_input_details():
        it.set_tensor(d["index"], rng.standard_normal(d["shape"]).astype(d["dtype"]))
    for _ in range(warmup):
        it.invoke()
    ts = []
    start = time.perf_counter()
    while len(ts) < runs or (time.perf_counter() - start < min_time_s and len(ts) < 20 * runs):
        t0 = now()
        it.invoke()
        ts.append(now() - t0)
    ms = np.array(ts) * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "p5_ms": float(np.percentile(ms, 5)),
        "p95_ms": float(np.percentile(ms, 95)),
        "cv": float(np.std(ms) / np.mean(ms)),
        # NOTE: robust spread (1.4826 * MAD / median): preemption outliers dominate plain CV
        "robust_cv": float(1.4826 * np.median(np.abs(ms - np.median(ms))) / np.median(ms)),
        "runs": len(ms),
    }


@dataclasses.dataclass(frozen=True)
class MeasureConfig:
    """How one model is measured (recorded in the LUT provenance)."""

    num_threads: int = 1
    warmup: int = 10
    runs: int = 50
    min_time_s: float = 0.05
    target: str = "local"
    benchmark_model_path: Optional[str] = None
    sessions: int = 2
    clock: str = "wall"


def check_target(target: str) -> str:
    """'local' or 'adb:SERIAL'; anything else raises ValueError."""
    if target == "local" or (
        isinstance(target, str) and target.startswith("adb:") and len(target) > 4
    ):
        return target
    raise ValueError(f"target={target!r}: expected 'local' or 'adb:SERIAL'")


def time_model(tflite: bytes, cfg: MeasureConfig) -> dict[str, float]:
    """Latency statistics on ``cfg.target``: in-process LiteRT for 'local' (``time_tflite``:
    adds a minimum timed duration and a robust CV), the export helper's ``benchmark_model``
    over adb for 'adb:SERIAL'."""
    if cfg.target == "local":
        # NOTE: on a shared CPU, load only ever adds time: the best of a few session medians
        # is the stable statistic (one session's median was seen 12x off under load 14).
        best = None
        for _ in range(max(1, cfg.sessions)):
            st = time_tflite(
                tflite, cfg.num_threads, cfg.warmup, cfg.runs, cfg.min_time_s, cfg.clock
            )
            if best is None or st["median_ms"] < best["median_ms"]:
                best = st
        return best
    from elasticvit_tf.export.benchmark import benchmark

    r = benchmark(
        tflite,
        target=cfg.target,
        num_threads=cfg.num_threads,
        warmup=cfg.warmup,
        runs=cfg.runs,
        benchmark_model_path=cfg.benchmark_model_path,
    )
    med = r.median_ms if r.median_ms is not None else r.mean_ms
    cv = (r.std_ms or 0.0) / r.mean_ms if r.mean_ms else 0.0
    return {"median_ms": med, "p5_ms": r.p5_ms, "p95_ms": r.p95_ms, "cv": cv, "robust_cv": cv}


def measure_op(sig: OpSignature, mode: str, cfg: MeasureConfig) -> float:
    """Median latency (ms) of one block as a standalone TFLite model."""
    from elasticvit_tf.export.lut_blocks import build_op_model

    return time_model(convert_for_latency(build_op_model(sig), mode), cfg)["median_ms"]


def measure_invoke_overhead(mode: str, cfg: MeasureConfig) -> float:
    """Latency (ms) of a near-empty model (one ADD on a 4x4x8 input): the fixed cost of one
    ``invoke`` that every one-block model pays once, but a whole subnet pays once in total."""
    import keras

    x = keras.Input((4, 4, 8), batch_size=1)
    model = keras.Model(x, keras.layers.Add()([x, x]))
    return time_model(convert_for_latency(model, mode), cfg)["median_ms"]


def measure_arch(space: SearchSpace, arch: ArchConfig, mode: str, cfg: MeasureConfig) -> dict:
    """Whole-subnet latency statistics (see ``time_model``)."""
    from elasticvit_tf.export.lut_blocks import build_arch_model

    return time_model(convert_for_latency(build_arch_model(space, arch), mode), cfg)


# -------------------------------------------------------------------------------- design
def design_order(space: SearchSpace, seed: int = 0) -> list[OpSignature]:
    """Measurement order: per kind the smallest and largest block (by MACs), then random;
    kinds interleaved round-robin so a short budget still covers every block type."""
    rng = np.random.default_rng(seed)
    per_kind = []
    for kind, sigs in enumerate_ops(space).items():
        if not sigs:
            continue
        macs = [op_features(s)["macs"] for s in sigs]
        lo, hi = int(np.argmin(macs)), int(np.argmax(macs))
        rest = [i for i in rng.permutation(len(sigs)) if i not in (lo, hi)]
        per_kind.append([sigs[i] for i in [lo, hi] + rest if i != lo or lo != hi])
    order = []
    for i in range(max(len(p) for p in per_kind)):
        order += [p[i] for p in per_kind if i < len(p)]
    return list(dict.fromkeys(order))


def calibration_archs(space: SearchSpace, n: int, seed: int = 0) -> list[ArchConfig]:
    """Min arch, then seeded random archs (distinct; the max arch is the slowest to convert
    and the random ones sit where searched subnets are)."""
    rng = np.random.default_rng(seed + 10_000)
    archs = {space.min_arch().key(): space.min_arch()}
    while len(archs) < n:
        a = space.sample(rng)
        archs.setdefault(a.key(), a)
    return list(archs.values())[:n]


# ------------------------------------------------------------------------------- fitting
def fit_kind_model(kind: OpKind, sigs: Sequence[OpSignature], ms: Sequence[float]) -> dict:
    """Non-negative least squares of relative error on the kind's features, free intercept.

    Fewer samples than features + 2: MACs and activation traffic (>= 4 samples) or MACs only;
    one sample: proportional to MACs.
    """
    names = list(KIND_FEATURES[kind])
    if len(sigs) < len(names) + 2:
        names = ["macs", "act_elems"] if len(sigs) >= 4 else ["macs"]
    if len(sigs) == 1:
        macs = max(op_features(sigs[0])["macs"], 1.0)
        return {
            "features": names,
            "coef": [float(ms[0]) / macs],
            "intercept": 0.0,
            "n_samples": 1,
            "train_mape": 0.0,
        }
    return _fit_linear(names, sigs, ms)


GLOBAL_FEATURES = ("macs", "act_elems", "attn_elems", "ops")


def fit_models(measured: dict[OpSignature, float]) -> dict[str, dict]:
    """One model per block kind with >= 2 measurements (``source: "kind"``); kinds with fewer
    get the model fitted on all measured blocks (``source: "all_kinds"``: shared features
    incl. the op count), so a short budget still transfers what was measured."""
    sigs = list(measured)
    models = {}
    glob = None
    if len(sigs) >= len(GLOBAL_FEATURES) + 2:
        glob = _fit_linear(GLOBAL_FEATURES, sigs, [measured[s] for s in sigs])
        glob["source"] = "all_kinds"
    for kind in OpKind:
        ks = [s for s in sigs if s.kind is kind]
        if len(ks) >= 2 or (ks and glob is None):
            models[kind.value] = fit_kind_model(kind, ks, [measured[s] for s in ks])
            models[kind.value]["source"] = "kind"
        elif glob is not None:
            y = [measured[s] for s in ks]
            pred = [predict_kind(glob, s) for s in ks]
            mape = float(np.mean(np.abs(np.subtract(pred, y)) / y)) if ks else 0.0
            models[kind.value] = dict(glob, n_samples=len(ks), train_mape=mape)
    return models


def _fit_linear(names, sigs, ms) -> dict:
    from sklearn.linear_model import LinearRegression

    x = np.array([[op_features(s)[f] for f in names] for s in sigs], dtype=np.float64)
    y = np.asarray(ms, dtype=np.float64)
    scale = np.maximum(x.max(axis=0), 1.0)  # NOTE: conditioning only; coef rescaled below
    # NOTE: weights 1/y^2 minimise the squared *relative* error: blocks span 100x in latency
    # and the big ones would otherwise decide the fit of the small ones.
    reg = LinearRegression(positive=True).fit(x / scale, y, sample_weight=1.0 / y**2)
    coef = reg.coef_ / scale
    pred = x @ coef + reg.intercept_
    return {
        "features": list(names),
        "coef": [float(c) for c in coef],
        "intercept": float(reg.intercept_),
        "n_samples": len(sigs),
        "train_mape": float(np.mean(np.abs(pred - y) / y)),
    }


def predict_kind(model: dict, sig: OpSignature) -> float:
    f = op_features(sig)
    return float(
        model["intercept"] + sum(c * f[n] for c, n in zip(model["coef"], model["features"]))
    )


def blocks_sum(
    space: SearchSpace, arch: ArchConfig, exact: dict[OpSignature, float], models: dict
) -> float:
    total = 0.0
    for sig in decompose(space, arch):
        total += exact[sig] if sig in exact else predict_kind(models[sig.kind.value], sig)
    return total


def fit_calibration(sums: Sequence[float], wholes: Sequence[float]) -> tuple[float, float]:
    """(scale, constant_ms): constant = median(whole - sum) below 5 subnets, else a least-
    squares line, kept only when its scale is within [0.8, 1.25] (a small correction).

    Subnets measured > 2x or < 0.5x their block sum are left out (disturbed measurements);
    the constant is floored at -0.5 x the smallest block sum.
    """
    s, w = np.asarray(sums), np.asarray(wholes)
    if len(s) == 0:
        return 1.0, 0.0
    # NOTE: a subnet whose whole latency is > 2x or < 0.5x its block sum is a disturbed
    # measurement (seen under heavy load), not a per-model constant: leave it out.
    ok = (w < 2 * s) & (w > 0.5 * s)
    if ok.any():
        s, w = s[ok], w[ok]
    # NOTE: isolated blocks carry their own invoke overhead, so the constant may be negative,
    # but never so negative that the smallest calibrated subnet would lose half its latency.
    floor = -0.5 * float(np.min(s))
    if len(s) >= 5:
        a, b = np.polyfit(s, w, 1)
        if 0.8 <= a <= 1.25 and a * np.min(s) + b > 0.5 * np.min(s):
            return float(a), float(b)
    return 1.0, max(float(np.median(w - s)), floor)


# ---------------------------------------------------------------------------- provenance
def _git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(
            ["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def provenance(target: str, cfg: MeasureConfig) -> dict[str, Any]:
    from importlib import metadata

    try:
        version = metadata.version("ai-edge-litert")
    except metadata.PackageNotFoundError:
        version = "unknown"
    runtime = "ai-edge-litert"
    if target != "local":  # the device's benchmark_model reports no version we can read
        runtime, version = "benchmark_model", os.path.basename(cfg.benchmark_model_path or "?")
    return {
        "target": target,
        "runtime": runtime,
        "runtime_version": version,
        "num_threads": cfg.num_threads,
        "warmup": cfg.warmup,
        "runs": cfg.runs,
        "clock": cfg.clock,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": f"{platform.node()} ({_cpu_name()}, {os.cpu_count()} cpus)",
        "builder_commit": _git_commit(),
    }


def lut_file_name(space_name: str, target: str, mode: str, num_threads: int, date: str) -> str:
    """e.g. ``lut_demo_local_fp32_t1_20261125.json`` (target ``adb:SERIAL`` -> ``adb-SERIAL``)."""
    t = "".join(c if c.isalnum() or c in "-_" else "-" for c in target)
    day = date[:10].replace("-", "")
    return f"lut_{space_name}_{t}_{canonical_mode(mode)}_t{num_threads}_{day}.json"


# ---------------------------------------------------------------------------------- build
def build_mode_lut(
    space: SearchSpace,
    mode: str,
    budget_s: float,
    target: str = "local",
    cfg: MeasureConfig = MeasureConfig(),
    num_calibration: int = 3,
    calibration_share: float = 0.35,
    seed: int = 0,
    log: Callable[[str], None] = lambda s: None,
    prior: Optional[dict] = None,
) -> dict:
    """Builds one mode's LUT dict within ``budget_s`` seconds of measurement (see module doc).

    ``prior``: an earlier LUT of the same space, mode, target and threads whose measured
    entries are kept (the design continues after them); its fits and constant are redone.
    """
    mode = canonical_mode(mode)
    cfg = dataclasses.replace(cfg, target=check_target(target))
    t0 = time.monotonic()
    op_deadline = t0 + budget_s * (1.0 - calibration_share)
    measured: dict[OpSignature, float] = {}
    if prior is not None:
        want = (space.fingerprint(), mode, target, cfg.num_threads, cfg.clock)
        pp = prior.get("provenance", {})
        got = (prior.get("space_fingerprint"), prior.get("mode"), pp.get("target"))
        got += (pp.get("num_threads"), pp.get("clock", "wall"))
        if got != want:
            raise ValueError(
                f"prior LUT has (space_fingerprint, mode, target, num_threads, clock)={got}, "
                f"expected {want}"
            )
    overhead = measure_invoke_overhead(mode, cfg)
    if prior is not None:
        # Entries are stored net of the invoke overhead; older LUTs stored raw latencies.
        prior_overhead = prior.get("invoke_overhead_ms")
        for e in prior["entries"]:
            ms = float(e["latency_ms"])
            measured[OpSignature.from_dict(e["op"])] = (
                ms if prior_overhead is not None else _net(ms, overhead)
            )
    order = design_order(space, seed)
    kinds_needed = {s.kind for s in order}
    for sig in order:
        covered = {s.kind for s in measured} >= kinds_needed
        if covered and time.monotonic() > op_deadline:
            break
        if sig not in measured:
            measured[sig] = _net(measure_op(sig, mode, cfg), overhead)
    log(f"[{mode}] measured {len(measured)}/{len(order)} blocks in {time.monotonic() - t0:.1f}s")
    models = fit_models(measured)
    cal_deadline = t0 + budget_s
    sums, wholes, cal_archs = [], [], []
    for arch in calibration_archs(space, num_calibration, seed):
        if len(sums) >= min(2, num_calibration) and time.monotonic() > cal_deadline:
            break
        wholes.append(measure_arch(space, arch, mode, cfg)["median_ms"])
        sums.append(blocks_sum(space, arch, measured, models))
        cal_archs.append(arch.to_dict())
    scale, constant = fit_calibration(sums, wholes)
    log(
        f"[{mode}] calibrated on {len(sums)} subnets: scale {scale:.3f}, constant "
        f"{constant:.4f} ms ({time.monotonic() - t0:.1f}s)"
    )
    return {
        "format": LUT_FORMAT,
        "version": LUT_VERSION,
        "space": space.name,
        "space_fingerprint": space.fingerprint(),
        "mode": mode,
        "provenance": {**provenance(target, cfg), "build_seconds": time.monotonic() - t0},
        "constant_ms": constant,
        "scale": scale,
        "invoke_overhead_ms": overhead,
        "calibration": {"archs": cal_archs, "blocks_sum_ms": sums, "whole_ms": wholes},
        "entries": [{"op": s.to_dict(), "latency_ms": v} for s, v in measured.items()],
        "models": models,
    }


def _net(ms: float, overhead: float) -> float:
    # NOTE: a block faster than the noise of the overhead keeps 10% of its raw time.
    return max(ms - overhead, 0.1 * ms)


def refit_lut(lut: dict, space: SearchSpace) -> dict:
    """Redoes a LUT's fits and constant from its own measurements (entries + calibration
    subnets), e.g. after a fitting change; measures nothing and reads no other data."""
    if lut.get("space_fingerprint") != space.fingerprint():
        raise ValueError(
            f"refit: LUT fingerprint {lut.get('space_fingerprint')!r} != space "
            f"{space.name!r} fingerprint {space.fingerprint()!r}"
        )
    measured = {OpSignature.from_dict(e["op"]): float(e["latency_ms"]) for e in lut["entries"]}
    cal = dict(lut["calibration"])
    if "archs" in cal:
        archs = [ArchConfig.from_dict(a) for a in cal["archs"]]
    else:  # LUTs written before the archs were recorded: the builder's default seed 0
        archs = calibration_archs(space, len(cal["whole_ms"]), 0)
    models = fit_models(measured)
    cal["blocks_sum_ms"] = [blocks_sum(space, a, measured, models) for a in archs]
    cal["archs"] = [a.to_dict() for a in archs]
    scale, constant = fit_calibration(cal["blocks_sum_ms"], cal["whole_ms"])
    return {**lut, "models": models, "calibration": cal, "constant_ms": constant, "scale": scale}


def build_lut(
    space: SearchSpace,
    modes: Sequence[str] = MODES,
    target: str = "local",
    num_threads: int = 1,
    budget_s: float = 120.0,
    output_path: Optional[str] = None,
    warmup: int = 10,
    runs: int = 50,
    num_calibration: int = 3,
    seed: int = 0,
    log: Callable[[str], None] = print,
    benchmark_model_path: Optional[str] = None,
    priors: Optional[dict[str, dict]] = None,
    clock: str = "wall",
) -> dict[str, dict]:
    """Builds one LUT per mode, splitting ``budget_s`` evenly between modes.

    Args:
        space: the search space.
        modes: quantization modes ("fp32", "int8").
        target: "local" (LiteRT in this process) or "adb:SERIAL" (the device's
            ``benchmark_model`` at ``benchmark_model_path``, through ``export.benchmark``).
        num_threads: interpreter threads.
        budget_s: total measurement time budget in seconds (every block type is measured at
            least once even past the budget).
        output_path: a directory; each mode's LUT is written there as ``lut_file_name(...)``.
        warmup, runs: per-model warm-up and timed invocations.
        num_calibration: whole subnets measured per mode for the constant.
        seed: design and calibration seed.
        log: progress callback.
        benchmark_model_path: ``benchmark_model`` binary for adb targets.
        priors: optional ``{mode: earlier LUT dict}`` whose measured entries are kept.
        clock: "wall" (latency) or "cpu" (1-thread CPU time, for shared local CPUs).

    Returns:
        ``{mode: {"lut": lut_dict, "path": written path or None}}``.
    """
    if not modes:
        raise ValueError("modes: expected at least one of ('fp32', 'int8'), got none")
    modes = [canonical_mode(m) for m in modes]
    if not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads={num_threads!r}: expected an integer >= 1")
    if budget_s <= 0:
        raise ValueError(f"budget_s={budget_s!r}: expected > 0 seconds")
    check_target(target)
    if target != "local" and not benchmark_model_path:
        raise ValueError(f"target={target!r} needs benchmark_model_path (got none)")
    cfg = MeasureConfig(
        num_threads=num_threads,
        warmup=warmup,
        runs=runs,
        target=target,
        benchmark_model_path=benchmark_model_path,
        clock=clock,
    )
    if clock not in CLOCKS or (clock == "cpu" and (num_threads != 1 or target != "local")):
        raise ValueError(
            f"clock={clock!r}: expected 'wall', or 'cpu' with num_threads=1 on target 'local'"
        )
    out = {}
    for mode in modes:
        lut = build_mode_lut(
            space,
            mode,
            budget_s / len(modes),
            target,
            cfg,
            num_calibration,
            seed=seed,
            log=log,
            prior=(priors or {}).get(mode),
        )
        path = None
        if output_path is not None:
            os.makedirs(output_path, exist_ok=True)
            name = lut_file_name(space.name, target, mode, num_threads, lut["provenance"]["date"])
            path = os.path.join(output_path, name)
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(lut, f, indent=1)
            os.replace(tmp, path)
            log(f"[{mode}] wrote {path}")
        out[mode] = {"lut": lut, "path": path}
    return out
