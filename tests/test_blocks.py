"""blocks: arch -> typed block signatures, features, enumeration (pure Python)."""

import json

import numpy as np
import pytest

from elasticvit_tf.arch import ArchConfig
from elasticvit_tf.blocks import (
    FEATURE_NAMES,
    BlockKind,
    BlockSpec,
    arch_row,
    block_features,
    encode,
    enumerate_blocks,
    parts,
    placed_plan,
    plan,
    sides_table,
)
from elasticvit_tf.space import get_space

_TOKEN_KINDS = (BlockKind.TRANSITION, BlockKind.TRANSFORMER, BlockKind.HEAD)


def _expected_count(space, arch):
    n = 1 + arch.stem.depth + 1  # first conv, stem blocks, head
    for sa, ss in zip(arch.stages, space.stages):
        n += sa.depth + (1 if ss.is_transformer else 0)
    return n


@pytest.mark.parametrize("name", ["tiny", "demo", "elasticvit"])
def test_plan_covers_every_block_of_random_archs(name):
    space = get_space(name)
    all_ops = {s for sigs in enumerate_blocks(space).values() for s in sigs}
    rng = np.random.default_rng(7)
    for arch in [space.min_arch(), space.max_arch()] + [space.sample(rng) for _ in range(200)]:
        ops = plan(space, arch)
        assert len(ops) == _expected_count(space, arch)
        assert ops[0].kind is BlockKind.FIRST_CONV and ops[-1].kind is BlockKind.HEAD
        assert [o.kind for o in ops[1 : 1 + arch.stem.depth]] == [BlockKind.STEM_BLOCK] * (
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
        trans = [o for o in ops if o.kind is BlockKind.TRANSITION]
        t_stages = [ss for ss in space.stages if ss.is_transformer]
        assert [o.stride for o in trans] == [2 if ss.downsample else 1 for ss in t_stages]


def test_plan_demo_min_arch_golden():
    space = get_space("demo")
    ops = plan(space, space.min_arch())
    # demo min arch: r=24, C0=8, d0=1, k=3; stages widths 16,16,32,32,48,64, depth 1 each.
    assert ops[0] == BlockSpec(BlockKind.FIRST_CONV, 24, 3, 8, stride=2, kernel=3)
    assert ops[1] == BlockSpec(BlockKind.STEM_BLOCK, 12, 8, 8, kernel=3)
    assert ops[2] == BlockSpec(BlockKind.MBCONV, 12, 8, 16, 1, 3, 2, False)
    assert ops[3] == BlockSpec(BlockKind.MBCONV, 12, 16, 16, 2, 3, 2, True)
    assert ops[4] == BlockSpec(BlockKind.TRANSITION, 6, 16, 32, 2, 3, 6, True)
    assert ops[5] == BlockSpec(
        BlockKind.TRANSFORMER, 3, 32, 32, mlp_ratio=1, v_scale=1, head_dim=16
    )
    assert ops[-1] == BlockSpec(
        BlockKind.HEAD, 2, 64, 10, hidden=256, head_width=256, num_classes=10
    )
    assert len(ops) == 13


def test_plan_rejects_arch_outside_space():
    space = get_space("demo")
    bad = space.min_arch().replace(resolution=999)
    with pytest.raises(ValueError, match="resolution=999"):
        plan(space, bad)


def test_signature_json_round_trip_and_hashable():
    space = get_space("demo")
    ops = plan(space, space.max_arch())
    text = json.dumps([o.to_dict() for o in ops])
    back = [BlockSpec.from_dict(d) for d in json.loads(text)]
    assert back == ops
    assert len({*back}) == len({*ops})
    assert all(isinstance(o.kind, BlockKind) for o in back)


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
        BlockSpec.from_dict(bad)


def test_mbconv_features_golden():
    # stride-2 MBConv 16 -> 24 at side 8 -> 4, e=3, k=5, SE: inner 48, SE hidden 12.
    sig = BlockSpec(BlockKind.MBCONV, 8, 16, 24, stride=2, kernel=5, expand_ratio=3, se=True)
    f = block_features(sig)
    pw = 16 * 48 * 64
    dw = 48 * 25 * 16
    pwl = 48 * 24 * 16
    se = 2 * 48 * 12
    shortcut = 16 * 24 * 16
    assert f["macs"] == pw + dw + pwl + se + shortcut
    assert f["tokens"] == 16
    assert f["params"] == 16 * 48 + 48 * 25 + 48 * 24 + 2 * 48 * 12 + 16 * 24


def test_transformer_features_grow_with_every_knob():
    base = BlockSpec(BlockKind.TRANSFORMER, 4, 32, 32, mlp_ratio=1, v_scale=1, head_dim=16)
    f0 = block_features(base)
    assert set(f0) == set(FEATURE_NAMES)
    for change in (
        dict(mlp_ratio=2),
        dict(v_scale=2),
        dict(input_side=5),
        dict(in_channels=48, out_channels=48),
    ):
        f1 = block_features(BlockSpec(**{**base.__dict__, **change}))
        assert f1["macs"] > f0["macs"], change
    assert f0["attn_elems"] == 2 * 16 * 16


def test_enumerate_is_sorted_unique_and_sized():
    space = get_space("tiny")
    e = enumerate_blocks(space)
    assert set(e) == set(BlockKind)
    for kind, sigs in e.items():
        assert len(sigs) == len(set(sigs))
        assert all(s.kind is kind for s in sigs)
    # tiny: 2 resolutions x 2 stem widths for the first conv; x 2 kernels for stem blocks.
    assert len(e[BlockKind.FIRST_CONV]) == 4
    assert len(e[BlockKind.STEM_BLOCK]) == 8
    assert len(e[BlockKind.HEAD]) == 4  # 2 resolutions x 2 stage-5 widths
    assert enumerate_blocks(space) == e


def test_arch_from_json_plans_identically():
    space = get_space("demo")
    a = space.sample(np.random.default_rng(3))
    assert plan(space, ArchConfig.from_json(a.to_json())) == plan(space, a)


@pytest.mark.parametrize("name", ["tiny", "demo"])
def test_placed_plan_names_the_supernet_layers(name):
    space = get_space(name)
    arch = space.max_arch()
    placed = placed_plan(space, arch)
    assert [b.spec for b in placed] == plan(space, arch)
    names = [b.name for b in placed]
    assert names[0] == "first_conv" and names[-1] == "head"
    assert names[1 : 1 + arch.stem.depth] == [f"stem_block{j}" for j in range(arch.stem.depth)]
    for i, (sa, ss) in enumerate(zip(arch.stages, space.stages)):
        mine = [b for b in placed if b.stage == i]
        part = "layer" if ss.is_transformer else "block"
        want = [f"stage{i}_{part}{j}" for j in range(sa.depth)]
        if ss.is_transformer:  # the transition is the first part of layer 0
            assert mine[0].spec.kind is BlockKind.TRANSITION and mine[0].name == want[0]
            mine = mine[1:]
        assert [b.name for b in mine] == want
        assert [b.index for b in mine] == list(range(sa.depth))


@pytest.mark.parametrize("name", ["tiny", "elasticvit"])
def test_parts_broadcast_over_encoded_rows(name):
    space = get_space(name)
    rng = np.random.default_rng(3)
    archs = [space.sample(rng) for _ in range(50)]
    rows = encode(space, archs)
    sides = sides_table(space, rows[:, 0].tolist())
    many = parts(space, list(rows.T.astype(np.int64)), list(sides.T))
    for n, a in enumerate(archs):
        one = parts(space, arch_row(a), space.feature_sides(a.resolution))
        assert {k: (int(m[n]), int(p[n])) for k, (m, p) in many.items()} == one
