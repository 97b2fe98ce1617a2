"""TFLite conversion per quantization mode, builtin ops only.

`configure_converter` is the ONE place that maps a `QuantMode` to converter settings; both the main
process (Keras 3 models, `convert`) and the QAT worker (tf_keras models) call it, so every mode is
converted the same way everywhere.

Measured facts this module relies on (docs/design.md#measured-decisions): convert with
`TFLiteConverter.from_keras_model` (never `from_concrete_functions`, which produced NaNs); builtin
ops only; int16x8 fails on HARD_SWISH, so it is not offered.

This module imports only TensorFlow (not Keras), so it is safe to import from the legacy-Keras QAT
worker process.
"""

from __future__ import annotations

import contextlib
import enum
import io
import itertools
import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

__all__ = [
    "QuantMode",
    "FlexOpError",
    "parse_modes",
    "configure_converter",
    "convert",
    "list_ops",
    "check_builtin_only",
    "make_representative_dataset",
    "INT8_FLOAT_OPS",
    "check_float_ops",
    "float_op_types",
]

# The shipped `int8` recipe (docs/design.md#measured-decisions): int8 weights and activations
# everywhere except these op types, which stay float islands (DEQUANTIZE -> float op ->
# QUANTIZE). A fixed rule by op type, measured on LiteRT 2.3.0 / XNNPACK (x86, 1 thread):
# their int8 kernels run outside the XNNPACK delegate on slow builtin kernels (int8
# HARD_SWISH alone took 47 % of ElasticViT-S1's time, BATCH_MATMUL 19 %; each split the
# delegate: 89 partitions), while in float XNNPACK runs them in its single partition. The
# LayerNorm statistics (MEAN, SQUARED_DIFFERENCE, RSQRT, SUB) stay float with them.
INT8_FLOAT_OPS = (
    "HARD_SWISH",
    "BATCH_MATMUL",
    "SOFTMAX",
    "SQUARED_DIFFERENCE",
    "RSQRT",
    "SUB",
    "MEAN",
)


class QuantMode(str, enum.Enum):
    """Quantization modes of an exported model.

    Values are the strings accepted by `--quantize`.
    """

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    DYNAMIC = "dynamic"
    INT8 = "int8"
    INT8_FULL = "int8_full"
    QAT = "qat"

    @classmethod
    def parse(cls, value: "str | QuantMode") -> "QuantMode":
        """Returns the mode named `value`; raises ValueError naming the valid modes."""
        if isinstance(value, QuantMode):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise ValueError(
                f"Unknown quantization mode {value!r}; expected one of "
                f"{[m.value for m in cls]}."
            ) from None

    @property
    def needs_representative_data(self) -> bool:
        """Whether conversion needs a representative dataset (full-integer modes)."""
        return self in (QuantMode.INT8, QuantMode.INT8_FULL, QuantMode.QAT)

    @property
    def file_name(self) -> str:
        """Canonical file name of this mode's model in an export directory."""
        return f"model_{self.value}.tflite"


def parse_modes(value: "str | Iterable[str]") -> list[QuantMode]:
    """Parses a comma list (or an iterable) of mode names, keeping order, dropping duplicates."""
    items = value.split(",") if isinstance(value, str) else list(value)
    modes: list[QuantMode] = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        mode = QuantMode.parse(item)
        if mode not in modes:
            modes.append(mode)
    if not modes:
        raise ValueError(f"No quantization mode given in {value!r}.")
    return modes


class FlexOpError(RuntimeError):
    """A converted model contains select-TF (Flex) or other custom ops."""


_INT8_IO_CHOICES = ("float", "int8")


