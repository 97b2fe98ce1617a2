"""The latency lookup table (LUT): its JSON schema, modes, provenance, file I/O and predictor.

One module that the builder (``export/lut_builder.py``: measures blocks and fits the models)
and the search (``search/``: predicts subnet latencies) both import; the file format is
docs/formats.md#latency-lut-json. A LUT holds, for one space, quantization mode and target,
the measured latency of a sample of the space's blocks (``blocks.BlockSpec``), one fitted
linear model per block type for the blocks not measured, and a whole-subnet calibration:

    predict(arch) = scale * sum over the arch's blocks of
                    kind_scale[block type] * block_latency(block) + constant_ms

where a block's latency is its measured entry, else its type's model floored at 0 ms, and
``kind_scales`` (optional, default 1) is the per-block-type correction fitted on the whole
subnets measured end to end (what isolated blocks miss: cache effects, fusion across blocks).
Pure Python; nothing here builds or times a model.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from typing import Any, Mapping, Optional, Union

from elasticvit_tf.arch import ArchConfig
from elasticvit_tf.blocks import BlockSpec, block_features, enumerate_blocks, plan
from elasticvit_tf.fileio import write_json_atomic
from elasticvit_tf.space import SearchSpace

FORMAT = "elasticvit-latency-lut"
# Version 2: blocks are the shipped static layers converted by the export's conversion (int8:
# the mixed recipe); version 1 timed stand-in block models (and all-int8), so it is refused.
VERSION = 2
MODES = ("fp32", "int8")
MODE_ALIASES = {"fp32": "fp32", "float32": "fp32", "int8": "int8"}
# The export's quantization mode (``elasticvit-export --quantize``) each LUT mode times.
EXPORT_MODES = {"fp32": "float32", "int8": "int8"}


def canonical_mode(mode: str) -> str:
    """'fp32'/'float32' -> 'fp32', 'int8' -> 'int8'; anything else raises ValueError."""
    m = MODE_ALIASES.get(str(mode).strip().lower())
    if m is None:
        raise ValueError(f"mode={mode!r}: expected one of {list(MODES)} (or 'float32')")
    return m


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


def provenance(
    target: str,
    num_threads: int,
    warmup: int,
    runs: int,
    clock: str = "wall",
    benchmark_model_path: Optional[str] = None,
) -> dict[str, Any]:
    """Where and how a LUT was measured (the ``provenance`` record, without ``build_seconds``)."""
    from importlib import metadata

    try:
        version = metadata.version("ai-edge-litert")
    except metadata.PackageNotFoundError:
        version = "unknown"
    runtime = "ai-edge-litert"
    if target != "local":  # the device's benchmark_model reports no version we can read
        runtime, version = "benchmark_model", os.path.basename(benchmark_model_path or "?")
    return {
        "target": target,
        "runtime": runtime,
        "runtime_version": version,
        "num_threads": num_threads,
        "warmup": warmup,
        "runs": runs,
        "clock": clock,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": f"{platform.node()} ({_cpu_name()}, {os.cpu_count()} cpus)",
        "builder_commit": _git_commit(),
    }


# -------------------------------------------------------------------------------- files
def file_name(space_name: str, target: str, mode: str, num_threads: int, date: str) -> str:
    """e.g. ``lut_demo_local_fp32_t1_20261125.json`` (target ``adb:SERIAL`` -> ``adb-SERIAL``)."""
    t = "".join(c if c.isalnum() or c in "-_" else "-" for c in target)
    day = date[:10].replace("-", "")
    return f"lut_{space_name}_{t}_{canonical_mode(mode)}_t{num_threads}_{day}.json"


def save(lut: Mapping[str, Any], path: Union[str, os.PathLike]) -> None:
    """Writes a LUT dict as JSON, atomically."""
    write_json_atomic(path, lut, indent=1)


def load(
    path_or_dict: Union[str, os.PathLike, Mapping[str, Any]],
    space: SearchSpace,
    mode: Optional[str] = None,
) -> tuple[dict[str, Any], str]:
    """Reads and checks a LUT: ``(lut dict, where)``; ``where`` names it in error messages.

    Refuses another format or version, missing fields, another space (by fingerprint) or,
    when ``mode`` is given, another mode, naming both sides.
    """
    if isinstance(path_or_dict, Mapping):
        d, where = path_or_dict, "LUT"
    else:
        where = f"LUT {os.fspath(path_or_dict)!r}"
        try:
            with open(path_or_dict) as f:
                d = json.load(f)
        except OSError as e:
            raise ValueError(f"{where}: cannot read it ({e.strerror})") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: malformed JSON ({e})") from None
    if not isinstance(d, Mapping) or d.get("format") != FORMAT:
        got = d.get("format") if isinstance(d, Mapping) else type(d).__name__
        raise ValueError(f"{where}: format={got!r}, expected {FORMAT!r}")
    if d.get("version") != VERSION:
        hint = ""
        if d.get("version") == 1:
            hint = (
                " (version 1 timed stand-in block models, not the shipped layers and int8 "
                "recipe); rebuild it with elasticvit-lut"
            )
        raise ValueError(f"{where}: version={d.get('version')!r}, expected {VERSION}{hint}")
    missing = sorted({"space_fingerprint", "mode", "entries", "models", "constant_ms"} - set(d))
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    if d["space_fingerprint"] != space.fingerprint():
        raise ValueError(
            f"{where} was built for space {d.get('space')!r} with fingerprint "
            f"{d['space_fingerprint']!r}, but the requested space {space.name!r} has "
            f"fingerprint {space.fingerprint()!r}; rebuild the LUT with elasticvit-lut"
        )
    lut_mode = canonical_mode(d["mode"])
    if mode is not None and canonical_mode(mode) != lut_mode:
        raise ValueError(
            f"{where} holds mode {lut_mode!r} latencies, but mode {canonical_mode(mode)!r} "
            "was requested; use the LUT built for that mode"
        )
    return dict(d, mode=lut_mode), where


def read_entries(lut: Mapping[str, Any], where: str = "LUT") -> dict[BlockSpec, float]:
    """The measured block latencies (ms) of a LUT dict, by block."""
    entries = {}
    for i, e in enumerate(lut["entries"]):
        try:
            entries[BlockSpec.from_dict(e["op"])] = float(e["latency_ms"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: entries[{i}] is invalid ({err})") from None
    return entries


# ---------------------------------------------------------------------------- predictor
def predict_block(model: Mapping[str, Any], spec: BlockSpec) -> float:
    """A block type's fitted linear model at ``spec``, in ms, floored at 0."""
    f = block_features(spec)
    ms = model["intercept"] + sum(c * f[n] for c, n in zip(model["coef"], model["features"]))
    return max(float(ms), 0.0)


