"""Verification of a TFLite model against the Keras model it came from.

For every produced file: max/mean abs logit error vs Keras, top-1 agreement, top-1 accuracy vs
labels when labels exist, and the accuracy drop vs the float Keras model. Float32 must match
Keras to `FLOAT32_MAX_ABS` (1e-4); quantized modes fail only beyond `max_accuracy_drop` points.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from elasticvit_tf.export.tflite import QuantMode

__all__ = [
    "FLOAT32_MAX_ABS",
    "VerificationError",
    "VerificationResult",
    "run_tflite",
    "keras_logits",
    "compare",
    "verify",
]

# NOTE: the contract (DESIGN/issue 5): float32 TFLite matches Keras to <= 1e-4 max abs logits.
FLOAT32_MAX_ABS = 1e-4


class VerificationError(RuntimeError):
    """A converted model failed verification."""


@dataclasses.dataclass
class VerificationResult:
    """Agreement of one TFLite model with its Keras source (accuracies in percent).

    Attributes:
        mode: quantization mode name.
        num_images: images compared.
        max_abs_error / mean_abs_error: logit errors vs Keras (dequantized for int8 output).
        top1_agreement: percent of images where TFLite and Keras top-1 agree.
        accuracy / keras_accuracy: top-1 vs labels (None without labels).
        accuracy_drop: keras_accuracy - accuracy in points (None without labels).
        passed: whether the mode's criterion holds; reason: why not (empty when passed).
        criterion: the criterion applied, in words.
    """

    mode: str
    num_images: int
    max_abs_error: float
    mean_abs_error: float
    top1_agreement: float
    accuracy: float | None
    keras_accuracy: float | None
    accuracy_drop: float | None
    passed: bool
    reason: str
    criterion: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if not np.issubdtype(dtype, np.integer):
        return x.astype(dtype)
    scale, zero = detail["quantization"]
    if scale == 0:
        raise ValueError("Integer input tensor without quantization parameters.")
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if not np.issubdtype(np.dtype(detail["dtype"]), np.integer):
        return y.astype(np.float32)
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def run_tflite(
    tflite: "bytes | str | os.PathLike",
    images: np.ndarray,
    num_threads: int = 1,
    batch_size: int = 32,
    fresh_process: bool = False,
) -> np.ndarray:
    """Runs a single-input, single-output TFLite model with LiteRT on float images.

    Integer-I/O models get quantized inputs and dequantized outputs, so the result is always
    float logits comparable with Keras.

    Args:
        tflite: flatbuffer bytes or path.
        images: float array `(N, H, W, C)`.
        num_threads: LiteRT threads.
        batch_size: images per invoke when the model has a dynamic batch dimension.
        fresh_process: run in a fresh process that loads LiteRT only (`fresh_process.py`:
            a crash of the runtime raises FreshProcessError instead of ending this process).

    Returns:
        float32 array `(N, num_outputs)`.
    """
    if fresh_process:
        from elasticvit_tf.export import fresh_process as fresh

        return fresh.call(
            __name__,
            "run_tflite",
            tflite=tflite,
            images=images,
            num_threads=num_threads,
            batch_size=batch_size,
        )
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(tflite, (str, os.PathLike)):
        with open(tflite, "rb") as f:
            tflite = f.read()
    images = np.asarray(images, dtype=np.float32)
    interp = Interpreter(model_content=bytes(tflite), num_threads=num_threads)
    inp = interp.get_input_details()
    if len(inp) != 1:
        raise ValueError(f"Expected a single-input model; it has {len(inp)} inputs.")
    inp = inp[0]
    if tuple(inp["shape"][1:]) != tuple(images.shape[1:]):
        raise ValueError(
            f"Images have shape {images.shape[1:]}; the TFLite model expects "
            f"{tuple(int(s) for s in inp['shape'][1:])}."
        )
    dynamic = int(inp["shape_signature"][0]) == -1
    step = batch_size if dynamic else int(inp["shape"][0])
    outs = []
    current = None
    for start in range(0, len(images), step):
        chunk = images[start : start + step]
        n = len(chunk)
        if dynamic:
            if current != n:
                interp.resize_tensor_input(inp["index"], [n, *images.shape[1:]])
                interp.allocate_tensors()
                current = n
        else:
            if current is None:
                interp.allocate_tensors()
                current = step
            if n < step:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - n, axis=0)])
        interp.set_tensor(inp["index"], _quantize(chunk, inp))
        interp.invoke()
        out = interp.get_output_details()[0]
        outs.append(_dequantize(interp.get_tensor(out["index"]), out)[:n])
    return np.concatenate(outs).reshape(len(images), -1)


def keras_logits(model: Any, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Keras model outputs in inference mode, as float32 `(N, K)`.

    One traced function over fixed-size batches (the last one zero-padded; inference-mode
    outputs of one image do not depend on the others): eager calls cost ~30 s on 10 000
    Fashion-MNIST images on 2 CPU cores, this path a few seconds.
    """
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False), jit_compile=False)
    n = len(images)
    size = min(batch_size, n)
    outs = []
    for i in range(0, n, size):
        chunk = np.asarray(images[i : i + size], dtype=np.float32)
        k = len(chunk)
        if k < size:
            chunk = np.concatenate([chunk, np.zeros((size - k, *chunk.shape[1:]), np.float32)])
        outs.append(np.asarray(fn(chunk), dtype=np.float32).reshape(size, -1)[:k])
    return np.concatenate(outs).reshape(n, -1)


