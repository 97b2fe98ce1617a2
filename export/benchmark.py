"""Benchmarks of TFLite models: the ONLY place that runs and parses benchmarks.

Two targets (docs/design.md#latency-targets, one flag everywhere: `--target=local|adb:SERIAL`):

* `local`: LiteRT's Python interpreter (`ai_edge_litert.interpreter.Interpreter`, XNNPACK) in this
  process: init time, first inference, warm-up, per-run wall times (median, p5/p95, mean, std,
  min/max), model size, and memory (RSS delta over init and over the runs, process peak RSS).
* `adb:SERIAL`: pushes the model and a user-supplied TFLite `benchmark_model` binary to an
  Android device, runs it, and parses its text output (`parse_benchmark_model_output`), including
  the op-profiling tables when `--enable_op_profiling=true`.

No `benchmark_model` binary exists on the development machines; the parser follows the tool's
documented output (classic TFLite `benchmark_model` and the newer LiteRT `benchmark_model`
summary) and is tested against recorded samples in `tests/data/`.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import tempfile
import time
from typing import Any

import numpy as np

__all__ = [
    "BenchmarkResult",
    "OpProfile",
    "AdbError",
    "parse_target",
    "benchmark_local",
    "benchmark_adb",
    "benchmark",
    "parse_benchmark_model_output",
    "runtime_versions",
    "attach_local_profile",
]


@dataclasses.dataclass
class OpProfile:
    """One row of a benchmark_model op-profiling table (times in milliseconds)."""

    node_type: str
    avg_ms: float
    percent: float
    count: int | None = None
    first_ms: float | None = None
    mem_kb: float | None = None
    times_called: int | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class BenchmarkResult:
    """Latency and memory of one TFLite model on one target. Times in milliseconds.

    Attributes:
        target: "local" or "adb:SERIAL".
        runtime: runtime name and version ("ai_edge_litert 2.3.0" or "benchmark_model").
        num_threads: CPU threads.
        runs: number of timed runs; warmup_runs: number of untimed runs before them.
        median_ms, mean_ms, std_ms, min_ms, max_ms, p5_ms, p95_ms: timed-run statistics (the
            percentiles are None when the tool did not report them).
        mad_ms: median absolute deviation of the timed runs (local only; robust to the
            preemption outliers that dominate std_ms on a shared CPU).
        init_ms: interpreter creation + tensor allocation (benchmark_model: "Init").
        first_ms: first inference; warmup_avg_ms: mean over warm-up runs.
        model_size_bytes: size of the flatbuffer.
        init_memory_mb / overall_memory_mb: RSS growth over init / over init+runs
            (benchmark_model: "Memory footprint delta" or "Peak memory footprint").
        peak_rss_mb: process peak resident set size (local only; includes Python + TF).
        op_profile: "Summary by node type" rows; op_runs: "Run Order" rows (adb only).
        extra: anything else worth keeping (input shape/dtype, host, date...).
    """

    target: str
    runtime: str
    num_threads: int
    runs: int
    warmup_runs: int
    median_ms: float | None
    mean_ms: float
    std_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    p5_ms: float | None = None
    p95_ms: float | None = None
    mad_ms: float | None = None
    init_ms: float | None = None
    first_ms: float | None = None
    warmup_avg_ms: float | None = None
    model_size_bytes: int | None = None
    init_memory_mb: float | None = None
    overall_memory_mb: float | None = None
    peak_rss_mb: float | None = None
    op_profile: list[OpProfile] = dataclasses.field(default_factory=list)
    op_runs: list[OpProfile] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = dataclasses.asdict(self)
        return d


CLOCKS = ("wall", "cpu")


class AdbError(RuntimeError):
    """adb failed: no binary, unreachable device, or a failing command on the device."""


def parse_target(target: str) -> tuple[str, str | None]:
    """Parses `--target`: "local" -> ("local", None); "adb:SERIAL" -> ("adb", SERIAL)."""
    if target == "local":
        return "local", None
    if isinstance(target, str) and target.startswith("adb:") and len(target) > 4:
        return "adb", target[4:]
    raise ValueError(f"target={target!r}: expected 'local' or 'adb:SERIAL'")


def runtime_versions() -> dict[str, str]:
    """Versions of the runtimes involved, for provenance."""
    out = {
        "python": platform.python_version(),
        "host": platform.node(),
        "machine": platform.machine(),
    }
    for mod in ("ai_edge_litert", "tensorflow", "keras", "numpy"):
        try:
            from importlib.metadata import version

            out[mod] = version(mod.replace("_", "-"))
        except Exception:  # pragma: no cover - missing distribution metadata
            out[mod] = "unknown"
    return out


def _rss_mb() -> float | None:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:  # pragma: no cover - psutil missing
        return None


def _random_input(detail: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    shape = [int(d) for d in detail["shape"]]
    dtype = np.dtype(detail["dtype"])
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def benchmark_local(
    model: "bytes | str | os.PathLike",
    num_threads: int = 1,
    warmup: int = 10,
    runs: int = 50,
    seed: int = 0,
    inputs: list[np.ndarray] | None = None,
    min_time_s: float = 0.0,
    clock: str = "wall",
) -> BenchmarkResult:
    """Times a TFLite model with LiteRT in this process (batch as in the model, default 1).

    Args:
        model: flatbuffer bytes or a path to a `.tflite` file.
        num_threads: interpreter threads (>= 1).
        warmup: untimed runs after the first inference (>= 0).
        runs: timed runs (>= 1).
        seed: seed of the random input (used when `inputs` is None).
        inputs: optional input arrays, one per model input.
        min_time_s: keep timing past `runs` until this many seconds passed (at most 20 x
            `runs` runs): short models get enough runs for a stable median.
        clock: "wall" (latency) or "cpu": the calling thread's CPU time, which equals the
            latency on an idle core with 1 thread (the interpreter runs inline) and stays right
            on a shared, overloaded CPU where wall time includes waiting for a core (measured: a
            1.2 ms transformer block read 12 ms wall, 1.46 ms CPU at load 10 on 2 cores).

    Returns:
        A BenchmarkResult (times in ms; `init_ms` covers interpreter creation + allocation).

    Raises:
        ValueError: bad counts or an unreadable model.
    """
    from ai_edge_litert.interpreter import Interpreter

    if int(num_threads) < 1:
        raise ValueError(f"num_threads must be >= 1; received {num_threads}.")
    if int(runs) < 1 or int(warmup) < 0:
        raise ValueError(
            f"Expected runs >= 1 and warmup >= 0; received runs={runs}, warmup={warmup}."
        )
    if clock not in CLOCKS:
        raise ValueError(f"clock={clock!r}: expected one of {list(CLOCKS)}")
    if clock == "cpu" and int(num_threads) != 1:
        raise ValueError(
            f"clock='cpu' needs num_threads=1 (got {num_threads}): other threads' work is not "
            "counted by the calling thread's CPU time"
        )
    now = time.thread_time if clock == "cpu" else time.perf_counter
    if isinstance(model, (str, os.PathLike)):
        with open(model, "rb") as f:
            content = f.read()
    else:
        content = bytes(model)

    rss0 = _rss_mb()
    t0 = time.perf_counter()
    try:
        interpreter = Interpreter(model_content=content, num_threads=int(num_threads))
        interpreter.allocate_tensors()
    except ValueError as err:
        raise ValueError(f"LiteRT could not load the model: {err}") from err
    init_ms = (time.perf_counter() - t0) * 1e3
    rss1 = _rss_mb()

    details = interpreter.get_input_details()
    rng = np.random.default_rng(seed)
    if inputs is None:
        inputs = [_random_input(d, rng) for d in details]
    if len(inputs) != len(details):
        raise ValueError(f"Model has {len(details)} inputs; received {len(inputs)} arrays.")
    for d, x in zip(details, inputs):
        interpreter.set_tensor(d["index"], np.asarray(x, dtype=d["dtype"]))

    t0 = time.perf_counter()
    interpreter.invoke()
    first_ms = (time.perf_counter() - t0) * 1e3
    warm = []
    for _ in range(int(warmup)):
        t0 = time.perf_counter()
        interpreter.invoke()
        warm.append((time.perf_counter() - t0) * 1e3)
    times = []
    start = time.perf_counter()
    while len(times) < int(runs) or (
        time.perf_counter() - start < min_time_s and len(times) < 20 * int(runs)
    ):
        t0 = now()
        interpreter.invoke()
        times.append((now() - t0) * 1e3)
    times = np.asarray(times)
    rss2 = _rss_mb()
    # ru_maxrss is KiB on Linux.
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    from importlib.metadata import version

    return BenchmarkResult(
        target="local",
        runtime=f"ai_edge_litert {version('ai-edge-litert')}",
        num_threads=int(num_threads),
        runs=len(times),
        warmup_runs=int(warmup),
        median_ms=float(np.median(times)),
        mean_ms=float(times.mean()),
        std_ms=float(times.std()),
        min_ms=float(times.min()),
        max_ms=float(times.max()),
        p5_ms=float(np.percentile(times, 5)),
        p95_ms=float(np.percentile(times, 95)),
        mad_ms=float(np.median(np.abs(times - np.median(times)))),
        init_ms=init_ms,
        first_ms=first_ms,
        warmup_avg_ms=float(np.mean(warm)) if warm else None,
        model_size_bytes=len(content),
        init_memory_mb=None if rss0 is None else rss1 - rss0,
        overall_memory_mb=None if rss0 is None else rss2 - rss0,
        peak_rss_mb=peak_mb,
        extra={
            "inputs": [
                {"shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"]).name}
                for d in details
            ],
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(),
            "processor": platform.processor() or platform.machine(),
        },
    )


# ----------------------------------------------------------------------------------------------
# benchmark_model output parser
# ----------------------------------------------------------------------------------------------

_NUM = r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_LOG_PREFIX = re.compile(r"^(?:[A-Z]+: )?(?:\[[^\]]*\] ?)?")


def _strip(line: str) -> str:
    # Drops "INFO: " and "[file.h:81] " prefixes the newer tool and logcat add.
    return _LOG_PREFIX.sub("", line.rstrip("\r\n"), count=1)


def _kv(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(rf"(\w+)=({_NUM})", text)}


def _parse_table(lines: list[str], start: int) -> tuple[list[OpProfile], int]:
    """Parses a stats table whose header row starts at `start`; returns rows and next index."""
    header = [h.strip().lower() for h in re.findall(r"\[([^\]]+)\]", lines[start])]
    rows: list[OpProfile] = []
    i = start + 1
    while i < len(lines):
        raw = lines[i]
        if not raw.strip() or raw.lstrip().startswith("=") or not raw.startswith(("\t", " ")):
            break
        cells = [c.strip() for c in raw.strip("\r\n").split("\t")]
        cells = [c for c in cells if c != ""]
        if len(cells) < len(header) - 1:
            break
        rec = dict(zip(header, cells))

        def num(key: str, cast=float, rec=rec):
            val = rec.get(key)
            if val is None:
                return None
            try:
                return cast(float(val.rstrip("%")))
            except ValueError:
                return None

        rows.append(
            OpProfile(
                node_type=rec.get("node type", cells[0]),
                avg_ms=num("avg ms") or 0.0,
                percent=num("avg %") if "avg %" in rec else (num("%") or 0.0),
                count=num("count", int),
                first_ms=num("first"),
                mem_kb=num("mem kb"),
                times_called=num("times called", int),
                name=rec.get("name"),
            )
        )
        i += 1
    return rows, i


def parse_benchmark_model_output(text: str) -> dict[str, Any]:
    """Parses the text output of TFLite's `benchmark_model` (classic and LiteRT variants).

    Recognised lines (times in microseconds in the tool, returned in ms here):
        "Initialized session in 4.478ms."
        "count=50 first=... curr=... min=... max=... avg=... std=... [p5=... median=... p95=...]"
            (first such line: warm-up runs; second: timed runs)
        "Inference timings in us: Init: X, First inference: X, Warmup (avg): X, Inference (avg): X"
        "Memory footprint delta from the start of the tool (MB): init=X overall=Y" or
        "Peak memory footprint (MB): init=X overall=Y"
        LiteRT summary: "Model initialization: 4.48 ms", "Inference (avg): 0.46 ms (2112 runs)",
            "Init footprint: 8.94 MB", "Overall footprint: 11.51 MB"
        "The input model file size (MB): X"
        Op profiling: the "Run Order" and "Summary by node type" tables of the section
            "Operator-wise Profiling Info for Regular Benchmark Runs" (the initialization
            section's tables are skipped).

    Returns:
        dict with keys among: init_ms, first_ms, warmup_avg_ms, mean_ms, std_ms, min_ms, max_ms,
        p5_ms, median_ms, p95_ms, runs, warmup_runs, init_memory_mb, overall_memory_mb,
        model_size_mb, op_profile (list[OpProfile]), op_runs (list[OpProfile]).

    Raises:
        ValueError: if no inference timing is found (names the start of the text).
    """
    lines = [_strip(line) for line in text.splitlines()]
    out: dict[str, Any] = {}
    count_lines: list[dict[str, float]] = []
    section = None  # None | "init" | "regular"
    i = 0
    while i < len(lines):
        line = lines[i]
        s = line.strip()
        if m := re.search(rf"Initialized session in ({_NUM}) ?ms", s):
            out.setdefault("init_ms", float(m.group(1)))
        elif s.startswith("count=") and "avg=" in s:
            count_lines.append(_kv(s))
        elif s.startswith("Inference timings in us:"):
            kv = dict(re.findall(rf"([A-Za-z ()]+):\s*({_NUM})", s.split(":", 1)[1]))
            kv = {k.strip(" ,"): float(v) for k, v in kv.items()}
            if "Init" in kv:
                out["init_ms"] = kv["Init"] / 1e3
            if "First inference" in kv:
                out["first_ms"] = kv["First inference"] / 1e3
            if "Warmup (avg)" in kv:
                out["warmup_avg_ms"] = kv["Warmup (avg)"] / 1e3
            if "Inference (avg)" in kv:
                out["mean_ms"] = kv["Inference (avg)"] / 1e3
        elif m := re.search(
            rf"(?:Memory footprint delta.*|Peak memory footprint) \(MB\):\s*init=({_NUM})\s+"
            rf"overall=({_NUM})",
            s,
        ):
            out["init_memory_mb"], out["overall_memory_mb"] = float(m.group(1)), float(m.group(2))
        elif m := re.search(rf"input model file size \(MB\):\s*({_NUM})", s):
            out["model_size_mb"] = float(m.group(1))
        elif m := re.match(rf"Model initialization:\s*({_NUM}) ms", s):
            out["init_ms"] = float(m.group(1))
        elif m := re.match(rf"Warmup \(first\):\s*({_NUM}) ms", s):
            out["first_ms"] = float(m.group(1))
        elif m := re.match(rf"Warmup \(avg\):\s*({_NUM}) ms(?: \((\d+) runs\))?", s):
            out["warmup_avg_ms"] = float(m.group(1))
        elif m := re.match(rf"Inference \(avg\):\s*({_NUM}) ms(?: \((\d+) runs\))?", s):
            out["mean_ms"] = float(m.group(1))
        elif m := re.match(rf"Init footprint:\s*({_NUM}) MB", s):
            out["init_memory_mb"] = float(m.group(1))
        elif m := re.match(rf"Overall footprint:\s*({_NUM}) MB", s):
            out["overall_memory_mb"] = float(m.group(1))
        elif "Profiling Info for Benchmark Initialization" in s:
            section = "init"
        elif "Profiling Info for Regular Benchmark Runs" in s:
            section = "regular"
        elif re.match(r"=+ (Run Order|Summary by node type) =+", s) and section != "init":
            # NOTE: the LiteRT tool prints the tables without a section title: treat as regular.
            key = "op_runs" if "Run Order" in s else "op_profile"
            if i + 1 < len(lines) and "[" in lines[i + 1]:
                raw = text.splitlines()
                # Parse from the raw lines (tabs intact) but with prefixes stripped.
                rows, nxt = _parse_table([_LOG_PREFIX.sub("", r, count=1) for r in raw], i + 1)
                out[key] = rows
                i = nxt
                continue
        i += 1

    if count_lines:
        timed = count_lines[1] if len(count_lines) > 1 else count_lines[0]
        if len(count_lines) > 1:
            out["warmup_runs"] = int(count_lines[0].get("count", 0))
            out.setdefault("warmup_avg_ms", count_lines[0]["avg"] / 1e3)
            out.setdefault("first_ms", count_lines[0].get("first", float("nan")) / 1e3)
        out["runs"] = int(timed.get("count", 0))
        out.setdefault("mean_ms", timed["avg"] / 1e3)
        for key in ("std", "min", "max", "p5", "median", "p95"):
            if key in timed:
                out[f"{key}_ms"] = timed[key] / 1e3
    if "mean_ms" not in out:
        head = text.strip()[:300]
        raise ValueError(
            f"No inference timings found in benchmark_model output; expected a line "
            f"'Inference timings in us: ...'. Output began with:\n{head}"
        )
    return out


# ----------------------------------------------------------------------------------------------
# adb
# ----------------------------------------------------------------------------------------------

_DEVICE_DIR = "/data/local/tmp/elasticvit"


def _adb(serial: str, args: list[str], timeout: float = 600.0) -> str:
    adb = shutil.which("adb")
    if adb is None:
        raise AdbError(
            "adb was not found on PATH; install Android platform-tools or use --target=local."
        )
    cmd = [adb, "-s", serial, *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise AdbError(f"`{shlex.join(cmd)}` timed out after {timeout:.0f} s.") from err
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip()
        if "not found" in msg or "offline" in msg or "no devices" in msg or "unauthorized" in msg:
            raise AdbError(
                f"Android device {serial!r} is not reachable over adb ({msg}); check "
                "`adb devices`."
            )
        raise AdbError(f"`{shlex.join(cmd)}` failed with exit code {proc.returncode}: {msg}")
    return proc.stdout


def benchmark_adb(
    model: "bytes | str | os.PathLike",
    serial: str,
    benchmark_model_path: str,
    num_threads: int = 1,
    warmup: int = 10,
    runs: int = 50,
    enable_op_profiling: bool = False,
    extra_args: list[str] | None = None,
) -> BenchmarkResult:
    """Runs a user-supplied `benchmark_model` on an Android device over adb and parses it.

    Steps: `adb -s SERIAL get-state` (must print "device"), push the model and the binary to
    /data/local/tmp/elasticvit, chmod +x, run `benchmark_model --graph=... --num_threads=...
    --warmup_runs=... --num_runs=... [--enable_op_profiling=true]`, parse its output.

    Raises:
        ValueError: missing benchmark_model binary or model file.
        AdbError: adb missing, device unreachable, or a failing device command.
    """
    if not benchmark_model_path or not os.path.isfile(benchmark_model_path):
        raise ValueError(
            f"--benchmark_model_path must name the Android benchmark_model binary; received "
            f"{benchmark_model_path!r}."
        )
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(model, (str, os.PathLike)):
            if not os.path.isfile(model):
                raise ValueError(f"TFLite model {str(model)!r} does not exist.")
            local_model = os.fspath(model)
        else:
            local_model = os.path.join(tmp, "model.tflite")
            with open(local_model, "wb") as f:
                f.write(model)
        size = os.path.getsize(local_model)
        state = _adb(serial, ["get-state"], timeout=30).strip()
        if state != "device":
            raise AdbError(f"Android device {serial!r} is not ready (adb get-state: {state!r}).")
        remote_model = f"{_DEVICE_DIR}/{os.path.basename(local_model)}"
        remote_bin = f"{_DEVICE_DIR}/benchmark_model"
        _adb(serial, ["shell", "mkdir", "-p", _DEVICE_DIR], timeout=30)
        _adb(serial, ["push", local_model, remote_model])
        _adb(serial, ["push", benchmark_model_path, remote_bin])
        _adb(serial, ["shell", "chmod", "+x", remote_bin], timeout=30)
        cmd = [
            remote_bin,
            f"--graph={remote_model}",
            f"--num_threads={int(num_threads)}",
            f"--warmup_runs={int(warmup)}",
            f"--num_runs={int(runs)}",
        ]
        if enable_op_profiling:
            cmd.append("--enable_op_profiling=true")
        cmd += list(extra_args or [])
        text = _adb(serial, ["shell", shlex.join(cmd)])
    parsed = parse_benchmark_model_output(text)
    return BenchmarkResult(
        target=f"adb:{serial}",
        runtime="benchmark_model",
        num_threads=int(num_threads),
        runs=int(parsed.get("runs", runs)),
        warmup_runs=int(parsed.get("warmup_runs", warmup)),
        median_ms=parsed.get("median_ms"),
        mean_ms=parsed["mean_ms"],
        std_ms=parsed.get("std_ms"),
        min_ms=parsed.get("min_ms"),
        max_ms=parsed.get("max_ms"),
        p5_ms=parsed.get("p5_ms"),
        p95_ms=parsed.get("p95_ms"),
        init_ms=parsed.get("init_ms"),
        first_ms=parsed.get("first_ms"),
        warmup_avg_ms=parsed.get("warmup_avg_ms"),
        model_size_bytes=size,
        init_memory_mb=parsed.get("init_memory_mb"),
        overall_memory_mb=parsed.get("overall_memory_mb"),
        op_profile=parsed.get("op_profile", []),
        op_runs=parsed.get("op_runs", []),
        extra={
            "command": shlex.join(cmd),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    )


def benchmark(
    model: "bytes | str | os.PathLike",
    target: str = "local",
    num_threads: int = 1,
    warmup: int = 10,
    runs: int = 50,
    benchmark_model_path: str | None = None,
    enable_op_profiling: bool = False,
    min_time_s: float = 0.0,
    clock: str = "wall",
    fresh_process: bool = False,
) -> BenchmarkResult:
    """Dispatches on `--target`: "local" -> benchmark_local, "adb:SERIAL" -> benchmark_adb
    (`min_time_s` and `clock` are local options: the device's tool times wall clock;
    `fresh_process`: the local run in a fresh process that loads LiteRT only, see
    `fresh_process.py`)."""
    kind, serial = parse_target(target)
    if kind == "local" and fresh_process:
        from elasticvit_tf.export import fresh_process as fresh

        return fresh.call(
            __name__,
            "benchmark",
            model=model,
            target=target,
            num_threads=num_threads,
            warmup=warmup,
            runs=runs,
            enable_op_profiling=enable_op_profiling,
            min_time_s=min_time_s,
            clock=clock,
        )
    if kind == "local":
        res = benchmark_local(
            model,
            num_threads=num_threads,
            warmup=warmup,
            runs=runs,
            min_time_s=min_time_s,
            clock=clock,
        )
        if enable_op_profiling:
            attach_local_profile(res, model, num_threads=num_threads)
        return res
    if clock != "wall":
        raise ValueError(f"clock={clock!r}: target {target!r} times wall clock only")
    return benchmark_adb(
        model,
        serial,
        benchmark_model_path,
        num_threads=num_threads,
        warmup=warmup,
        runs=runs,
        enable_op_profiling=enable_op_profiling,
    )


def attach_local_profile(
    res: BenchmarkResult, model: "bytes | str | os.PathLike", num_threads: int = 1
) -> BenchmarkResult:
    """Adds the measured local per-op profile (`export/op_profile.py`) to `res`: one
    `op_profile` row per (op type, dtype, XNNPACK or builtin kernel), and the full profile
    (method, partitions, every op) under `extra["op_profile"]`."""
    from elasticvit_tf.export import op_profile

    if isinstance(model, (str, os.PathLike)):
        with open(model, "rb") as f:
            model = f.read()
    prof = op_profile.profile_local(
        bytes(model), num_threads=num_threads, model_median_ms=res.median_ms
    )
    res.op_profile = [
        OpProfile(
            node_type=f"{r['op_type']} ({r['dtype']}, {'XNNPACK' if r['delegated'] else 'builtin'})",
            avg_ms=r["total_ms"],
            percent=r["percent"],
            count=r["count"],
        )
        for r in prof.by_type()
    ]
    res.extra["op_profile"] = prof.to_dict()
    res.extra["op_profile_table"] = prof.table()
    return res
