"""Tests of export/quantize.py (PTQ data helpers, QAT orchestration) and export/qat_worker.py.

The QAT worker runs in a separate process (tf_keras + tfmot must never load in this one).
"""

import json
import os
import sys

import numpy as np
import pytest

from elasticvit_tf.export import quantize as Q
from elasticvit_tf.export import verify as V


def test_collect_images_from_tuples_dicts_and_arrays():
    rng = np.random.default_rng(0)
    batches = [(rng.random((4, 6, 6, 3)), np.arange(4)), (rng.random((4, 6, 6, 3)), np.arange(4))]
    x, y = Q.collect_images(batches, 6, with_labels=True)
    assert x.shape == (6, 6, 6, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(y, [0, 1, 2, 3, 0, 1])
    x = Q.collect_images([{"image": np.zeros((3, 5, 5, 3)), "label": np.ones(3)}], 10)
    assert x.shape == (3, 5, 5, 3)
    assert Q.collect_images([np.zeros((2, 4, 4, 3))], 1).shape == (1, 4, 4, 3)


def test_collect_images_from_tf_data():
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(
        (np.ones((10, 4, 4, 3), np.float32), np.arange(10))
    ).batch(3)
    x, y = Q.collect_images(ds, 7, with_labels=True)
    assert x.shape == (7, 4, 4, 3) and list(y) == list(range(7))


def test_collect_images_errors():
    with pytest.raises(Q.RepresentativeDataError, match="No representative data.*received None"):
        Q.collect_images(None, 4)
    with pytest.raises(Q.RepresentativeDataError, match="yielded no images"):
        Q.collect_images([], 4)
    with pytest.raises(Q.RepresentativeDataError, match="needs labels"):
        Q.collect_images([np.zeros((2, 4, 4, 3))], 2, with_labels=True)
    with pytest.raises(ValueError, match="num_images must be >= 1"):
        Q.collect_images([np.zeros((2, 4, 4, 3))], 0)


def _model():
    import keras

    from elasticvit_tf.layers.static_layers import RelPosAttention, TokenLayerNorm

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("hard_silu")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = keras.layers.Add()([x, y]) * 0.5
    x = keras.layers.Reshape((64, 16))(x)
    x = TokenLayerNorm()(x)
    x = keras.layers.Dense(2 * 48)(x)
    x = RelPosAttention(2, 16, 16, 8)(x)
    x = keras.layers.Activation("hard_silu")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inp, keras.layers.Dense(10)(x))


def test_save_model_for_worker(tmp_path):
    model = _model()
    Q.save_model_for_worker(model, str(tmp_path))
    config = json.loads((tmp_path / "model.json").read_text())
    classes = [layer["class_name"] for layer in config["layers"]]
    assert "RelPosAttention" in classes and "TokenLayerNorm" in classes
    weights = np.load(tmp_path / "weights.npz")
    n = sum(len(layer.get_weights()) for layer in model.layers)
    assert len(weights.files) == n
    bn = model.get_layer(index=2)
    np.testing.assert_array_equal(weights[f"{bn.name}/3"], bn.get_weights()[3])


def test_run_qat_rejects_bad_input():
    with pytest.raises(Q.RepresentativeDataError, match="QAT needs training images"):
        Q.run_qat(None, np.zeros((0, 4, 4, 3)), np.zeros(0), None)
    with pytest.raises(ValueError, match="2 training images but 3 labels"):
        Q.run_qat(None, np.zeros((2, 4, 4, 3)), np.zeros(3), None)


def test_worker_failure_is_reported(tmp_path):
    import keras

    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2DTranspose(4, 3)(inp)  # not supported by the tf_keras rebuild
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Flatten()(x)))
    x = np.zeros((4, 8, 8, 3), np.float32)
    with pytest.raises(Q.QATError, match="unsupported layer 'Conv2DTranspose'"):
        Q.run_qat(model, x, np.zeros(4), x, steps=1, batch_size=2)


@pytest.mark.slow
def test_qat_end_to_end(tmp_path):
    """Rebuild in tf_keras (float rebuild == Keras), fake-quant fine-tune, int8 TFLite."""
    model = _model()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 16, 16, 3)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    data, log = Q.run_qat(
        model, x, y, x[:16], steps=3, batch_size=8, workdir=str(tmp_path), eval_images=x[:8]
    )
    assert "tensorflow_model_optimization" not in sys.modules and "tf_keras" not in sys.modules
    assert os.path.isfile(tmp_path / "model_qat.tflite")
    assert log["steps"] == 3 and len(log["losses"]) == 3 and np.all(np.isfinite(log["losses"]))
    ref = V.keras_logits(model, x)
    rebuilt = np.asarray(log["float_rebuild_logits"], np.float32)
    assert np.max(np.abs(rebuilt - ref[:8])) <= 1e-4
    assert "QUANTIZE" in log["ops"] and "FULLY_CONNECTED" in log["ops"]
    out = V.run_tflite(data, x)
    assert np.all(np.isfinite(out))
    # Few fine-tuning steps from the float weights: the QAT model still tracks the float one.
    assert np.mean(out.argmax(-1) == ref.argmax(-1)) >= 0.75  # measured 0.89