def make_representative_dataset(
    samples: Any, steps: int | None = None, input_shape: tuple[int, ...] | None = None
) -> Callable[[], Iterable[list[np.ndarray]]]:
    """Wraps samples into the zero-argument generator factory the converter wants.

    Args:
        samples: a callable returning an iterable (already a converter-style factory), an
            iterable of image batches (numpy arrays or tensors, `(N, H, W, C)`), or a
            `tf.data.Dataset` yielding images or `(images, labels)`.
        steps: maximum number of single images to yield (None: all).
        input_shape: if given, the per-image shape (H, W, C) every sample must have.

    Returns:
        A callable returning a generator of `[float32 array of shape (1, H, W, C)]`.

    Raises:
        ValueError: if `samples` is None or yields nothing, or a sample has the wrong shape.
    """
    if samples is None:
        raise ValueError(
            "Full-integer quantization needs a representative dataset (training images); "
            "received None."
        )

    def _images() -> Iterable[np.ndarray]:
        source = samples() if callable(samples) else samples
        for item in source:
            if isinstance(item, (tuple, list)) and len(item) and not np.isscalar(item[0]):
                item = item[0]
            batch = np.asarray(item, dtype=np.float32)
            if input_shape is not None and batch.ndim == len(input_shape):
                batch = batch[None]
            for image in batch:
                if input_shape is not None and tuple(image.shape) != tuple(input_shape):
                    raise ValueError(
                        f"Representative sample has shape {tuple(image.shape)}; expected "
                        f"{tuple(input_shape)} (the model's fixed input)."
                    )
                yield image

    def _gen() -> Iterable[list[np.ndarray]]:
        count = 0
        for image in itertools.islice(_images(), steps):
            count += 1
            yield [image[None]]
        if count == 0:
            raise ValueError("The representative dataset yielded no images; expected at least 1.")

    return _gen


def configure_converter(
    converter: Any,
    mode: "QuantMode | str",
    representative_dataset: Callable[[], Iterable[list[np.ndarray]]] | None = None,
    int8_io: str = "float",
) -> None:
    """Applies `mode`'s settings to a `tf.lite.TFLiteConverter`, builtin ops only.

    Modes:
        float32: no optimization.
        float16: float16 weights (dequantized at load time on CPU).
        dynamic: dynamic-range int8 weights, float activations.
        int8: the shipped mixed recipe (needs `representative_dataset`): int8 weights and
            activations except the op types of `INT8_FLOAT_OPS`, kept float (applied by
            `convert`, which quantizes the calibrated model with that deny-list);
            `int8_io="int8"` also makes the input/output tensors int8.
        int8_full: every op in int8 (the converter's plain full-integer quantization).
        qat: a model holding fake-quant nodes from quantization-aware training; converted as
            full-integer int8 like `int8` (the representative dataset is optional, it only
            calibrates tensors the QAT annotation left in float).

    Args:
        converter: the converter to configure in place.
        mode: a `QuantMode` or its name.
        representative_dataset: zero-argument generator factory, see
            `make_representative_dataset`.
        int8_io: "float" or "int8"; only used by the full-integer modes.

    Raises:
        ValueError: unknown mode or `int8_io`, or missing representative data for `int8`.
    """
    import tensorflow as tf

    mode = QuantMode.parse(mode)
    if int8_io not in _INT8_IO_CHOICES:
        raise ValueError(f"int8_io must be one of {_INT8_IO_CHOICES}; received {int8_io!r}.")
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = False
    if mode is QuantMode.FLOAT32:
        converter.optimizations = []
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode is QuantMode.FLOAT16:
        converter.target_spec.supported_types = [tf.float16]
        return
    if mode is QuantMode.DYNAMIC:
        return
    # Full-integer modes.
    if mode in (QuantMode.INT8, QuantMode.INT8_FULL) and representative_dataset is None:
        raise ValueError(
            f"Quantization mode {mode.value!r} needs a representative dataset from the training "
            "split; received none."
        )
    if representative_dataset is not None:
        converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if int8_io == "int8":
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8