def compare(
    reference: np.ndarray,
    candidate: np.ndarray,
    labels: np.ndarray | None = None,
    mode: "QuantMode | str" = QuantMode.FLOAT32,
    max_accuracy_drop: float = 1.0,
    float32_max_abs: float = FLOAT32_MAX_ABS,
) -> VerificationResult:
    """Compares candidate logits with reference (Keras) logits; applies the mode's criterion.

    Criteria: float32: max abs error <= `float32_max_abs`. Other modes: with labels, the top-1
    accuracy drop vs Keras <= `max_accuracy_drop` points; without labels, the top-1
    disagreement with Keras (100 - agreement) <= `max_accuracy_drop` points, a stricter proxy.
    """
    mode = QuantMode.parse(mode)
    reference = np.asarray(reference, dtype=np.float32)
    candidate = np.asarray(candidate, dtype=np.float32)
    if reference.shape != candidate.shape:
        raise ValueError(
            f"Logit shapes differ: Keras {reference.shape} vs TFLite {candidate.shape}."
        )
    diff = np.abs(reference - candidate)
    agree = float(np.mean(reference.argmax(-1) == candidate.argmax(-1)) * 100.0)
    acc = keras_acc = drop = None
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(reference):
            raise ValueError(f"{len(labels)} labels for {len(reference)} images.")
        acc = float(np.mean(candidate.argmax(-1) == labels) * 100.0)
        keras_acc = float(np.mean(reference.argmax(-1) == labels) * 100.0)
        drop = keras_acc - acc
    max_abs = float(diff.max()) if diff.size else 0.0
    if not np.isfinite(candidate).all():
        passed, reason = False, "TFLite output contains NaN or Inf."
        criterion = "finite outputs"
    elif mode is QuantMode.FLOAT32:
        criterion = f"max abs logit error <= {float32_max_abs:g}"
        passed = max_abs <= float32_max_abs
        reason = "" if passed else f"max abs logit error {max_abs:.3g} > {float32_max_abs:g}"
    elif drop is not None:
        criterion = f"top-1 accuracy drop <= {max_accuracy_drop:g} points"
        passed = drop <= max_accuracy_drop
        reason = "" if passed else f"top-1 accuracy drop {drop:.2f} > {max_accuracy_drop:g} points"
    else:
        criterion = f"top-1 disagreement with Keras <= {max_accuracy_drop:g} points (no labels)"
        passed = 100.0 - agree <= max_accuracy_drop
        reason = (
            ""
            if passed
            else f"top-1 disagreement {100.0 - agree:.2f} > {max_accuracy_drop:g} points"
        )
    return VerificationResult(
        mode=mode.value,
        num_images=len(reference),
        max_abs_error=max_abs,
        mean_abs_error=float(diff.mean()) if diff.size else 0.0,
        top1_agreement=agree,
        accuracy=acc,
        keras_accuracy=keras_acc,
        accuracy_drop=drop,
        passed=bool(passed),
        reason=reason,
        criterion=criterion,
    )


def verify(
    tflite: "bytes | str | os.PathLike",
    reference_logits: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    mode: "QuantMode | str" = QuantMode.FLOAT32,
    max_accuracy_drop: float = 1.0,
    num_threads: int = 1,
    raise_on_failure: bool = True,
    fresh_process: bool = False,
) -> VerificationResult:
    """Runs `tflite` on `images` (`run_tflite`, `fresh_process`) and compares with
    `reference_logits` (see `compare`).

    Raises:
        VerificationError: if the criterion fails and `raise_on_failure`.
    """
    candidate = run_tflite(tflite, images, num_threads=num_threads, fresh_process=fresh_process)
    result = compare(
        reference_logits, candidate, labels=labels, mode=mode, max_accuracy_drop=max_accuracy_drop
    )
    if raise_on_failure and not result.passed:
        raise VerificationError(
            f"Verification of the {result.mode} TFLite model failed: {result.reason} "
            f"(criterion: {result.criterion}; {result.num_images} images)."
        )
    return result
