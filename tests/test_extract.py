"""extract_subnet: exact equivalence with the supernet, params == count_params, .keras
round-trip, TFLite builtins; recalibrate_bn on static models and consistency with the
supernet's recalibration."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from testing import assert_supernet_matches_subnet, randomize_supernet

from elasticvit_tf.arch import PUBLISHED_MODEL_NAMES
from elasticvit_tf.extract import extract_subnet, recalibrate_bn, subnet_structure
from elasticvit_tf.flops import count_params
from elasticvit_tf.space import get_published_arch, get_space
from elasticvit_tf.supernet import ElasticSupernet

_NETS = {}


def _net(space_name, num_classes=10):
    key = (space_name, num_classes)
    if key not in _NETS:
        net = ElasticSupernet(get_space(space_name), num_classes, num_slots=1)
        _NETS[key] = randomize_supernet(net, seed=11)
    return _NETS[key]


def _trainable_params(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _check_archs(space_name, seed, n, atol=1e-5):
    net = _net(space_name)
    sp = net.space
    rng = np.random.default_rng(seed)
    for _ in range(n):
        arch = sp.sample(rng)
        _, model = assert_supernet_matches_subnet(net, arch, atol=atol, seed=seed)
        assert _trainable_params(model) == count_params(sp, arch, net.num_classes), arch.key()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_tiny_random_archs_match(seed):
    _check_archs("tiny", seed, 5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_demo_random_archs_match(seed):
    _check_archs("demo", 100 + seed, 5)


def test_min_and_max_archs_match():
    for name in ("tiny", "demo"):
        net = _net(name)
        for arch in (net.space.min_arch(), net.space.max_arch()):
            _, model = assert_supernet_matches_subnet(net, arch)
            assert _trainable_params(model) == count_params(net.space, arch, 10)


def test_keras_save_reload_matches(tmp_path):
    net = _net("demo")
    rng = np.random.default_rng(21)
    for i in range(2):
        arch = net.space.sample(rng)
        model = extract_subnet(net, arch)
        path = os.path.join(tmp_path, f"m{i}.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path)
        assert _trainable_params(reloaded) == count_params(net.space, arch, 10)
        assert_supernet_matches_subnet(net, arch, model=reloaded)


def test_extracted_model_uses_standard_layers():
    net = _net("tiny")
    model = extract_subnet(net, net.space.max_arch())
    custom = {type(l).__name__ for l in model.layers if not type(l).__module__.startswith("keras")}
    assert custom == {"TokenLayerNorm", "RelPosAttention"}
    assert model.input_shape == (None, 24, 24, 3)
    kinds = [c["type"] for c in subnet_structure(net, net.space.max_arch())]
    assert kinds[0] == "first_conv" and kinds[-1] == "head" and "transformer" in kinds


def test_extract_rejects_bad_arch():
    net = _net("tiny")
    with pytest.raises(ValueError, match="resolution=20"):
        extract_subnet(net, net.space.min_arch().replace(resolution=20))
    with pytest.raises(ValueError, match="ElasticSupernet"):
        extract_subnet("not a net", net.space.min_arch())


def _batches(rng, n, r, b=4):
    return [rng.normal(0.3, 1.2, size=(b, r, r, 3)).astype("float32") for _ in range(n)]


def test_recalibrate_static_matches_supernet_recalibration():
    # Recalibrating the supernet and then extracting == extracting and then recalibrating.
    net = randomize_supernet(ElasticSupernet(get_space("tiny"), 10, num_slots=2), seed=3)
    rng = np.random.default_rng(31)
    arch = net.space.sample(rng)
    net.set_arch(arch, slot=1)
    batches = _batches(rng, 3, arch.resolution)
    model = extract_subnet(net, arch)
    recalibrate_bn(model, batches, num_batches=3)
    recalibrate_bn(net, batches, num_batches=3, slot=1)
    model2 = extract_subnet(net, arch)
    for w1, w2 in zip(model.get_weights(), model2.get_weights()):
        np.testing.assert_allclose(w1, w2, rtol=2e-4, atol=2e-5)
    x = batches[0]
    np.testing.assert_allclose(model(x).numpy(), model2(x).numpy(), atol=1e-4)


def test_recalibrate_static_hand_check():
    inputs = keras.Input((4, 4, 2))
    bn = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    model = keras.Model(inputs, bn(inputs))
    rng = np.random.default_rng(41)
    batches = [(rng.normal(size=(3, 4, 4, 2)).astype("float32"), None) for _ in range(2)]
    recalibrate_bn(model, batches, num_batches=5)
    flat = [b.reshape(-1, 2).astype(np.float64) for b, _ in batches]
    np.testing.assert_allclose(
        bn.moving_mean.numpy(), np.mean([f.mean(0) for f in flat], 0), atol=1e-6
    )
    np.testing.assert_allclose(
        bn.moving_variance.numpy(), np.mean([f.var(0, ddof=1) for f in flat], 0), rtol=1e-5
    )
    with pytest.raises(ValueError, match="num_batches=0"):
        recalibrate_bn(model, batches, num_batches=0)
    with pytest.raises(ValueError, match="str"):
        recalibrate_bn("model", batches, num_batches=1)


def test_tflite_builtins_only_matches_keras():
    from ai_edge_litert.interpreter import Interpreter

    net = _net("tiny")
    arch = net.space.sample(np.random.default_rng(51))
    model = extract_subnet(net, arch)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    blob = converter.convert()
    interp = Interpreter(model_content=blob)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    x = np.random.default_rng(52).normal(size=inp["shape"]).astype("float32")
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    np.testing.assert_allclose(interp.get_tensor(out["index"]), model(x).numpy(), atol=1e-4)


# ------------------------------------------------------------------ real-size (slow) cases
@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_elasticvit_random_arch_matches(seed):
    _check_archs("elasticvit", 1000 + seed, 1)


@pytest.mark.slow
@pytest.mark.parametrize("name", PUBLISHED_MODEL_NAMES)
def test_published_models_match(name):
    net = _net("elasticvit", 1000)
    arch = get_published_arch(name)
    _, model = assert_supernet_matches_subnet(net, arch, x=None)
    assert _trainable_params(model) == count_params(net.space, arch, 1000)
