"""latency_ops: arch -> typed block signatures, features, enumeration (pure Python)."""

import json

import numpy as np
import pytest

from elasticvit_tf.arch import ArchConfig
from elasticvit_tf.latency_ops import (
    FEATURE_NAMES,
    OpKind,
    OpSignature,
    decompose,
    enumerate_ops,
    op_features,
)
from elasticvit_tf.space import get_space

_TOKEN_KINDS = (OpKind.TRANSITION, OpKind.TRANSFORMER, OpKind.HEAD)


def _expected_count(space, arch):
    n = 1 + arch.stem.depth + 1  # first conv, stem blocks, head
    for sa, ss in zip(arch.stages, space.stages):
        n += sa.depth + (1 if ss.is_transformer else 0)
    return n


@pytest.mark.parametrize("name", ["tiny", "demo", "elasticvit"])
def test_decompose_covers_every_block_of_random_archs(name):
    space = get_space(name)
    all_ops = {s for sigs in enumerate_ops(space).values() for s in sigs}
    rng = np.random.default_rng(7)
    for arch in [space.min_arch(), space.max_arch()] + [space.sample(rng) for _ in range(200)]:
        ops = decompose(space, arch)
        assert len(ops) == _expected_count(space, arch)
        assert ops[0].kind is OpKind.FIRST_CONV and ops[-1].kind is OpKind.HEAD
        assert [o.kind for o in ops[1 : 1 + arch.stem.depth]] == [OpKind.STEM_BLOCK] * (
            arch.stem.depth
        )
        assert set(ops) <= all_ops, [o for o in ops if o not in all_ops][:2]
        # Shapes chain: each block starts where the previous one ended.
        for a, b in zip(ops[:-1], ops[1:]):
            assert b.input_side == a.output_side
            assert b.in_channels == a.out_channels
        sides = space.feature_sides(arch.resolution)
        assert ops[-1].input_side == sides[-1]
        assert ops[-1].in_channels == arch.stages[-1].width
        # One transition per transformer stage, with that stage's stride.
        trans = [o for o in ops if o.kind is OpKind.TRANSITION]
        t_stages = [ss for ss in space.stages if ss.is_transformer]
        assert [o.stride for o in trans] == [2 if ss.downsample else 1 for ss in t_stages]


def test_decompose_demo_min_arch_golden():
    space = get_space("demo")
    ops = decompose(space, space.min_arch())
    # demo min arch: r=24, C0=8, d0=1, k=3; stages widths 16,16,32,32,48,64, depth 1 each.
    assert ops[0] == OpSignature(OpKind.FIRST_CONV, 24, 3, 8, stride=2, kernel=3)
    assert ops[1] == OpSignature(OpKind.STEM_BLOCK, 12, 8, 8, kernel=3)
    assert ops[2] == OpSignature(OpKind.MBCONV, 12, 8, 16, 1, 3, 2, False)
    assert ops[3] == OpSignature(OpKind.MBCONV, 12, 16, 16, 2, 3, 2, True)
    assert ops[4] == OpSignature(OpKind.TRANSITION, 6, 16, 32, 2, 3, 6, True)
    assert ops[5] == OpSignature(OpKind.TRANSFORMER, 3, 32, 32, mlp_ratio=1, v_scale=1, head_dim=16)
    assert ops[-1] == OpSignature(
        OpKind.HEAD, 2, 64, 10, hidden=256, head_width=256, num_classes=10
    )
    assert len(ops) == 13


def test_decompose_rejects_arch_outside_space():
    space = get_space("demo")
    bad = space.min_arch().replace(resolution=999)
    with pytest.raises(ValueError, match="resolution=999"):
        decompose(space, bad)


def test_signature_json_round_trip_and_hashable():
    space = get_space("demo")
    ops = decompose(space, space.max_arch())
    text = json.dumps([o.to_dict() for o in ops])
    back = [OpSignature.from_dict(d) for d in json.loads(text)]
    assert back == ops
    assert len({*back}) == len({*ops})
    assert all(isinstance(o.kind, OpKind) for o in back)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"kind": "conv9", "input_side": 4, "in_channels": 3, "out_channels": 8}, "op.kind"),
        ({"kind": "head", "input_side": 4, "in_channels": 3}, "missing"),
        ({"kind": "head", "input_side": 4, "in_channels": 3, "out_channels": 8, "x": 1}, "unknown"),
        ({"kind": "head", "input_side": 4.5, "in_channels": 3, "out_channels": 8}, "input_side"),
        ([1, 2], "JSON object"),
    ],
)
def test_signature_from_dict_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        OpSignature.from_dict(bad)


def test_mbconv_features_golden():
    # stride-2 MBConv 16 -> 24 at side 8 -> 4, e=3, k=5, SE: inner 48, SE hidden 12.
    sig = OpSignature(OpKind.MBCONV, 8, 16, 24, stride=2, kernel=5, expand_ratio=3, se=True)
    f = op_features(sig)
    pw = 16 * 48 * 64
    dw = 48 * 25 * 16
    pwl = 48 * 24 * 16
    se = 2 * 48 * 12
    shortcut = 16 * 24 * 16
    assert f["macs"] == pw + dw + pwl + se + shortcut
    assert f["tokens"] == 16
    assert f["params"] == 16 * 48 + 48 * 25 + 48 * 24 + 2 * 48 * 12 + 16 * 24


def test_transformer_features_grow_with_every_knob():
    base = OpSignature(OpKind.TRANSFORMER, 4, 32, 32, mlp_ratio=1, v_scale=1, head_dim=16)
    f0 = op_features(base)
    assert set(f0) == set(FEATURE_NAMES)
    for change in (
        dict(mlp_ratio=2),
        dict(v_scale=2),
        dict(input_side=5),
        dict(in_channels=48, out_channels=48),
    ):
        f1 = op_features(OpSignature(**{**base.__dict__, **change}))
        assert f1["macs"] > f0["macs"], change
    assert f0["attn_elems"] == 2 * 16 * 16


def test_enumerate_is_sorted_unique_and_sized():
    space = get_space("tiny")
    e = enumerate_ops(space)
    assert set(e) == set(OpKind)
    for kind, sigs in e.items():
        assert len(sigs) == len(set(sigs))
        assert all(s.kind is kind for s in sigs)
    # tiny: 2 resolutions x 2 stem widths for the first conv; x 2 kernels for stem blocks.
    assert len(e[OpKind.FIRST_CONV]) == 4
    assert len(e[OpKind.STEM_BLOCK]) == 8
    assert len(e[OpKind.HEAD]) == 4  # 2 resolutions x 2 stage-5 widths
    assert enumerate_ops(space) == e


def test_arch_from_json_decomposes_identically():
    space = get_space("demo")
    a = space.sample(np.random.default_rng(3))
    assert decompose(space, ArchConfig.from_json(a.to_json())) == decompose(space, a)
