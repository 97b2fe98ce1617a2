"""Quantization-aware training worker: a separate, legacy-Keras process.

tensorflow-model-optimization only accepts tf_keras models and importing it flips the process to
legacy Keras (docs/design.md#measured-decisions), so QAT never runs in the main process.
`export/quantize.py::run_qat` writes a work directory and starts
`python -m elasticvit_tf.export.qat_worker --workdir DIR`:

    DIR/model.json      the Keras 3 functional model config (`model.get_config()`)
    DIR/weights.npz     `"<layer name>/<i>"` -> i-th weight of that layer (`layer.get_weights()`)
    DIR/data.npz        train_x, train_y (fine-tuning batches), rep_x (calibration images),
                        eval_x (optional: images the float tf_keras rebuild is run on, for checking)
    DIR/options.json    {"steps", "batch_size", "learning_rate", "int8_io", "seed"}

It rebuilds the graph layer by layer in tf_keras (standard layers by class name, Keras 3 ops and
the project's two custom layers by small tf_keras twins), loads the numpy weights, annotates
Conv2D / DepthwiseConv2D / Dense with `quantize_annotate_layer` (everything else stays float),
fine-tunes `steps` steps, converts with `export.tflite.configure_converter("qat")` and writes
DIR/model_qat.tflite and DIR/qat_log.json.
"""

from __future__ import annotations

import os

# Must be set before TensorFlow is imported: tf.keras -> tf_keras in this process.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

QUANTIZED_CLASSES = ("Conv2D", "DepthwiseConv2D", "Dense")

# Keras 3 layer config keys that tf_keras layers accept, per class (weights come from the npz,
# so initializers / regularizers / constraints are dropped).
_KEEP = {
    "Conv2D": (
        "filters",
        "kernel_size",
        "strides",
        "padding",
        "dilation_rate",
        "groups",
        "use_bias",
    ),
    "DepthwiseConv2D": (
        "kernel_size",
        "strides",
        "padding",
        "depth_multiplier",
        "dilation_rate",
        "use_bias",
    ),
    "Dense": ("units", "use_bias"),
    "BatchNormalization": ("axis", "momentum", "epsilon", "center", "scale"),
    "LayerNormalization": ("axis", "epsilon", "center", "scale"),
    "Reshape": ("target_shape",),
    "Permute": ("dims",),
    "Flatten": (),
    "Dropout": ("rate",),
    "ZeroPadding2D": ("padding",),
    "AveragePooling2D": ("pool_size", "strides", "padding"),
    "MaxPooling2D": ("pool_size", "strides", "padding"),
    "GlobalAveragePooling1D": ("keepdims",),
    "GlobalAveragePooling2D": ("keepdims",),
    "Add": (),
    "Multiply": (),
    "Subtract": (),
    "Concatenate": ("axis",),
    "Softmax": ("axis",),
    "ReLU": ("max_value", "negative_slope", "threshold"),
    "Identity": (),
}


def _tf():
    import tensorflow as tf

    return tf


def _activation_fn(name: str):
    tf = _tf()
    fns = {
        "linear": lambda x: x,
        "relu": tf.nn.relu,
        "relu6": tf.nn.relu6,
        "sigmoid": tf.sigmoid,
        "hard_sigmoid": lambda x: tf.nn.relu6(x + 3.0) / 6.0,
        "hard_silu": lambda x: x * tf.nn.relu6(x + 3.0) / 6.0,
        "hard_swish": lambda x: x * tf.nn.relu6(x + 3.0) / 6.0,
        "silu": tf.nn.silu,
        "swish": tf.nn.silu,
        "gelu": lambda x: tf.nn.gelu(x, approximate=False),
        "tanh": tf.tanh,
        "softmax": tf.nn.softmax,
    }
    if name not in fns:
        raise ValueError(f"QAT rebuild: unsupported activation {name!r}; expected {sorted(fns)}.")
    return fns[name]


