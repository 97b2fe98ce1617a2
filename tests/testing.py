"""Shared test helpers for the supernet: ``from testing import ...`` (pytest puts ``tests/`` on
``sys.path``, as for ``search_fakes``)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def randomize_supernet(net, seed=0, scale=0.5):
    """Gives BN/LN affine and BN moving stats random values (zero-init gammas would hide
    errors) so that supernet-vs-subnet comparisons are meaningful. Returns ``net``."""
    rng = np.random.default_rng(seed)
    for v in net.weights:
        if v.dtype == "int32":
            continue
        path = v.path
        if path.endswith("moving_variance"):
            v.assign(rng.uniform(0.5, 2.0, v.shape).astype("float32"))
        elif path.endswith(("gamma", "beta", "moving_mean", "attention_bias")):
            v.assign(rng.normal(0.0, scale, v.shape).astype("float32"))
    return net


def assert_supernet_matches_subnet(net, arch, x=None, atol=1e-5, slot=0, model=None, seed=0):
    """Sets ``arch`` in ``slot``, extracts it (unless ``model`` is given) and asserts that the
    supernet (traced, inference) and the static model agree on ``x`` (default: 2 random images
    at the arch resolution) within ``atol``. Returns ``(max_abs_diff, model)``."""
    from elasticvit_tf.extract import extract_subnet

    net.set_arch(arch, slot=slot)
    if x is None:
        rng = np.random.default_rng(seed)
        r = arch.resolution
        x = rng.normal(size=(2, r, r, 3)).astype("float32")
    if model is None:
        model = extract_subnet(net, arch)
    fn = _cached_infer(net, slot)
    y_super = fn(tf.constant(x)).numpy()
    y_static = np.asarray(model(x, training=False))
    diff = float(np.max(np.abs(y_super - y_static)))
    assert y_super.shape == y_static.shape, (y_super.shape, y_static.shape)
    assert diff <= atol, f"{arch.key()}: max |supernet - subnet| = {diff:.3g} > {atol}"
    return diff, model


def _cached_infer(net, slot):
    cache = net.__dict__.setdefault("_test_infer_fns", {})
    if slot not in cache:
        cache[slot] = tf.function(lambda x: net(x, training=False, slot=slot))
    return cache[slot]


def assert_layer_roundtrip(layer):
    """``from_config(get_config())`` gives a layer with the same config (and class)."""
    config = layer.get_config()
    clone = layer.__class__.from_config(config)
    assert type(clone) is type(layer)
    assert clone.get_config() == config, (clone.get_config(), config)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert restored.get_config() == config
    return clone
