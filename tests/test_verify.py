"""Tests of export/verify.py: logit comparison criteria and LiteRT runs vs Keras."""

import numpy as np
import pytest

from elasticvit_tf.export import verify as V


def _logits(n=20, k=5, seed=0):
    return np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)


def test_compare_float32_threshold():
    ref = _logits()
    ok = V.compare(ref, ref + 5e-5, mode="float32")
    assert ok.passed and ok.max_abs_error == pytest.approx(5e-5, rel=1e-2)
    assert ok.top1_agreement == 100.0 and ok.accuracy is None and ok.accuracy_drop is None
    bad = V.compare(ref, ref + np.float32(2e-4), mode="float32")
    assert not bad.passed
    assert "max abs logit error 0.0002 > 0.0001" in bad.reason
    assert bad.criterion == "max abs logit error <= 0.0001"


def test_compare_quantized_uses_accuracy_drop_with_labels():
    ref = _logits(n=100)
    labels = ref.argmax(-1)  # Keras is 100% right by construction.
    cand = ref.copy()
    cand[:3] = -cand[:3]  # flips the top-1 of (at least most of) 3 images
    flipped = int(np.sum(cand.argmax(-1) != labels))
    res = V.compare(ref, cand, labels=labels, mode="int8", max_accuracy_drop=5.0)
    assert res.keras_accuracy == 100.0
    assert res.accuracy == pytest.approx(100.0 - flipped)
    assert res.accuracy_drop == pytest.approx(flipped) and res.passed
    res = V.compare(ref, cand, labels=labels, mode="int8", max_accuracy_drop=flipped - 0.5)
    assert not res.passed and "top-1 accuracy drop" in res.reason


def test_compare_without_labels_uses_disagreement():
    ref = _logits(n=50)
    cand = ref.copy()
    cand[0] = -cand[0]
    res = V.compare(ref, cand, mode="dynamic", max_accuracy_drop=1.0)
    assert res.top1_agreement == pytest.approx(98.0)
    assert not res.passed and "disagreement 2.00 > 1" in res.reason
    assert V.compare(ref, cand, mode="dynamic", max_accuracy_drop=2.0).passed


def test_compare_rejects_nan_and_shape_mismatch():
    ref = _logits()
    cand = ref.copy()
    cand[0, 0] = np.nan
    res = V.compare(ref, cand, mode="float16", max_accuracy_drop=100.0)
    assert not res.passed and "NaN" in res.reason
    with pytest.raises(ValueError, match="Logit shapes differ"):
        V.compare(ref, ref[:, :3])
    with pytest.raises(ValueError, match="3 labels for 20 images"):
        V.compare(ref, ref, labels=np.zeros(3))


@pytest.fixture(scope="module")
def model_and_tflite():
    import keras

    from elasticvit_tf.export import tflite as T

    keras.utils.set_random_seed(3)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("hard_silu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(6)(x))
    images = np.random.default_rng(0).standard_normal((37, 12, 12, 3)).astype(np.float32)
    return model, images, T.convert(model, "float32")


def test_run_tflite_batches_and_matches_keras(model_and_tflite, tmp_path):
    model, images, data = model_and_tflite
    ref = V.keras_logits(model, images, batch_size=8)
    out = V.run_tflite(data, images, batch_size=16)  # 16 + 16 + 5: resizes the batch dimension
    assert out.shape == (37, 6)
    assert np.max(np.abs(out - ref)) <= V.FLOAT32_MAX_ABS
    path = tmp_path / "m.tflite"
    path.write_bytes(data)
    res = V.verify(str(path), ref, images, labels=ref.argmax(-1), mode="float32")
    assert res.passed and res.accuracy == 100.0 and res.num_images == 37


def test_verify_raises_on_mismatch(model_and_tflite):
    model, images, data = model_and_tflite
    ref = V.keras_logits(model, images) + 1e-3
    with pytest.raises(V.VerificationError, match=r"float32 TFLite model failed: max abs"):
        V.verify(data, ref, images, mode="float32")
    res = V.verify(data, ref, images, mode="float32", raise_on_failure=False)
    assert not res.passed and res.max_abs_error == pytest.approx(1e-3, rel=0.1)


def test_run_tflite_wrong_image_shape(model_and_tflite):
    _, _, data = model_and_tflite
    with pytest.raises(ValueError, match=r"the TFLite model expects \(12, 12, 3\)"):
        V.run_tflite(data, np.zeros((2, 10, 10, 3), np.float32))