def _custom_layers() -> dict[str, Any]:
    """tf_keras twins of Keras 3 ops and of the project's custom layers (serializable)."""
    import tf_keras

    tf = _tf()
    # TensorFlow-only maths shared with the Keras 3 layers (no Keras 3 import)
    from elasticvit_tf.layers.static_ops import RelPosAttentionCore, TokenLayerNormCore

    class TfActivation(tf_keras.layers.Layer):
        def __init__(self, activation="linear", **kwargs):
            super().__init__(**kwargs)
            self.activation = activation
            self._fn = _activation_fn(activation)

        def call(self, x):
            return self._fn(x)

        def get_config(self):
            return {**super().get_config(), "activation": self.activation}

    class TfKerasOp(tf_keras.layers.Layer):
        """A Keras 3 `keras.ops` node: `op` names it, `op_config` and `constants` hold its
        non-tensor arguments (`constants[i]` is the i-th positional arg when not a tensor)."""

        def __init__(self, op="", op_config=None, constants=None, **kwargs):
            super().__init__(**kwargs)
            self.op = op
            self.op_config = dict(op_config or {})
            self.constants = list(constants or [])

        def call(self, inputs):
            tensors = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
            args, it = [], iter(tensors)
            for c in self.constants:
                args.append(next(it) if c is None else tf.constant(c, dtype=tf.float32))
            cfg, op = self.op_config, self.op
            if op == "Add":
                return args[0] + args[1]
            if op == "Subtract":
                return args[0] - args[1]
            if op == "Multiply":
                return args[0] * args[1]
            if op in ("Divide", "TrueDivide"):
                return args[0] / args[1]
            if op == "Matmul":
                return tf.matmul(args[0], args[1])
            if op == "Transpose":
                return tf.transpose(args[0], cfg.get("axes"))
            if op == "Reshape":
                return tf.reshape(args[0], [-1, *cfg["newshape"][1:]])
            if op == "Softmax":
                return tf.nn.softmax(args[0], axis=cfg.get("axis", -1))
            if op == "Mean":
                return tf.reduce_mean(args[0], axis=cfg.get("axis"), keepdims=cfg.get("keepdims"))
            if op in ("HardSilu", "HardSwish", "Relu", "Relu6", "Sigmoid", "Silu", "Gelu"):
                name = {"HardSwish": "hard_silu", "HardSilu": "hard_silu"}.get(op, op.lower())
                return _activation_fn(name)(args[0])
            raise ValueError(f"QAT rebuild: unsupported Keras op {op!r}.")

        def get_config(self):
            return {
                **super().get_config(),
                "op": self.op,
                "op_config": self.op_config,
                "constants": self.constants,
            }

    class TokenLayerNorm(TokenLayerNormCore, tf_keras.layers.Layer):
        """Twin of elasticvit_tf.layers.static_layers.TokenLayerNorm."""

    class RelPosAttention(RelPosAttentionCore, tf_keras.layers.Layer):
        """Twin of elasticvit_tf.layers.static_layers.RelPosAttention."""

    return {
        "TfActivation": TfActivation,
        "TfKerasOp": TfKerasOp,
        "TokenLayerNorm": TokenLayerNorm,
        "RelPosAttention": RelPosAttention,
    }


