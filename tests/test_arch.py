"""Tests for elasticvit_tf.arch: JSON, keys, the official 10-list encoding, published models."""

import json

import pytest

from elasticvit_tf import arch as arch_lib
from elasticvit_tf.arch import ArchConfig
from elasticvit_tf.space import get_published_arch, get_space

MODELS_JSON = "/work/shared/reference/elasticvit_models.json"


def test_published_models_by_name_match_reference_encodings():
    s = get_space("elasticvit")
    for name in arch_lib.PUBLISHED_MODEL_NAMES:
        a = get_published_arch(name)
        assert s.to_official(a) == arch_lib.OFFICIAL_ENCODINGS[name]
    m = get_published_arch("elastic_M")
    # docs/formats.md#official-10-list decoded example.
    assert m.resolution == 224 and m.stem.kernel == 5 and m.stages[1].depth == 5
    assert [st.width for st in m.stages] == [32, 48, 64, 96, 192, 288]
    assert m.stages[5].mlp_ratio == 5 and m.stages[5].v_scale == 2


def test_project_copy_equals_shared_reference():
    try:
        ref = json.load(open(MODELS_JSON))
    except OSError:
        pytest.skip("shared reference not available")
    for name, enc in arch_lib.OFFICIAL_ENCODINGS.items():
        assert enc == ref[name]["arch_encoding"]
    for key, enc in arch_lib.OFFICIAL_MIN_ARCH_ENCODINGS.items():
        assert enc == ref[f"supernet_min_arch_{key}"]["arch_encoding"]


def test_json_roundtrip_and_dict_layout():
    a = get_published_arch("elastic_S1")
    d = a.to_dict()
    assert d["stages"][0] == {"width": 24, "depth": 3, "expand_ratio": 3, "kernel": 3}
    assert d["stages"][5] == {"width": 272, "depth": 2, "mlp_ratio": 4, "v_scale": 2}
    assert ArchConfig.from_dict(json.loads(json.dumps(d))) == a
    assert ArchConfig.from_json(a.to_json(indent=2)).key() == a.key()


def test_key_distinguishes_every_field():
    a = get_space("demo").max_arch()
    variants = [
        a.replace(resolution=28),
        a.replace(stem=a.stem.__class__(8, 2, 5)),
        a.replace(stem=a.stem.__class__(16, 1, 5)),
        a.replace(stem=a.stem.__class__(16, 2, 3)),
        a.replace_stage(0, expand_ratio=3),
        a.replace_stage(0, kernel=3),
        a.replace_stage(3, mlp_ratio=2),
        a.replace_stage(3, v_scale=1),
        a.replace_stage(5, depth=1),
        a.replace_stage(5, width=80),
    ]
    keys = {v.key() for v in variants} | {a.key()}
    assert len(keys) == len(variants) + 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "arch: malformed JSON"),
        ("[1, 2]", "arch: expected a JSON object, got list"),
        (
            '{"resolution": 32, "stem": {"width": 8, "depth": 1, "kernel": 3}}',
            r"arch: missing field\(s\) \['stages'\]",
        ),
        (
            '{"resolution": 32, "stem": {"width": 8, "depth": 1}, "stages": []}',
            r"arch.stem: missing field\(s\) \['kernel'\]",
        ),
        (
            '{"resolution": "big", "stem": {"width": 8, "depth": 1, "kernel": 3}, "stages": []}',
            "arch.resolution: expected an integer, got 'big'",
        ),
        (
            '{"resolution": 32, "colour": 1, "stem": {"width": 8, "depth": 1, "kernel": 3}, "stages": []}',
            r"arch: unknown field\(s\) \['colour'\]",
        ),
        (
            '{"resolution": 32, "stem": {"width": 8, "depth": 1, "kernel": 3}, "stages": [{"width": 8, "depth": 1, "kernel": 3}]}',
            r"arch.stages\[0\]: missing field\(s\) \['expand_ratio'\]",
        ),
    ],
)
def test_from_json_errors(text, message):
    with pytest.raises(ValueError, match=message):
        ArchConfig.from_json(text)


def test_official_encoding_refuses_per_layer_values():
    s = get_space("elasticvit")
    enc = json.loads(json.dumps(arch_lib.OFFICIAL_ENCODINGS["elastic_S1"]))
    enc[5][4] = 5  # stage 4 layer 0 mlp ratio differs from layer 1
    with pytest.raises(
        ValueError,
        match=r"stage 4 mlp_ratio has per-layer values \[5, 3\] that differ inside the stage",
    ):
        s.from_official(enc)
    enc = json.loads(json.dumps(arch_lib.OFFICIAL_ENCODINGS["elastic_S1"]))
    enc[4][2] = 5  # a kernel inside stage 0
    with pytest.raises(ValueError, match="stage 0 kernel_size has per-layer values"):
        s.from_official(enc)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda e: e[:9], "expected a list of 10 entries"),
        (lambda e: [e[0], e[1][:6]] + e[2:], "channels and depths need 7 entries"),
        (lambda e: e[:3] + [e[3][:-1]] + e[4:], "conv_ratio/kernel_size need 7 entries"),
        (lambda e: e[:5] + [e[5][:-1]] + e[6:], "mlp_ratio needs 8 entries"),
        (lambda e: e[:7] + [[2] * 8] + e[8:], "window_size and qk_scale must be 1"),
        (lambda e: [100] + e[1:], r"arch.resolution=100 is not in space 'elasticvit'"),
    ],
)
def test_official_encoding_errors(mutate, message):
    s = get_space("elasticvit")
    enc = json.loads(json.dumps(arch_lib.OFFICIAL_ENCODINGS["elastic_S1"]))
    with pytest.raises(ValueError, match=message):
        s.from_official(mutate(enc))


def test_unknown_published_name():
    with pytest.raises(
        ValueError, match=r"unknown model 'elastic_XL'; expected one of \['elastic_T1'"
    ):
        get_published_arch("elastic_XL")
