"""Mixed precision (docs/method.md#mixed-precision): bfloat16 blocks match float32 on the same
weights, float16 recovers from an overflow through loss scaling, and the policy survives resume
while the model_dir loads as a float32 supernet."""

import numpy as np
import pytest
import tensorflow as tf

from elasticvit_tf import model_dir as md
from elasticvit_tf.space import get_space
from elasticvit_tf.supernet import ElasticSupernet
from elasticvit_tf.train import train_lib
from elasticvit_tf.train.train_lib import TrainConfig


def _pair(space_name, policy, num_classes=10):
    space = get_space(space_name)
    r = space.max_resolution
    f32 = ElasticSupernet(space, num_classes, num_slots=1)
    low = ElasticSupernet(space, num_classes, num_slots=1, dtype_policy=policy)
    for net in (f32, low):
        net(tf.zeros([1, r, r, 3]))
    low.set_weights(f32.get_weights())
    return space, f32, low


def test_bfloat16_logits_match_float32_on_the_same_weights():
    space, f32, bf = _pair("demo", "mixed_bfloat16")
    assert bf.first_conv.compute_dtype == "bfloat16" and bf.first_conv.bn.autocast is False
    assert all(v.dtype == "float32" for v in bf.trainable_variables)
    assert f32.first_conv.compute_dtype == "float32"
    r = space.max_resolution
    x = tf.random.stateless_normal([64, r, r, 3], seed=[1, 2])
    rng = np.random.default_rng(0)
    agree, worst = [], 0.0
    for _ in range(10):
        a = space.sample(rng)
        f32.set_arch(a)
        bf.set_arch(a)
        y0 = f32(x, training=False).numpy()
        y1 = bf(x, training=False)
        assert y1.dtype == tf.float32  # the logits leave the supernet as float32
        y1 = y1.numpy()
        worst = max(worst, float(np.abs(y0 - y1).max() / np.abs(y0).max()))
        agree.append(np.mean(y0.argmax(1) == y1.argmax(1)))
    assert worst <= 0.05, worst
    assert np.mean(agree) >= 0.97, agree
    # the BN statistics of a training forward are float32 and finite
    bf(x, training=True)
    bn = bf.first_conv.bn
    assert bn.moving_mean.dtype == "float32" and np.isfinite(bn.moving_mean.numpy()).all()


def test_float16_overflow_is_skipped_and_training_recovers():
    from elasticvit_tf.train import train_lib

    space = get_space("tiny")
    net = ElasticSupernet(space, 3, num_slots=1, dtype_policy="mixed_float16")
    net(tf.zeros([1, 32, 32, 3]))
    cfg = TrainConfig(space="tiny", mixed_precision="float16", ema_decay=0.0)
    opt, trainer = train_lib.make_trainer(cfg, net, 1e-3)
    trainer.set_roles(("uniform",))
    opt.dynamic_scale.assign(2.0**30)  # forces an overflow of the float16 backward pass
    step = tf.function(trainer.train_step)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(4, 32, 32, 3)).astype("float32"))
    y = tf.constant([0, 1, 2, 0])
    before = [v.numpy().copy() for v in net.trainable_variables]
    step((x, y))
    assert int(opt.iterations.numpy()) == 0  # skipped: no update, the scale halved
    assert float(opt.dynamic_scale.numpy()) == 2.0**29
    for v, b in zip(net.trainable_variables, before):
        np.testing.assert_array_equal(v.numpy(), b)
    for _ in range(30):  # the scale halves until the gradients are finite again
        net.set_arch(space.sample(rng))  # other subnets: still the one traced step
        logs = step((x, y))
        if int(opt.iterations.numpy()) > 0:
            break
    assert int(opt.iterations.numpy()) == 1, float(opt.dynamic_scale.numpy())
    assert step.experimental_get_tracing_count() == 1
    assert np.isfinite(float(logs["loss"]))
    moved = [not np.array_equal(v.numpy(), b) for v, b in zip(net.trainable_variables, before)]
    assert any(moved)
    assert all(np.isfinite(v.numpy()).all() for v in net.trainable_variables)


@pytest.mark.slow
def test_resume_keeps_the_policy_and_the_model_dir_loads_as_float32(tmp_path):
    out = str(tmp_path / "run")
    cfg = TrainConfig(
        model_dir=out,
        space="tiny",
        dataset="digits",
        mixed_precision="bfloat16",
        sampler="uniform",
        steps=4,
        batch_size=16,
        checkpoint_every=2,
        calib_batches=1,
        eval_batches=1,
        search_size=100,
        verbose=0,
    )
    first = train_lib.train(cfg)
    assert first["step"] == 4
    assert md.read_config(out)["train"]["mixed_precision"] == "bfloat16"
    more = train_lib.train(TrainConfig(**{**cfg.to_dict(), "steps": 6}))
    assert more["resumed_from_step"] == 4 and more["step"] == 6
    with pytest.raises(ValueError, match="train.mixed_precision"):
        train_lib.train(TrainConfig(**{**cfg.to_dict(), "steps": 8, "mixed_precision": "float32"}))
    net, _ = md.load_supernet(out, "tiny")  # what search and export load: a float32 supernet
    assert net.first_conv.compute_dtype == "float32"
    assert all(v.dtype == "float32" for v in net.trainable_variables)


def test_bad_policy_values():
    with pytest.raises(ValueError, match="mixed_precision='half'; expected one of"):
        train_lib.validate_config(TrainConfig(model_dir="x", mixed_precision="half"))
    with pytest.raises(ValueError, match="dtype_policy='float64'"):
        ElasticSupernet("tiny", 3, dtype_policy="float64")