def convert(
    keras_model: Any,
    mode: "QuantMode | str" = QuantMode.FLOAT32,
    representative_dataset: Any = None,
    int8_io: str = "float",
    representative_steps: int | None = 100,
    batch_size: int | None = None,
    float_ops: "Iterable[str] | None" = None,
) -> bytes:
    """Converts a Keras model to a TFLite flatbuffer with builtin ops only.

    Args:
        keras_model: a Keras 3 (or, in the QAT worker, tf_keras) model with a fixed input shape
            `(None, H, W, C)`.
        mode: quantization mode (`QuantMode` or its name).
        representative_dataset: for full-integer modes: anything `make_representative_dataset`
            accepts (a converter-style factory, image batches, a tf.data.Dataset).
        int8_io: "float" or "int8" input/output tensors for full-integer modes.
        representative_steps: maximum representative images used for calibration.
        float_ops: `int8` only: the op types kept float (default `INT8_FLOAT_OPS`; `()` gives
            the all-int8 model of `int8_full`). Names are TFLite builtin op names.
        batch_size: None keeps the batch dimension dynamic (`-1`); an int fixes it. A fixed
            batch is what phones run: with a dynamic batch every reshape carries a
            SHAPE/GATHER/REDUCE_PROD/PACK chain (measured on a demo subnet: 77 vs 31
            RESHAPEs, +15 % latency on XNNPACK, 1 thread).

    Returns:
        The `.tflite` flatbuffer bytes.

    Raises:
        ValueError: bad mode / int8_io / missing representative data.
        FlexOpError: if the converted model needs select-TF (Flex) or custom ops.
    """
    import tensorflow as tf

    mode = QuantMode.parse(mode)
    if float_ops is not None and mode is not QuantMode.INT8:
        raise ValueError(f"float_ops applies to mode 'int8' only; received mode {mode.value!r}.")
    deny = check_float_ops(INT8_FLOAT_OPS if float_ops is None else float_ops)
    rep = None
    if representative_dataset is not None:
        input_shape = tuple(int(d) for d in keras_model.inputs[0].shape[1:])
        rep = make_representative_dataset(
            representative_dataset, steps=representative_steps, input_shape=input_shape
        )
    if batch_size is None:
        converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    else:
        converter = _fixed_batch_converter(keras_model, int(batch_size))
    configure_converter(converter, mode, representative_dataset=rep, int8_io=int8_io)
    two_step = mode is QuantMode.INT8
    if two_step:
        # Calibrate only; floor the degenerate ranges, then quantize with the deny-list (what
        # QuantizationDebugger does; an empty deny-list is the converter's own int8 path).
        converter.experimental_mlir_quantizer = True
        converter._experimental_calibrate_only = True
    try:
        # Keras 3's SavedModel export prints the endpoint signature on stdout; keep it quiet.
        with contextlib.redirect_stdout(io.StringIO()):
            tflite_bytes = converter.convert()
            if two_step:
                tflite_bytes = _quantize_with_float_ops(
                    floor_calibrated_ranges(tflite_bytes), deny, int8_io
                )
    except Exception as err:  # The converter raises ConverterError with the MLIR diagnostics.
        msg = str(err)
        if "Flex" in msg or "select TensorFlow op" in msg or "SELECT_TF_OPS" in msg:
            raise FlexOpError(
                f"Mode {mode.value!r}: the model needs ops outside the TFLite builtin set "
                f"(select-TF/Flex), which this export refuses:\n{msg}"
            ) from err
        raise
    check_builtin_only(tflite_bytes)
    return bytes(tflite_bytes)