def _is_tensor_ref(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("class_name") == "__keras_tensor__"


def _flatten_args(args: list[Any]) -> list[Any]:
    out = []
    for a in args:
        if isinstance(a, list) and any(_is_tensor_ref(x) for x in a):
            out.extend(a)
        else:
            out.append(a)
    return out


def rebuild_tf_keras(config: dict[str, Any], weights: dict[str, np.ndarray], annotate: bool):
    """Rebuilds a Keras 3 functional model config as a tf_keras model and loads its weights.

    Args:
        config: `keras.Model.get_config()` of a functional model.
        weights: `"<layer name>/<i>"` -> array.
        annotate: wrap Conv2D / DepthwiseConv2D / Dense with `quantize_annotate_layer`.

    Returns:
        (tf_keras.Model, custom_objects dict).

    Raises:
        ValueError: on a layer class this rebuild does not support (names it).
    """
    import tf_keras

    custom = _custom_layers()
    annotate_fn = None
    if annotate:
        import tensorflow_model_optimization as tfmot

        annotate_fn = tfmot.quantization.keras.quantize_annotate_layer
    tensors: dict[tuple[str, int, int], Any] = {}
    created: list[tuple[Any, str]] = []
    for spec in config["layers"]:
        cls, name, cfg = spec["class_name"], spec["name"], spec.get("config", {})
        module = spec.get("module") or ""
        if cls == "InputLayer":
            shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
            tensors[(name, 0, 0)] = tf_keras.Input(shape=tuple(shape[1:]), name=name)
            continue
        if len(spec["inbound_nodes"]) != 1:
            raise ValueError(f"QAT rebuild: layer {name!r} is shared; expected one call.")
        node = spec["inbound_nodes"][0]
        args = _flatten_args(node["args"])
        inputs = [tensors[tuple(a["config"]["keras_history"])] for a in args if _is_tensor_ref(a)]
        if module.startswith("keras.src.ops"):
            constants = [None if _is_tensor_ref(a) else a for a in args]
            op_cfg = {k: v for k, v in cfg.items() if k != "name"}
            layer = custom["TfKerasOp"](op=cls, op_config=op_cfg, constants=constants, name=name)
        elif cls == "Activation":
            layer = custom["TfActivation"](activation=cfg["activation"], name=name)
        elif cls in ("TokenLayerNorm", "RelPosAttention"):
            kw = {k: v for k, v in cfg.items() if k not in ("name", "trainable", "dtype")}
            layer = custom[cls](name=name, **kw)
        elif cls in _KEEP:
            kw = {k: cfg[k] for k in _KEEP[cls] if k in cfg}
            if cls in ("GlobalAveragePooling1D", "GlobalAveragePooling2D") and not kw.get(
                "keepdims"
            ):
                kw.pop("keepdims", None)
            layer = getattr(tf_keras.layers, cls)(name=name, **kw)
        else:
            raise ValueError(
                f"QAT rebuild: unsupported layer {cls!r} ({name!r}); supported: "
                f"{sorted(_KEEP) + ['Activation', 'TokenLayerNorm', 'RelPosAttention']} and "
                "keras.ops nodes."
            )
        wrapped = annotate_fn(layer) if (annotate_fn and cls in QUANTIZED_CLASSES) else layer
        x = (
            inputs
            if (
                cls in ("Add", "Multiply", "Subtract", "Concatenate")
                or (module.startswith("keras.src.ops") and len(inputs) != 1)
            )
            else inputs[0]
        )
        out = wrapped(x)
        act = cfg.get("activation", "linear")
        if cls in QUANTIZED_CLASSES and act not in (None, "linear"):
            # A fused activation becomes a float layer after the annotated one.
            out = custom["TfActivation"](activation=act, name=f"{name}_activation")(out)
        tensors[(name, 0, 0)] = out
        created.append((layer, name))
    ins = [tensors[tuple(r)] for r in _refs(config["input_layers"])]
    outs = [tensors[tuple(r)] for r in _refs(config["output_layers"])]
    model = tf_keras.Model(ins[0] if len(ins) == 1 else ins, outs[0] if len(outs) == 1 else outs)
    for layer, name in created:
        n = len(layer.weights)
        if n:
            values = [weights[f"{name}/{i}"] for i in range(n)]
            layer.set_weights(values)
    return model, custom


def _refs(obj):
    if obj and isinstance(obj[0], (list, tuple)):
        return [list(r) for r in obj]
    return [list(obj)]


def calibrate_ranges(qat_model, images: np.ndarray, batch_size: int = 16) -> int:
    """Initialises every moving-average activation range from data before fine-tuning.

    tfmot starts activation ranges at [-6, 6] and moves them with an EMA of decay 0.999, so
    a short fine-tune keeps ranges far too wide: small activations (e.g. the pooled features of
    a freshly initialised net) then quantize to 0 and the whole output collapses. This runs
    forward passes where the EMA becomes a running mean of the batch min/max (decay i/(i+1)),
    like TFLite's PTQ calibration. Returns the number of batches used.
    """
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops, quantizers

    cls = quantizers.MovingAverageQuantizer
    original = cls.__call__
    state = {"decay": 0.0}

    def calibrating_call(self, inputs, training, weights, **kwargs):
        return quant_ops.MovingAvgQuantize(
            inputs,
            weights["min_var"],
            weights["max_var"],
            ema_decay=state["decay"],
            is_training=True,
            num_bits=self.num_bits,
            per_channel=self.per_axis,
            symmetric=self.symmetric,
            narrow_range=self.narrow_range,
        )

    # NOTE: the passes run in training mode (in inference mode the wrappers' first call left
    # the ranges untouched here); every other variable (BN moving statistics) is restored after.
    others = [v for v in qat_model.weights if not v.name.split(":")[0].endswith(("_min", "_max"))]
    saved = [v.numpy() for v in others]
    n = 0
    cls.__call__ = calibrating_call
    try:
        for i in range(0, len(images), batch_size):
            state["decay"] = n / (n + 1.0)
            qat_model(images[i : i + batch_size], training=True)
            n += 1
    finally:
        cls.__call__ = original
        for v, value in zip(others, saved):
            v.assign(value)
    return n


def run(workdir: str) -> dict[str, Any]:
    """Runs QAT in `workdir` (see the module docstring); returns the log dict."""
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    from elasticvit_tf.export.tflite import check_builtin_only, configure_converter

    t0 = time.time()
    with open(os.path.join(workdir, "model.json")) as f:
        config = json.load(f)
    with open(os.path.join(workdir, "options.json")) as f:
        opts = json.load(f)
    weights = dict(np.load(os.path.join(workdir, "weights.npz")))
    data = dict(np.load(os.path.join(workdir, "data.npz")))
    tf.random.set_seed(int(opts.get("seed", 0)))

    log: dict[str, Any] = {}
    if "eval_x" in data:
        float_model, _ = rebuild_tf_keras(config, weights, annotate=False)
        ref = float_model.predict(data["eval_x"], verbose=0)
        log["float_rebuild_logits"] = np.asarray(ref, np.float64).tolist()
    model, custom = rebuild_tf_keras(config, weights, annotate=True)
    with tfmot.quantization.keras.quantize_scope(custom):
        qat_model = tfmot.quantization.keras.quantize_apply(model)
    log["calibration_batches"] = calibrate_ranges(qat_model, data["rep_x"])
    qat_model.compile(
        optimizer=tf_keras.optimizers.Adam(float(opts.get("learning_rate", 1e-4))),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = data["train_x"], data["train_y"]
    bs = int(opts.get("batch_size", 16))
    steps = int(opts.get("steps", 10))
    losses = []
    rng = np.random.default_rng(int(opts.get("seed", 0)))
    for _ in range(steps):
        idx = rng.choice(len(x), size=min(bs, len(x)), replace=False)
        losses.append(float(qat_model.train_on_batch(x[idx], y[idx])))
    rep_x = data["rep_x"]

    def rep():
        for i in range(len(rep_x)):
            yield [rep_x[i : i + 1].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(qat_model)
    configure_converter(converter, "qat", representative_dataset=rep, int8_io=opts["int8_io"])
    tflite_bytes = converter.convert()
    ops = check_builtin_only(tflite_bytes)
    with open(os.path.join(workdir, "model_qat.tflite"), "wb") as f:
        f.write(tflite_bytes)
    log.update(
        {
            "steps": steps,
            "batch_size": bs,
            "losses": losses,
            "ops": ops,
            "seconds": time.time() - t0,
            "tfmot": getattr(tfmot, "__version__", "unknown"),
        }
    )
    with open(os.path.join(workdir, "qat_log.json"), "w") as f:
        json.dump(log, f)
    return log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args(argv)
    try:
        run(args.workdir)
    except Exception as err:  # Reported to the parent via stderr + exit code.
        print(f"QAT worker failed: {type(err).__name__}: {err}", file=sys.stderr)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
