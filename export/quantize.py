"""Post-training quantization helpers and the QAT orchestration (QAT runs in a subprocess).

PTQ itself happens in the converter (`export/tflite.py::configure_converter`); this module
gathers the representative images from the training split and, for `qat`, prepares a work
directory for `export/qat_worker.py` and runs it with `TF_USE_LEGACY_KERAS=1` in a separate
Python process, so that tf_keras / tensorflow-model-optimization never load here
(docs/design.md#measured-decisions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

import numpy as np

__all__ = [
    "RepresentativeDataError",
    "QATError",
    "collect_images",
    "save_model_for_worker",
    "run_qat",
]


class RepresentativeDataError(ValueError):
    """No usable representative / calibration data."""


class QATError(RuntimeError):
    """The QAT worker process failed."""


def collect_images(
    dataset: Any, num_images: int, with_labels: bool = False, what: str = "representative data"
) -> "np.ndarray | tuple[np.ndarray, np.ndarray]":
    """Takes up to `num_images` images (and labels) from batches of `(images, labels)` or images.

    Args:
        dataset: a `tf.data.Dataset` or any iterable of batches; a batch is `(images, labels)`
            or images alone.
        num_images: how many images to take (>= 1).
        with_labels: also return the labels (error if the batches hold none).
        what: what the images are for, used in error messages.

    Returns:
        float32 images `(N, H, W, C)` (N <= num_images), plus int labels `(N,)` if `with_labels`.

    Raises:
        RepresentativeDataError: `dataset` is None or yields no images, or lacks labels.
    """
    if dataset is None:
        raise RepresentativeDataError(
            f"No {what}: expected a dataset of training images, received None."
        )
    if int(num_images) < 1:
        raise ValueError(f"num_images must be >= 1; received {num_images}.")
    xs, ys, n = [], [], 0
    for batch in dataset:
        labels = None
        if isinstance(batch, (tuple, list)):
            images = batch[0]
            labels = batch[1] if len(batch) > 1 else None
        elif isinstance(batch, dict):
            images, labels = batch.get("image"), batch.get("label")
        else:
            images = batch
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 3:
            images = images[None]
            labels = None if labels is None else np.asarray(labels).reshape(1)
        if with_labels and labels is None:
            raise RepresentativeDataError(f"{what} needs labels; the dataset yields images only.")
        take = min(len(images), int(num_images) - n)
        xs.append(images[:take])
        if with_labels:
            ys.append(np.asarray(labels).reshape(-1)[:take].astype(np.int64))
        n += take
        if n >= num_images:
            break
    if n == 0:
        raise RepresentativeDataError(f"No {what}: the dataset yielded no images.")
    images = np.concatenate(xs)
    return (images, np.concatenate(ys)) if with_labels else images


def save_model_for_worker(model: Any, workdir: str) -> None:
    """Writes `model.json` (functional config) and `weights.npz` (per-layer numpy weights)."""
    config = model.get_config()
    if "layers" not in config:
        raise ValueError(
            f"QAT needs a functional Keras model; received {type(model).__name__} without a "
            "layer graph config."
        )
    with open(os.path.join(workdir, "model.json"), "w") as f:
        json.dump(config, f, default=_json_default)
    arrays = {}
    for layer in model.layers:
        for i, w in enumerate(layer.get_weights()):
            arrays[f"{layer.name}/{i}"] = np.asarray(w)
    np.savez(os.path.join(workdir, "weights.npz"), **arrays)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"Cannot serialize {type(obj).__name__} in a model config.")


def run_qat(
    model: Any,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    representative_images: np.ndarray,
    steps: int = 100,
    batch_size: int = 16,
    learning_rate: float = 1e-4,
    int8_io: str = "float",
    seed: int = 0,
    timeout_s: float = 3600.0,
    workdir: str | None = None,
    eval_images: np.ndarray | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """Quantization-aware fine-tuning + int8 conversion in a separate legacy-Keras process.

    Args:
        model: the extracted (Keras 3 functional) float model.
        train_images, train_labels: fine-tuning data (the worker samples `batch_size` per step).
        representative_images: calibration images for tensors QAT leaves in float.
        steps: fine-tuning steps (>= 0).
        batch_size, learning_rate, seed: fine-tuning settings.
        int8_io: "float" or "int8" model input/output.
        timeout_s: kill the worker after this long.
        workdir: where to write the exchange files (a temp dir, removed, when None).
        eval_images: optional images; the log then holds `float_rebuild_logits`, the outputs
            of the worker's float tf_keras rebuild (to check the rebuild against Keras).

    Returns:
        (tflite bytes, worker log dict with the losses, op counts and seconds).

    Raises:
        RepresentativeDataError: empty training data.
        QATError: the worker failed (its stderr tail is in the message) or timed out.
    """
    if train_images is None or len(train_images) == 0:
        raise RepresentativeDataError("QAT needs training images; received none.")
    if len(train_images) != len(train_labels):
        raise ValueError(f"{len(train_images)} training images but {len(train_labels)} labels.")
    if int(steps) < 0:
        raise ValueError(f"qat_steps must be >= 0; received {steps}.")
    with tempfile.TemporaryDirectory(prefix="qat_") as tmp:
        wd = workdir or tmp
        os.makedirs(wd, exist_ok=True)
        save_model_for_worker(model, wd)
        arrays = dict(
            train_x=np.asarray(train_images, np.float32),
            train_y=np.asarray(train_labels, np.int64),
            rep_x=np.asarray(representative_images, np.float32),
        )
        if eval_images is not None:
            arrays["eval_x"] = np.asarray(eval_images, np.float32)
        np.savez(os.path.join(wd, "data.npz"), **arrays)
        with open(os.path.join(wd, "options.json"), "w") as f:
            json.dump(
                {
                    "steps": int(steps),
                    "batch_size": int(batch_size),
                    "learning_rate": float(learning_rate),
                    "int8_io": int8_io,
                    "seed": int(seed),
                },
                f,
            )
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        cmd = [sys.executable, "-m", "elasticvit_tf.export.qat_worker", "--workdir", wd]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as err:
            raise QATError(f"QAT worker timed out after {timeout_s:.0f} s.") from err
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise QATError(f"QAT worker failed (exit code {proc.returncode}):\n{tail}")
        with open(os.path.join(wd, "model_qat.tflite"), "rb") as f:
            tflite_bytes = f.read()
        with open(os.path.join(wd, "qat_log.json")) as f:
            log = json.load(f)
    return tflite_bytes, log