REQUANT_LIMIT = 128.0  # XNNPACK refuses int8 ops whose requantization scale is >= 256
_WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def floor_calibrated_ranges(calibrated: bytes) -> bytes:
    """Widens the calibrated output range of an op where int8 would need a requantization
    scale above ``REQUANT_LIMIT``: a conv / dense output under ``in_range * max|w| /
    (127 * REQUANT_LIMIT)``, an ADD / SUB output under ``max input range / REQUANT_LIMIT``, a
    MUL output under ``a_range * b_range / (255 * REQUANT_LIMIT)`` (ranges include 0, as int8
    activations do). Ops processed in graph order, so a widened tensor is seen by its consumers.

    NOTE: a ReLU conv whose outputs are all negative on the calibration images (an untrained
    squeeze-excite reduce, a dead layer) is calibrated to [0, 1e-38]; its int8 output scale is
    then ~1e-8 and the requantization scale ~300. XNNPACK cannot build such an op, and LiteRT's
    XNNPACK delegate then frees one block twice while it cleans up (``xnn_create_runtime_v4``
    fails, ``xnn_delete_runtime`` and ``xnn_delete_subgraph`` both free it): the process aborts
    with "double free or corruption" (measured on a tiny-space int8 export). The widened range
    still holds every calibrated value; it is only coarser, where the values are ~0 anyway.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    codes = _code_names(*_read_model(calibrated))
    model = schema.ModelT.InitFromPackedBuf(bytearray(calibrated), 0)
    changed = False
    for sub in model.subgraphs or []:
        tensors = sub.tensors

        def span(t: int) -> "float | None":
            q = tensors[t].quantization if t >= 0 else None
            if q is None or q.min is None or q.max is None or len(q.min) != 1:
                return None
            return float(max(q.max[0], 0.0) - min(q.min[0], 0.0))

        for op in sub.operators or []:
            name = codes[op.opcodeIndex]
            ins = [int(t) for t in op.inputs]
            if not op.outputs or span(int(op.outputs[0])) is None:
                continue
            spans = [span(t) for t in ins]
            need = 0.0
            if name in _WEIGHTED_OPS and len(ins) > 1 and spans[0] is not None:
                data = model.buffers[tensors[ins[1]].buffer].data
                if data is not None and len(data):
                    w = np.frombuffer(np.asarray(data, np.uint8).tobytes(), np.float32)
                    need = spans[0] * float(np.max(np.abs(w))) / (127.0 * REQUANT_LIMIT)
            elif name in ("ADD", "SUB") and None not in spans:
                need = max(spans) / REQUANT_LIMIT
            elif name == "MUL" and len(spans) == 2 and None not in spans:
                need = spans[0] * spans[1] / (255.0 * REQUANT_LIMIT)
            out = tensors[int(op.outputs[0])].quantization
            lo, hi = min(float(out.min[0]), 0.0), max(float(out.max[0]), 0.0)
            if hi - lo < need:
                if hi > 0.0 or lo == 0.0:
                    hi = lo + need
                else:
                    lo = hi - need
                out.min, out.max = [np.float32(lo)], [np.float32(hi)]
                changed = True
    if not changed:
        return calibrated
    builder = flatbuffers.Builder(len(calibrated) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _quantize_with_float_ops(calibrated: bytes, float_ops: list[str], int8_io: str) -> bytes:
    """Quantizes a calibrated model as the converter's default int8 path does, except for
    the op types `float_ops` (TensorFlow's `mlir_quantize` deny-list)."""
    import tensorflow as tf
    from tensorflow.lite.python import convert as tf_convert

    io_type = tf.int8 if int8_io == "int8" else tf.float32
    return tf_convert.mlir_quantize(
        calibrated,
        disable_per_channel=False,
        input_data_type=io_type,
        output_data_type=io_type,
        denylisted_ops=list(float_ops),
    )


def _builtin_op_names() -> set[str]:
    from ai_edge_litert import schema_py_generated as schema

    return {k for k in vars(schema.BuiltinOperator) if not k.startswith("_")}


def check_float_ops(names: "Iterable[str] | str") -> list[str]:
    """Validates a deny-list of op types kept float; returns it upper-cased, without duplicates.

    Raises:
        ValueError: a name that is no TFLite builtin op (names it and gives examples).
    """
    items = names.split(",") if isinstance(names, str) else list(names)
    out = [str(n).strip().upper() for n in items if str(n).strip()]
    known = _builtin_op_names()
    bad = [n for n in out if n not in known]
    if bad:
        raise ValueError(
            f"Unknown TFLite op type(s) {bad} in the float op list; expected builtin op names "
            f"such as {list(INT8_FLOAT_OPS)}."
        )
    return list(dict.fromkeys(out))


def float_op_types(tflite: "bytes | str | os.PathLike") -> dict[str, int]:
    """`{op type: count}` of the ops computing in float32 (first output float32), without the
    DEQUANTIZE ops that open float islands."""
    schema, model = _read_model(tflite)
    codes = _code_names(schema, model)
    out: dict[str, int] = {}
    for s in range(model.SubgraphsLength()):
        sub = model.Subgraphs(s)
        for i in range(sub.OperatorsLength()):
            op = sub.Operators(i)
            name = codes[op.OpcodeIndex()]
            if name == "DEQUANTIZE" or op.OutputsLength() == 0:
                continue
            if sub.Tensors(op.Outputs(0)).Type() == schema.TensorType.FLOAT32:
                out[name] = out.get(name, 0) + 1
    return out


def fixed_batch_module(keras_model: Any, batch_size: int = 1) -> Any:
    """A bare `tf.Module` holding `keras_model`'s variables and one traced signature, `serve`,
    at input shape `(batch_size, H, W, C)`: the graph `from_keras_model` converts, with the
    batch dimension fixed and without Keras' per-layer SavedModel tracing."""
    import tensorflow as tf

    if isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (or None for dynamic); received {batch_size}.")
    inp = keras_model.inputs[0]
    shape = (int(batch_size), *(int(d) for d in inp.shape[1:]))
    module = tf.Module()
    module.variables_ = [getattr(v, "value", v) for v in keras_model.variables]
    name = (getattr(inp, "name", None) or "input").split(":")[0]
    module.serve = tf.function(
        lambda x: keras_model(x, training=False),
        input_signature=[tf.TensorSpec(shape, tf.float32, name=name)],
        autograph=False,
    )
    return module


def _fixed_batch_converter(keras_model: Any, batch_size: int) -> Any:
    """A converter of `keras_model` traced at input shape `(batch_size, H, W, C)`."""
    import tensorflow as tf

    module = fixed_batch_module(keras_model, batch_size)
    return tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module
    )