class LutLatencyPredictor:
    """Predicts a subnet's latency from a measured LUT (see the module docstring).

    Use ``load_predictor`` / ``from_json``; the constructor takes already-parsed parts (the
    builder uses it on its measurements before the LUT is written).

    Args:
        space: the search space (its fingerprint must match the LUT's).
        mode: quantization mode of the LUT ("fp32" or "int8").
        entries: measured block latencies (ms) by block.
        models: per block type ``{"features", "coef", "intercept"}``.
        constant_ms: fitted per-model constant.
        scale: fitted multiplier of the block sum (1.0 when only a constant was fitted).
        provenance: the LUT's provenance record.
        kind_scales: per block type, a fitted multiplier of its blocks (missing: 1.0).
    """

    def __init__(
        self,
        space: SearchSpace,
        mode: str,
        entries: Mapping[BlockSpec, float],
        models: Mapping[str, Mapping[str, Any]],
        constant_ms: float = 0.0,
        scale: float = 1.0,
        provenance: Optional[Mapping[str, Any]] = None,
        kind_scales: Optional[Mapping[str, float]] = None,
    ):
        self.space = space
        self.kind_scales = {str(k): float(v) for k, v in (kind_scales or {}).items()}
        self.mode = canonical_mode(mode)
        self.entries = dict(entries)
        self.models = {k: dict(v) for k, v in models.items()}
        self.constant_ms = float(constant_ms)
        self.scale = float(scale)
        self.provenance = dict(provenance or {})
        self._cache: dict[BlockSpec, float] = {}
        for kind, m in self.models.items():
            if len(m.get("features", ())) != len(m.get("coef", ())) or "intercept" not in m:
                raise ValueError(
                    f"LUT model '{kind}': expected 'features' and 'coef' of equal length and an "
                    f"'intercept', got keys {sorted(m)}"
                )

    @classmethod
    def from_json(
        cls,
        path_or_dict: Union[str, os.PathLike, Mapping[str, Any]],
        space: SearchSpace,
        mode: Optional[str] = None,
    ) -> "LutLatencyPredictor":
        """Loads a LUT; refuses another space (by fingerprint) or another mode, naming both."""
        d, where = load(path_or_dict, space, mode)
        return cls(
            space,
            d["mode"],
            read_entries(d, where),
            d["models"],
            d["constant_ms"],
            d.get("scale", 1.0),
            d.get("provenance"),
            d.get("kind_scales"),
        )

    def block_latency(self, spec: BlockSpec) -> float:
        """One block's latency (ms): the measured entry, else its type's fitted model."""
        if spec in self._cache:
            return self._cache[spec]
        if spec in self.entries:
            ms = self.entries[spec]
        else:
            m = self.models.get(spec.kind.value)
            if m is None:
                raise ValueError(
                    f"LUT has no entry and no fitted model for a '{spec.kind.value}' block; "
                    f"it has models for {sorted(self.models)}"
                )
            ms = predict_block(m, spec)
        self._cache[spec] = ms
        return ms

    def kind_sums(self, arch: ArchConfig) -> dict[str, float]:
        """Per block type, the sum of its block latencies in ``arch`` (ms, uncorrected)."""
        out: dict[str, float] = {}
        for s in plan(self.space, arch):
            out[s.kind.value] = out.get(s.kind.value, 0.0) + self.block_latency(s)
        return out

    def blocks_sum(self, arch: ArchConfig) -> float:
        """Sum of the block latencies of ``arch`` in ms with the per-type correction, before
        the whole-subnet scale and constant (validates the arch)."""
        return corrected_sum(self.kind_scales, self.kind_sums(arch))

    def predict(self, arch: ArchConfig) -> float:
        """Predicted whole-subnet latency in ms (validates the arch)."""
        return self.scale * self.blocks_sum(arch) + self.constant_ms

    def breakdown(self, arch: ArchConfig) -> list[tuple[BlockSpec, float, bool]]:
        """``(block, ms, measured)`` per block, in execution order."""
        return [(s, self.block_latency(s), s in self.entries) for s in plan(self.space, arch)]


