"""Measured per-op profile of a TFLite model on the local LiteRT runtime (XNNPACK, CPU).

The installed Python LiteRT (`ai_edge_litert` 2.3.0) exposes no op profiler (`benchmark_model`'s
`--enable_op_profiling` exists only in the C++ tool, used on `--target=adb:SERIAL`). So the local
profile is built from two measurements:

* **Delegation** (`delegation`): the model is loaded with XNNPACK as `benchmark_local` loads it;
  the interpreter's node list then ends with one `DELEGATE` node per XNNPACK partition. The
  original nodes each partition replaced are found by walking back from the partition's outputs
  to its inputs; every other node runs on a builtin (reference/optimized) kernel.
* **Time per op** (method `isolated_ops`): every operator is cut out of the flatbuffer into a
  one-op model (same tensors, weights, quantization, options), loaded the same way, and timed
  (median over runs). The per-op time includes the interpreter's per-invoke overhead, measured
  once on the cheapest op and reported as `invoke_overhead_ms`; the report gives the sum of the
  per-op medians next to the whole model's median, so the reader sees how well they add up.
  No time is estimated or split by FLOPs.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any

import numpy as np

__all__ = ["OpTiming", "OpProfileReport", "delegation", "profile_local", "single_op_models"]

METHOD = "isolated_ops"
METHOD_TEXT = (
    "each operator cut out into a one-op TFLite model and timed with LiteRT (XNNPACK as in "
    "the full model), median of the runs; delegation from the interpreter's DELEGATE nodes"
)


@dataclasses.dataclass
class OpTiming:
    """One operator of the model: its type, whether XNNPACK runs it, its measured time."""

    index: int
    op_type: str
    dtype: str
    delegated: bool
    median_ms: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class OpProfileReport:
    """Per-op profile of one model (times in ms)."""

    method: str
    method_text: str
    ops: list[OpTiming]
    partitions: int
    model_median_ms: float | None = None
    invoke_overhead_ms: float | None = None

    @property
    def sum_ms(self) -> float:
        return float(sum(o.median_ms for o in self.ops))

    def by_type(self) -> list[dict[str, Any]]:
        """Rows per (op type, dtype, delegated): count, total ms, % of the per-op sum."""
        rows: dict[tuple, dict[str, Any]] = {}
        for o in self.ops:
            key = (o.op_type, o.dtype, o.delegated)
            r = rows.setdefault(
                key,
                {
                    "op_type": o.op_type,
                    "dtype": o.dtype,
                    "delegated": o.delegated,
                    "count": 0,
                    "total_ms": 0.0,
                },
            )
            r["count"] += 1
            r["total_ms"] += o.median_ms
        total = self.sum_ms or 1.0
        out = sorted(rows.values(), key=lambda r: -r["total_ms"])
        for r in out:
            r["percent"] = 100.0 * r["total_ms"] / total
        return out

    def fallback_types(self) -> list[str]:
        """Op types with at least one node outside the XNNPACK delegate."""
        return sorted({o.op_type for o in self.ops if not o.delegated})

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "method_text": self.method_text,
            "partitions": self.partitions,
            "model_median_ms": self.model_median_ms,
            "sum_of_ops_ms": self.sum_ms,
            "invoke_overhead_ms": self.invoke_overhead_ms,
            "delegated_ops": sum(o.delegated for o in self.ops),
            "builtin_ops": sum(not o.delegated for o in self.ops),
            "fallback_op_types": self.fallback_types(),
            "by_type": self.by_type(),
            "ops": [o.to_dict() for o in self.ops],
        }

    def table(self, top: int = 15) -> str:
        """Markdown table of the top op types by time, with the partition count."""
        lines = [
            f"Per-op profile ({self.method}: {self.method_text}).",
            f"XNNPACK partitions: {self.partitions}; ops in the delegate: "
            f"{sum(o.delegated for o in self.ops)}, on builtin kernels: "
            f"{sum(not o.delegated for o in self.ops)}"
            + (f" ({', '.join(self.fallback_types())})" if self.fallback_types() else "")
            + ".",
            f"Sum of per-op medians {self.sum_ms:.3f} ms"
            + (
                f" vs whole model {self.model_median_ms:.3f} ms"
                if self.model_median_ms is not None
                else ""
            )
            + (
                f"; per-invoke overhead {self.invoke_overhead_ms:.4f} ms per op"
                if self.invoke_overhead_ms is not None
                else ""
            )
            + ".",
            "",
            "| op type | dtype | runs in | count | total ms | % |",
            "|---|---|---|---|---|---|",
        ]
        for r in self.by_type()[:top]:
            lines.append(
                f"| {r['op_type']} | {r['dtype']} | "
                f"{'XNNPACK' if r['delegated'] else 'builtin'} | {r['count']} | "
                f"{r['total_ms']:.3f} | {r['percent']:.1f} |"
            )
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# delegation
# ----------------------------------------------------------------------------------------------


def _interpreter(content: bytes, num_threads: int):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=bytes(content), num_threads=int(num_threads))
    it.allocate_tensors()
    return it


def delegation(content: bytes, num_threads: int = 1) -> tuple[list[bool], int]:
    """Which original nodes run inside XNNPACK, and the number of XNNPACK partitions.

    Returns:
        (`delegated[i]` for every operator of the first subgraph, number of DELEGATE nodes).
    """
    it = _interpreter(content, num_threads)
    ops = it._get_ops_details()
    original = [o for o in ops if o["op_name"] != "DELEGATE"]
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    producer = {}
    for o in original:
        for t in o["outputs"]:
            producer[int(t)] = int(o["index"])
    inside: set[int] = set()
    for d in delegates:
        stop = {int(t) for t in d["inputs"]}
        stack = [int(t) for t in d["outputs"]]
        seen: set[int] = set()
        while stack:
            t = stack.pop()
            if t in stop or t in seen or t not in producer:
                continue
            seen.add(t)
            node = producer[t]
            if node not in inside:
                inside.add(node)
                stack.extend(int(x) for x in ops[node]["inputs"] if int(x) >= 0)
    return [int(o["index"]) in inside for o in original], len(delegates)


# ----------------------------------------------------------------------------------------------
# one-op models
# ----------------------------------------------------------------------------------------------


def single_op_models(content: bytes) -> list[tuple[str, str, bytes]]:
    """Every operator of the first subgraph as a standalone one-op flatbuffer.

    The op keeps its tensors (shapes, types, quantization), options and constant buffers; its
    non-constant inputs become the model's inputs, its outputs the model's outputs.

    Returns:
        `(op_type, dtype of the first output, flatbuffer bytes)` per operator, in graph order.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    from elasticvit_tf.export import tflite

    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    if len(model.subgraphs) != 1:
        raise ValueError(
            f"Per-op profiling supports one-subgraph models; this one has {len(model.subgraphs)}."
        )
    sub = model.subgraphs[0]
    names = tflite._code_names(schema, schema.Model.GetRootAs(bytearray(content), 0))
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}

    def has_data(buf_index: int) -> bool:
        b = model.buffers[buf_index]
        return b.data is not None and len(b.data) > 0 or bool(getattr(b, "size", 0))

    out = []
    for op in sub.operators:
        used = [int(t) for t in list(op.inputs) + list(op.outputs) if int(t) >= 0]
        used = list(dict.fromkeys(used))
        remap = {t: i for i, t in enumerate(used)}
        new = schema.ModelT()
        new.version = model.version
        new.description = "single op"
        new.operatorCodes = [model.operatorCodes[op.opcodeIndex]]
        new.buffers = [schema.BufferT()]  # buffer 0: empty by convention
        tensors = []
        inputs = []
        for t in used:
            src = sub.tensors[t]
            tt = copy.copy(src)
            if src.buffer and has_data(src.buffer):
                new.buffers.append(model.buffers[src.buffer])
                tt.buffer = len(new.buffers) - 1
            else:
                tt.buffer = 0
                if t in [int(x) for x in op.inputs]:
                    inputs.append(remap[t])
            tensors.append(tt)
        s = schema.SubGraphT()
        s.tensors = tensors
        s.inputs = inputs
        s.outputs = [remap[int(t)] for t in op.outputs]
        nop = schema.OperatorT()
        nop.opcodeIndex = 0
        nop.inputs = [remap[int(t)] if int(t) >= 0 else -1 for t in op.inputs]
        nop.outputs = [remap[int(t)] for t in op.outputs]
        nop.builtinOptionsType = op.builtinOptionsType
        nop.builtinOptions = op.builtinOptions
        nop.builtinOptions2Type = getattr(op, "builtinOptions2Type", 0)
        nop.builtinOptions2 = getattr(op, "builtinOptions2", None)
        s.operators = [nop]
        s.name = "op"
        new.subgraphs = [s]
        builder = flatbuffers.Builder(1024)
        builder.Finish(new.Pack(builder), file_identifier=b"TFL3")
        dtype = types.get(sub.tensors[int(op.outputs[0])].type, "?").lower()
        out.append((names[op.opcodeIndex], dtype, bytes(builder.Output())))
    return out