def input_shape_signature(tflite: bytes) -> list[int]:
    """The first input's shape signature of a flatbuffer (`-1` marks a dynamic dimension)."""
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_content=bytes(tflite)).get_input_details()[0]
    return [int(d) for d in details["shape_signature"]]


def _read_model(tflite: "bytes | str"):
    from ai_edge_litert import schema_py_generated as schema

    if isinstance(tflite, (str, os.PathLike)):
        with open(tflite, "rb") as f:
            tflite = f.read()
    buf = bytearray(tflite)
    if not schema.Model.ModelBufferHasIdentifier(buf, 0):
        raise ValueError("Not a TFLite flatbuffer (missing the 'TFL3' identifier).")
    return schema, schema.Model.GetRootAs(buf, 0)


def _code_names(schema, model) -> list[str]:
    """The op name of every operator code of a flatbuffer (`CUSTOM:<code>` for custom ops)."""
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    code_names = []
    for j in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(j)
        # NOTE: the schema keeps a deprecated int8 field for codes < 127; the real code is the max.
        code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
        if code == schema.BuiltinOperator.CUSTOM:
            custom = oc.CustomCode()
            custom = custom.decode() if isinstance(custom, bytes) else str(custom)
            code_names.append(f"CUSTOM:{custom}")
        else:
            code_names.append(names.get(code, f"BUILTIN_{code}"))
    return code_names


def list_ops(tflite: "bytes | str | os.PathLike") -> dict[str, int]:
    """Counts the operators of a TFLite model by name (builtin name, or the custom code).

    Args:
        tflite: flatbuffer bytes or a path to a `.tflite` file.

    Returns:
        `{op_name: count}` over all subgraphs; custom ops appear as `CUSTOM:<code>`.
    """
    schema, model = _read_model(tflite)
    code_names = _code_names(schema, model)
    counts: dict[str, int] = {}
    for s in range(model.SubgraphsLength()):
        sub = model.Subgraphs(s)
        for i in range(sub.OperatorsLength()):
            name = code_names[sub.Operators(i).OpcodeIndex()]
            counts[name] = counts.get(name, 0) + 1
    return counts


def check_builtin_only(tflite: "bytes | str") -> dict[str, int]:
    """Raises FlexOpError if the model holds Flex (select-TF) or other custom ops.

    Returns:
        The op counts from `list_ops`.
    """
    counts = list_ops(tflite)
    custom = sorted(name for name in counts if name.startswith("CUSTOM:"))
    if custom:
        flex = [c for c in custom if c.startswith("CUSTOM:Flex")]
        kind = "select-TF (Flex)" if flex else "custom"
        raise FlexOpError(
            f"The TFLite model contains {kind} ops {custom}; expected builtin ops only."
        )
    return counts
