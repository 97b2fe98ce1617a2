"""Latency lookup table (LUT) builder: measure blocks, fit per-block-type models, write JSON.

For one space, target and quantization mode the builder

0. measures the invoke overhead of a near-empty model; block entries are stored net of it
   (each one-block model pays it once, a whole subnet once in total: without this, a
   17-block ``tiny`` subnet was over-predicted 2x);
1. measures the TFLite latency of a designed sample of the space's blocks
   (``blocks.enumerate_blocks``: first conv, stem blocks, MBConvs, transition MBConvs,
   transformer layers, head), each as its own batch-1 model, round-robin over block types so
   that every type gets samples when the time budget is short (extremes first, then random);
2. fits one non-negative linear model per block type on shape features (MACs, activation
   traffic, params, tokens, attention size, op count), in the spirit of nn-Meter's kernel
   predictors: a block not measured is predicted from its type's model;
3. measures a few whole subnets end to end (the file the export ships) and fits, given enough
   subnets, one multiplier per block type (``fit_kind_scales``: what isolated blocks miss),
   then the per-model constant (and a scale): ``whole ~= scale * sum(blocks) + constant_ms``;
4. writes the LUT JSON of ``elasticvit_tf/lut.py`` (schema, provenance, file name; the search
   predicts with the same module's ``LutLatencyPredictor``).

Every model is timed by ``export.benchmark.benchmark`` (the project's one timing loop:
``--target=local`` with LiteRT in this process, ``adb:SERIAL`` with the device's
``benchmark_model``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Callable, Optional, Sequence

import numpy as np

from elasticvit_tf import lut as lut_lib
from elasticvit_tf.arch import ArchConfig
from elasticvit_tf.blocks import BlockKind, BlockSpec, block_features, enumerate_blocks
from elasticvit_tf.export.benchmark import CLOCKS, parse_target
from elasticvit_tf.flops import stratified_sample
from elasticvit_tf.space import SearchSpace

# Features each block type's regressor uses (a subset of blocks.FEATURE_NAMES).
KIND_FEATURES: dict[BlockKind, tuple[str, ...]] = {
    BlockKind.FIRST_CONV: ("macs", "act_elems"),
    BlockKind.STEM_BLOCK: ("macs", "act_elems"),
    BlockKind.MBCONV: ("macs", "act_elems", "params", "ops"),
    BlockKind.TRANSITION: ("macs", "act_elems", "params"),
    BlockKind.TRANSFORMER: ("macs", "act_elems", "attn_elems", "tokens"),
    BlockKind.HEAD: ("macs", "act_elems"),
}


# ------------------------------------------------------------------------- convert + time
def convert_for_latency(model, mode: str, num_calibration: int = 4, seed: int = 0) -> bytes:
    """Converts a batch-1 Keras model to TFLite with the export's own conversion.

    ``tflite.convert`` with the export's defaults (``export_lib.ExportConfig``: fixed batch 1,
    float I/O), the LUT mode mapped to the shipped quantization mode (``lut.EXPORT_MODES``:
    ``int8`` is the mixed recipe of ``tflite.INT8_FLOAT_OPS``), calibrated on random normal
    inputs (latency does not depend on the calibration values).
    """
    from elasticvit_tf.export import tflite as tflite_lib
    from elasticvit_tf.export.export_lib import ExportConfig

    qmode = tflite_lib.QuantMode.parse(lut_lib.EXPORT_MODES[lut_lib.canonical_mode(mode)])
    rep = None
    if qmode.needs_representative_data:
        shape = tuple(int(d) for d in model.inputs[0].shape[1:])
        rep = np.random.default_rng(seed).standard_normal((num_calibration, *shape))
        rep = rep.astype(np.float32)
    return tflite_lib.convert(
        model,
        qmode,
        representative_dataset=rep,
        int8_io=ExportConfig.int8_io,
        representative_steps=num_calibration,
        batch_size=ExportConfig.batch_size,
        float_ops=ExportConfig.int8_float_ops if qmode is tflite_lib.QuantMode.INT8 else None,
    )


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


def _passes(cfg: MeasureConfig) -> int:
    """Timing sessions per model: ``cfg.sessions`` locally, one on a device (its own tool)."""
    return max(1, cfg.sessions) if cfg.target == "local" else 1


def time_models(tflites: Sequence, cfg: MeasureConfig) -> list[dict[str, float]]:
    """Latency statistics of converted models (bytes or ``.tflite`` paths) on ``cfg.target`` through
    ``export.benchmark.benchmark``: median, p5, p95, cv and robust cv (1.4826 * MAD / median;
    the cv where the target reports no MAD), each model's best of ``cfg.sessions`` sessions
    (local target), timed in passes over all the models."""
    from elasticvit_tf.export.benchmark import benchmark

    best: list = [None] * len(tflites)
    # NOTE: on a shared CPU, load only ever adds time: the best of a few session medians
    # is the stable statistic (one session's median was seen 12x off under load 14), and
    # sessions spread over passes see different moments of the machine's load.
    for _ in range(_passes(cfg)):
        for i, tflite in enumerate(tflites):
            r = benchmark(
                tflite,
                target=cfg.target,
                num_threads=cfg.num_threads,
                warmup=cfg.warmup,
                runs=cfg.runs,
                benchmark_model_path=cfg.benchmark_model_path,
                min_time_s=cfg.min_time_s,
                clock=cfg.clock,
            )
            if best[i] is None or (r.median_ms or r.mean_ms) < (
                best[i].median_ms or best[i].mean_ms
            ):
                best[i] = r
    out = []
    for r in best:
        med = r.median_ms if r.median_ms is not None else r.mean_ms
        cv = (r.std_ms or 0.0) / r.mean_ms if r.mean_ms else 0.0
        robust_cv = 1.4826 * r.mad_ms / med if r.mad_ms is not None and med else cv
        out.append(
            {
                "median_ms": med,
                "p5_ms": r.p5_ms,
                "p95_ms": r.p95_ms,
                "cv": cv,
                "robust_cv": robust_cv,
            }
        )
    return out


def time_model(tflite, cfg: MeasureConfig) -> dict[str, float]:
    """``time_models`` of one model."""
    return time_models([tflite], cfg)[0]


def measure_op(sig: BlockSpec, mode: str, cfg: MeasureConfig) -> float:
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
    return measure_archs(space, [arch], mode, cfg)[0]


CALIBRATION_SESSIONS = 3  # timing passes over the calibration subnets (min taken)


def measure_archs(
    space: SearchSpace,
    archs: Sequence[ArchConfig],
    mode: str,
    cfg: MeasureConfig,
    deadline: Optional[float] = None,
    expected_ms: Optional[Sequence[float]] = None,
    log: Callable[[str], None] = lambda s: None,
) -> list[dict]:
    """Whole-subnet latency statistics of ``archs`` (see ``time_models``): all converted first,
    then timed together in ``cfg.sessions`` passes: a subnet's sessions lie minutes apart, not
    back to back, so one burst of load on a shared CPU does not reach all of them (a held-out
    run's sessions right after conversion were 1-4 % slower than its later pass, some 20 %;
    on the idle machine conversion itself left no trace: benchmarks/README.md).

    With ``deadline`` (``time.monotonic()``), no conversion starts once it (as long as the
    conversions so far took on average) and the timing of all converted subnets (from
    ``expected_ms``, e.g. their block sums) would not end before it; at least 2 subnets are
    measured. Fewer results than ``archs`` then.
    """
    import tempfile

    from elasticvit_tf.export.lut_blocks import build_arch_model

    # seconds of timing each converted subnet will take
    costs = [_passes(cfg) * (cfg.warmup + cfg.runs) * ms / 1e3 for ms in expected_ms or []]
    reserve, convert_s = 0.0, []
    with tempfile.TemporaryDirectory(prefix="lut_archs_") as tmp:
        paths = []
        for i, arch in enumerate(archs):
            cost = costs[i] if costs else 0.0
            if deadline is not None and len(paths) >= 2:
                if time.monotonic() + np.mean(convert_s) + reserve + cost > deadline:
                    break
            reserve += cost
            t0 = time.monotonic()
            paths.append(os.path.join(tmp, f"{i}.tflite"))
            with open(paths[-1], "wb") as f:
                f.write(convert_for_latency(build_arch_model(space, arch), mode))
            convert_s.append(time.monotonic() - t0)
            log(f"[{mode}] converted subnet {i + 1}/{len(archs)}")
        return time_models(paths, cfg)


# -------------------------------------------------------------------------------- design
def design_order(space: SearchSpace, seed: int = 0) -> list[BlockSpec]:
    """Measurement order: per kind the smallest and largest block (by MACs), then random;
    kinds interleaved round-robin so a short budget still covers every block type."""
    rng = np.random.default_rng(seed)
    per_kind = []
    for kind, sigs in enumerate_blocks(space).items():
        if not sigs:
            continue
        macs = [block_features(s)["macs"] for s in sigs]
        lo, hi = int(np.argmin(macs)), int(np.argmax(macs))
        rest = [i for i in rng.permutation(len(sigs)) if i not in (lo, hi)]
        per_kind.append([sigs[i] for i in [lo, hi] + rest if i != lo or lo != hi])
    order = []
    for i in range(max(len(p) for p in per_kind)):
        order += [p[i] for p in per_kind if i < len(p)]
    return list(dict.fromkeys(order))


CALIBRATION_DESIGNS = ("mixed", "uniform", "spread")


def check_design(design: str, name: str = "design") -> None:
    """ValueError naming ``name`` unless ``design`` is one of ``CALIBRATION_DESIGNS``."""
    if design not in CALIBRATION_DESIGNS:
        raise ValueError(f"{name}={design!r}: expected one of {list(CALIBRATION_DESIGNS)}")


def calibration_archs(
    space: SearchSpace, n: int, seed: int = 0, design: str = "mixed"
) -> list[ArchConfig]:
    """The min arch, then ``n - 1`` seeded random archs by ``design``:

    - ``uniform``: uniform draws (where searched subnets are: the low end of a large space);
    - ``spread``: evenly over 4 equal-width FLOPs bands (``flops.stratified_sample``);
    - ``mixed`` (default): half uniform draws, half spread over the upper three bands, which
      uniform draws of a large space almost never reach.

    Measured on the ``elasticvit`` space (benchmarks/README.md#latency_predictorpy): uniform
    calibration over-predicted large subnets (+4.5 %, ±5 % on 40 % of held-out subnets),
    spread calibration under-predicted small ones (±10 % 95 -> 90 %); both ends measured
    (``mixed``) kept ±10 % and reached ±5 % on 72 %."""
    check_design(design)
    m = space.min_arch()
    archs = {m.key(): m}
    n_uniform = {"uniform": n - 1, "spread": 0, "mixed": (n - 1) // 2}[design] if n > 1 else 0
    rng = np.random.default_rng(seed + 10_000)
    while len(archs) < 1 + n_uniform:
        a = space.sample(rng)
        archs.setdefault(a.key(), a)
    n_spread = n - len(archs)
    if n_spread > 0:
        bands = range(4) if design == "spread" else range(1, 4)
        spread, _ = stratified_sample(space, n_spread, seed + 10_000, 4, list(archs), bands)
        archs.update((a.key(), a) for a in spread)
    return list(archs.values())[:n]


# ------------------------------------------------------------------------------- fitting
def fit_kind_model(kind: BlockKind, sigs: Sequence[BlockSpec], ms: Sequence[float]) -> dict:
    """Non-negative least squares of relative error on the kind's features, free intercept.

    Fewer samples than features + 2: MACs and activation traffic (>= 4 samples) or MACs only;
    one sample: proportional to MACs.
    """
    names = list(KIND_FEATURES[kind])
    if len(sigs) < len(names) + 2:
        names = ["macs", "act_elems"] if len(sigs) >= 4 else ["macs"]
    if len(sigs) == 1:
        macs = max(block_features(sigs[0])["macs"], 1.0)
        return {
            "features": names,
            "coef": [float(ms[0]) / macs],
            "intercept": 0.0,
            "n_samples": 1,
            "train_mape": 0.0,
        }
    return _fit_linear(names, sigs, ms)


GLOBAL_FEATURES = ("macs", "act_elems", "attn_elems", "ops")


def fit_models(measured: dict[BlockSpec, float]) -> dict[str, dict]:
    """One model per block kind with >= 2 measurements (``source: "kind"``); kinds with fewer
    get the model fitted on all measured blocks (``source: "all_kinds"``: shared features
    incl. the op count), so a short budget still transfers what was measured."""
    sigs = list(measured)
    models = {}
    glob = None
    if len(sigs) >= len(GLOBAL_FEATURES) + 2:
        glob = _fit_linear(GLOBAL_FEATURES, sigs, [measured[s] for s in sigs])
        glob["source"] = "all_kinds"
    for kind in BlockKind:
        ks = [s for s in sigs if s.kind is kind]
        if len(ks) >= 2 or (ks and glob is None):
            models[kind.value] = fit_kind_model(kind, ks, [measured[s] for s in ks])
            models[kind.value]["source"] = "kind"
        elif glob is not None:
            y = [measured[s] for s in ks]
            pred = [lut_lib.predict_block(glob, s) for s in ks]
            mape = float(np.mean(np.abs(np.subtract(pred, y)) / y)) if ks else 0.0
            models[kind.value] = dict(glob, n_samples=len(ks), train_mape=mape)
    return models


def _fit_linear(names, sigs, ms) -> dict:
    from sklearn.linear_model import LinearRegression

    x = np.array([[block_features(s)[f] for f in names] for s in sigs], dtype=np.float64)
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


def cross_validated_mape(measured: dict[BlockSpec, float], folds: int = 5) -> dict[str, float]:
    """Per block type with >= 2 * ``folds`` measured blocks: the mean relative error of its
    model on measured blocks it was not fitted on (``folds``-fold, seeded): how well the
    unmeasured blocks of that type are predicted."""
    out = {}
    for kind in BlockKind:
        ks = [s for s in measured if s.kind is kind]
        if len(ks) < 2 * folds:
            continue
        idx = np.random.default_rng(0).permutation(len(ks))
        errs = []
        for f in range(folds):
            test = set(idx[f::folds].tolist())
            train = [s for i, s in enumerate(ks) if i not in test]
            m = fit_kind_model(kind, train, [measured[s] for s in train])
            for i in test:
                y = measured[ks[i]]
                errs.append(abs(lut_lib.predict_block(m, ks[i]) - y) / y)
        out[kind.value] = float(np.mean(errs))
    return out


KIND_CORRECTION_MIN = 8  # measured subnets needed before per-type scales are fitted


RIDGE_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)  # candidates of choose_ridge


def fit_kind_scales(
    kind_sums: Sequence[dict[str, float]],
    wholes: Sequence[float],
    ridge: Optional[float] = None,
) -> dict[str, float]:
    """Per block type, a multiplier of its blocks' summed latency, fitted on subnets measured
    end to end (``whole ~= sum_k a_k * S_k + c`` in relative error, ridge ``ridge`` pulling
    every ``a_k`` towards 1, clipped to [0.5, 2]; None: ``choose_ridge``); ``{}`` below
    ``KIND_CORRECTION_MIN`` subnets. It models what isolated blocks miss (cache effects,
    per-op overhead)."""
    if len(wholes) < KIND_CORRECTION_MIN:
        return {}
    if ridge is None:
        ridge = choose_ridge(kind_sums, wholes)
    kinds = sorted({k for ks in kind_sums for k in ks})
    s = np.array([[ks.get(k, 0.0) for k in kinds] for ks in kind_sums], dtype=np.float64)
    w = np.asarray(wholes, dtype=np.float64)
    total = s.sum(axis=1)
    ok = (w < 2 * total) & (w > 0.5 * total)  # disturbed measurements (see fit_calibration)
    if ok.sum() < KIND_CORRECTION_MIN:
        return {}
    s, w = s[ok], w[ok]
    k = len(kinds)
    x = np.hstack([s / w[:, None], 1.0 / w[:, None]])
    reg = np.hstack([np.sqrt(ridge) * np.eye(k), np.zeros((k, 1))])
    a = np.linalg.lstsq(
        np.vstack([x, reg]), np.concatenate([np.ones(len(w)), np.sqrt(ridge) * np.ones(k)]), None
    )[0][:k]
    return {kind: float(v) for kind, v in zip(kinds, np.clip(a, 0.5, 2.0))}


def choose_ridge(
    kind_sums: Sequence[dict[str, float]],
    wholes: Sequence[float],
    grid: Sequence[float] = RIDGE_GRID,
) -> float:
    """The ridge of ``fit_kind_scales`` from ``grid`` whose whole calibration (per-type
    scales, then ``fit_calibration``) predicts the measured subnets best when each is left
    out in turn (RMS relative error; the fastest subnet is never left out: it anchors the
    constant, and predicting it from larger ones measures extrapolation, not the fit). Ties:
    the first in ``grid``.

    The per-type sums of a space's subnets are nearly collinear (all grow with resolution and
    width), so 6 free scales on 12 noisy subnets over-fit: on the ``elasticvit`` space the
    leave-one-out error fell from 6.2 % (ridge 0.01) to 4.4 % (ridge 1-10), and so did the
    error on held-out subnets (benchmarks/README.md#latency_predictorpy)."""
    w = np.asarray(wholes, dtype=np.float64)
    if len(w) <= KIND_CORRECTION_MIN:  # a left-out fit would have too few subnets
        return float(grid[0])
    anchor = int(np.argmin(w))
    errors = []
    for ridge in grid:
        rel = []
        for i in range(len(w)):
            if i == anchor:
                continue
            keep = [j for j in range(len(w)) if j != i]
            scales, _, a, b = fit_subnet_calibration([kind_sums[j] for j in keep], w[keep], ridge)
            rel.append((a * lut_lib.corrected_sum(scales, kind_sums[i]) + b) / w[i] - 1.0)
        errors.append(float(np.sqrt(np.mean(np.square(rel)))))
    return float(grid[int(np.argmin(errors))])


def fit_subnet_calibration(
    kind_sums: Sequence[dict[str, float]],
    wholes: Sequence[float],
    ridge: Optional[float] = None,
) -> tuple[dict[str, float], list[float], float, float]:
    """``(kind_scales, corrected block sums, scale, constant_ms)`` from measured subnets:
    ``fit_kind_scales`` (``ridge``), then ``fit_calibration`` on the corrected sums."""
    kind_scales = fit_kind_scales(kind_sums, wholes, ridge)
    sums = [lut_lib.corrected_sum(kind_scales, ks) for ks in kind_sums]
    scale, constant = fit_calibration(sums, wholes)
    return kind_scales, sums, scale, constant


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


# ---------------------------------------------------------------------------------- build
def build_mode_lut(
    space: SearchSpace,
    mode: str,
    budget_s: float,
    target: str = "local",
    cfg: MeasureConfig = MeasureConfig(),
    num_calibration: int = 3,
    calibration_share: float = 0.4,
    seed: int = 0,
    log: Callable[[str], None] = lambda s: None,
    prior: Optional[dict] = None,
    measure_fraction: float = 1.0,
    calibration_design: str = "mixed",
) -> dict:
    """Builds one mode's LUT dict within ``budget_s`` seconds of measurement (see module doc).

    ``calibration_design``: how the ``num_calibration`` whole subnets are drawn
    (``calibration_archs``).

    ``measure_fraction``: measure at most this share of the space's blocks (design order,
    every block type at least once); the others are predicted by their type's model, fitted on
    the measured blocks only (a cheap LUT for a phone).

    ``prior``: an earlier LUT of the same space, mode, target and threads whose measured
    entries are kept (the design continues after them); its fits and constant are redone.
    """
    mode = lut_lib.canonical_mode(mode)
    parse_target(target)
    cfg = dataclasses.replace(cfg, target=target)
    t0 = time.monotonic()
    op_deadline = t0 + budget_s * (1.0 - calibration_share)
    measured: dict[BlockSpec, float] = {}
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
        for spec, ms in lut_lib.read_entries(prior, "prior LUT").items():
            measured[spec] = ms if prior_overhead is not None else _net(ms, overhead)
    order = design_order(space, seed)
    kinds_needed = {s.kind for s in order}
    max_measured = max(1, math.ceil(measure_fraction * len(order)))
    for sig in order:
        covered = {s.kind for s in measured} >= kinds_needed
        if covered and (time.monotonic() > op_deadline or len(measured) >= max_measured):
            break
        if sig not in measured:
            measured[sig] = _net(measure_op(sig, mode, cfg), overhead)
    log(f"[{mode}] measured {len(measured)}/{len(order)} blocks in {time.monotonic() - t0:.1f}s")
    models = fit_models(measured)
    for kind, cv in cross_validated_mape(measured).items():
        models[kind]["cv_mape"] = cv
    blocks_lut = lut_lib.LutLatencyPredictor(space, mode, measured, models)
    archs = calibration_archs(space, num_calibration, seed, calibration_design)
    timed = measure_archs(
        space,
        archs,
        mode,
        dataclasses.replace(cfg, sessions=max(cfg.sessions, CALIBRATION_SESSIONS)),
        deadline=t0 + budget_s,
        expected_ms=[blocks_lut.blocks_sum(a) for a in archs],
        log=log,
    )
    archs = archs[: len(timed)]
    wholes = [t["median_ms"] for t in timed]
    ksums = [blocks_lut.kind_sums(a) for a in archs]
    cal_archs = [a.to_dict() for a in archs]
    kind_scales, sums, scale, constant = fit_subnet_calibration(ksums, wholes)
    log(
        f"[{mode}] calibrated on {len(sums)} subnets: kind scales {kind_scales}, scale "
        f"{scale:.3f}, constant {constant:.4f} ms ({time.monotonic() - t0:.1f}s)"
    )
    return {
        "format": lut_lib.FORMAT,
        "version": lut_lib.VERSION,
        "space": space.name,
        "space_fingerprint": space.fingerprint(),
        "mode": mode,
        "export_mode": lut_lib.EXPORT_MODES[mode],
        "provenance": {
            **lut_lib.provenance(
                target,
                cfg.num_threads,
                cfg.warmup,
                cfg.runs,
                cfg.clock,
                cfg.benchmark_model_path,
            ),
            "build_seconds": time.monotonic() - t0,
        },
        "constant_ms": constant,
        "scale": scale,
        "invoke_overhead_ms": overhead,
        "design": {
            "blocks_in_space": len(order),
            "measured": len(measured),
            "measure_fraction": measure_fraction,
        },
        "kind_scales": kind_scales,
        "calibration": {
            "archs": cal_archs,
            "kind_sums_ms": ksums,
            "blocks_sum_ms": sums,
            "whole_ms": wholes,
        },
        "entries": [{"op": s.to_dict(), "latency_ms": v} for s, v in measured.items()],
        "models": models,
    }


def _net(ms: float, overhead: float) -> float:
    # NOTE: a block faster than the noise of the overhead keeps 10% of its raw time.
    return max(ms - overhead, 0.1 * ms)


def recalibrate_lut(
    lut: dict,
    space: SearchSpace,
    num_calibration: int,
    seed: int = 0,
    design: str = "mixed",
    cfg: Optional[MeasureConfig] = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """The LUT with new calibration subnets measured (``calibration_archs(..., design)``) and
    its per-type scales, scale and constant refitted on them; its measured blocks and block
    models are kept (e.g. to compare calibration designs on one set of blocks). ``cfg``
    defaults to the LUT's own threads, warm-up, runs and clock on the local CPU."""
    lut, where = lut_lib.load(lut, space)
    prov = lut.get("provenance", {})
    if cfg is None:
        cfg = MeasureConfig(
            num_threads=int(prov.get("num_threads", 1)),
            warmup=int(prov.get("warmup", 10)),
            runs=int(prov.get("runs", 50)),
            clock=str(prov.get("clock", "wall")),
        )
    mode = lut["mode"]
    blocks_lut = lut_lib.LutLatencyPredictor(
        space, mode, lut_lib.read_entries(lut, where), lut["models"]
    )
    archs = calibration_archs(space, num_calibration, seed, design)
    cal_cfg = dataclasses.replace(cfg, sessions=max(cfg.sessions, CALIBRATION_SESSIONS))
    wholes = [t["median_ms"] for t in measure_archs(space, archs, mode, cal_cfg, log=log)]
    ksums = [blocks_lut.kind_sums(arch) for arch in archs]
    kind_scales, sums, scale, constant = fit_subnet_calibration(ksums, wholes)
    log(
        f"[{mode}] recalibrated: kind scales {kind_scales}, scale {scale:.3f}, "
        f"constant {constant:.4f}"
    )
    return {
        **lut,
        "constant_ms": constant,
        "scale": scale,
        "kind_scales": kind_scales,
        "calibration": {
            "archs": [a.to_dict() for a in archs],
            "kind_sums_ms": ksums,
            "blocks_sum_ms": sums,
            "whole_ms": wholes,
        },
    }


def refit_lut(lut: dict, space: SearchSpace) -> dict:
    """Redoes a LUT's fits and constant from its own measurements (entries + calibration
    subnets), e.g. after a fitting change; measures nothing and reads no other data."""
    lut, where = lut_lib.load(lut, space)
    measured = lut_lib.read_entries(lut, where)
    cal = dict(lut["calibration"])
    if "archs" in cal:
        archs = [ArchConfig.from_dict(a) for a in cal["archs"]]
    else:  # LUTs written before the archs were recorded: that builder's seed 0, uniform
        archs = calibration_archs(space, len(cal["whole_ms"]), 0, "uniform")
    models = fit_models(measured)
    for kind, cv in cross_validated_mape(measured).items():
        models[kind]["cv_mape"] = cv
    blocks_lut = lut_lib.LutLatencyPredictor(space, lut["mode"], measured, models)
    cal["kind_sums_ms"] = [blocks_lut.kind_sums(a) for a in archs]
    cal["archs"] = [a.to_dict() for a in archs]
    kind_scales, cal["blocks_sum_ms"], scale, constant = fit_subnet_calibration(
        cal["kind_sums_ms"], cal["whole_ms"]
    )
    return {
        **lut,
        "models": models,
        "calibration": cal,
        "constant_ms": constant,
        "scale": scale,
        "kind_scales": kind_scales,
    }


def build_lut(
    space: SearchSpace,
    modes: Sequence[str] = lut_lib.MODES,
    target: str = "local",
    num_threads: int = 1,
    budget_s: float = 120.0,
    output_path: Optional[str] = None,
    warmup: int = 10,
    runs: int = 50,
    num_calibration: int = 12,
    seed: int = 0,
    log: Callable[[str], None] = print,
    benchmark_model_path: Optional[str] = None,
    priors: Optional[dict[str, dict]] = None,
    clock: str = "wall",
    measure_fraction: float = 1.0,
    calibration_design: str = "mixed",
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
        num_calibration: whole subnets measured per mode for the per-type scales and the
            constant (>= 8: per-type scales, ``fit_kind_scales``).
        seed: design and calibration seed.
        log: progress callback.
        benchmark_model_path: ``benchmark_model`` binary for adb targets.
        priors: optional ``{mode: earlier LUT dict}`` whose measured entries are kept.
        clock: "wall" (latency) or "cpu" (1-thread CPU time, for shared local CPUs).
        measure_fraction: share of the space's blocks measured at most, in (0, 1]; the rest
            is predicted by the per-type models (``build_mode_lut``).
        calibration_design: how the calibration subnets are drawn (``calibration_archs``).

    Returns:
        ``{mode: {"lut": lut_dict, "path": written path or None}}``.
    """
    if not modes:
        raise ValueError("modes: expected at least one of ('fp32', 'int8'), got none")
    modes = [lut_lib.canonical_mode(m) for m in modes]
    if not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads={num_threads!r}: expected an integer >= 1")
    if budget_s <= 0:
        raise ValueError(f"budget_s={budget_s!r}: expected > 0 seconds")
    if not 0 < measure_fraction <= 1:
        raise ValueError(f"measure_fraction={measure_fraction!r}: expected a share in (0, 1]")
    check_design(calibration_design, "calibration_design")
    parse_target(target)
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
            measure_fraction=measure_fraction,
            calibration_design=calibration_design,
        )
        path = None
        if output_path is not None:
            os.makedirs(output_path, exist_ok=True)
            date = lut["provenance"]["date"]
            path = os.path.join(
                output_path, lut_lib.file_name(space.name, target, mode, num_threads, date)
            )
            lut_lib.save(lut, path)
            log(f"[{mode}] wrote {path}")
        out[mode] = {"lut": lut, "path": path}
    return out