def corrected_sum(kind_scales: Mapping[str, float], kind_sums: Mapping[str, float]) -> float:
    """``sum over block types of kind_scale[type] * kind_sums[type]`` (a missing scale: 1)."""
    return sum(kind_scales.get(k, 1.0) * v for k, v in kind_sums.items())


def check_covers(predictor: "LutLatencyPredictor", space: SearchSpace) -> None:
    """Raises ``ValueError`` (one line) when the LUT cannot price a block the space needs: a
    block type with neither a fitted model nor an entry for every block of that type."""
    for kind, specs in enumerate_blocks(space).items():
        if not specs or kind.value in predictor.models:
            continue
        missing = [s for s in specs if s not in predictor.entries]
        if missing:
            raise ValueError(
                f"it has no '{kind.value}' model and no entry for {len(missing)} of the "
                f"space's {len(specs)} '{kind.value}' blocks (e.g. {missing[0].to_dict()}); "
                "expected a complete LUT: rebuild it with elasticvit-lut"
            )


def load_predictor(
    path: Union[str, os.PathLike, Mapping[str, Any]], space: SearchSpace, mode: Optional[str] = None
) -> LutLatencyPredictor:
    """``LutLatencyPredictor.from_json(path, space, mode)``."""
    return LutLatencyPredictor.from_json(path, space, mode)