def _time(content: bytes, num_threads: int, runs: int, warmup: int, seed: int) -> float:
    it = _interpreter(content, num_threads)
    rng = np.random.default_rng(seed)
    for d in it.get_input_details():
        dtype = np.dtype(d["dtype"])
        if np.issubdtype(dtype, np.integer):
            x = rng.integers(-8, 8, size=d["shape"]).astype(dtype)
        else:
            x = rng.standard_normal(d["shape"]).astype(dtype)
        it.set_tensor(d["index"], x)
    for _ in range(int(warmup)):
        it.invoke()
    times = np.empty(int(runs))
    for i in range(int(runs)):
        t0 = time.perf_counter()
        it.invoke()
        times[i] = time.perf_counter() - t0
    return float(np.median(times) * 1e3)


def profile_local(
    model: "bytes | str",
    num_threads: int = 1,
    runs: int = 20,
    warmup: int = 3,
    model_median_ms: float | None = None,
    seed: int = 0,
) -> OpProfileReport:
    """Measured per-op profile of a TFLite model on the local runtime (see the module doc).

    Args:
        model: flatbuffer bytes or a `.tflite` path.
        num_threads: interpreter threads, as for the whole-model benchmark.
        runs, warmup: timed / untimed invocations of every one-op model (>= 1 / >= 0).
        model_median_ms: the whole model's median, shown next to the per-op sum.

    Returns:
        An OpProfileReport covering every operator of the model.

    Raises:
        ValueError: an unreadable model, bad counts, or a model without operators.
        RuntimeError: a one-op model LiteRT cannot run (names the op), never an empty profile.
    """
    if isinstance(model, (str, bytes)) and not isinstance(model, bytes):
        with open(model, "rb") as f:
            model = f.read()
    content = bytes(model)
    if int(runs) < 1 or int(warmup) < 0:
        raise ValueError(f"Expected runs >= 1 and warmup >= 0; received {runs}, {warmup}.")
    delegated, partitions = delegation(content, num_threads)
    singles = single_op_models(content)
    if not singles:
        raise ValueError("The TFLite model has no operators to profile.")
    if len(singles) != len(delegated):
        raise RuntimeError(
            f"Per-op profile: {len(singles)} operators in the flatbuffer but {len(delegated)} "
            "nodes in the interpreter; cannot attribute delegation."
        )
    ops = []
    for i, ((op_type, dtype, data), inside) in enumerate(zip(singles, delegated)):
        try:
            ms = _time(data, num_threads, runs, warmup, seed + i)
        except Exception as err:
            raise RuntimeError(
                f"Per-op profile: LiteRT could not run op {i} ({op_type}) alone: {err}"
            ) from err
        ops.append(OpTiming(i, op_type, dtype, bool(inside), ms))
    overhead = min(o.median_ms for o in ops)
    return OpProfileReport(
        method=METHOD,
        method_text=METHOD_TEXT,
        ops=ops,
        partitions=partitions,
        model_median_ms=model_median_ms,
        invoke_overhead_ms=overhead,
    )
