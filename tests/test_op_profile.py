"""Tests of export/op_profile.py: the measured local per-op profile (no timing assertions)."""

import numpy as np
import pytest

from elasticvit_tf.export import benchmark as B
from elasticvit_tf.export import op_profile as P
from elasticvit_tf.export import tflite as T


@pytest.fixture(scope="module")
def small_tflite():
    from test_tflite import _small_model

    model = _small_model()
    images = np.random.default_rng(1).standard_normal((8, 16, 16, 3)).astype(np.float32)
    return {
        "float32": T.convert(model, "float32", batch_size=1),
        "int8_full": T.convert(model, "int8_full", representative_dataset=images, batch_size=1),
    }


@pytest.mark.parametrize("mode", ["float32", "int8_full"])
def test_profile_covers_every_op_and_names_its_method(small_tflite, mode):
    data = small_tflite[mode]
    prof = P.profile_local(data, runs=2, warmup=0)
    counts = T.list_ops(data)
    assert len(prof.ops) == sum(counts.values())
    assert {o.op_type for o in prof.ops} == set(counts)
    by_type = {}
    for r in prof.by_type():
        by_type[r["op_type"]] = by_type.get(r["op_type"], 0) + r["count"]
    assert by_type == counts
    assert all(o.median_ms > 0 for o in prof.ops)
    assert prof.method == "isolated_ops" and "one-op" in prof.method_text
    assert prof.partitions >= 1
    d = prof.to_dict()
    assert d["delegated_ops"] + d["builtin_ops"] == len(prof.ops)
    assert "XNNPACK partitions" in prof.table()
    if mode == "float32":
        assert prof.partitions == 1 and all(o.delegated for o in prof.ops)
    else:
        # int8 HARD_SWISH / BATCH_MATMUL have no XNNPACK kernel in LiteRT 2.3: builtin fallbacks.
        assert set(prof.fallback_types()) & {"HARD_SWISH", "BATCH_MATMUL", "SOFTMAX"}


def test_single_op_models_run_alone(small_tflite):
    singles = P.single_op_models(small_tflite["float32"])
    assert [s[0] for s in singles].count("SOFTMAX") == T.list_ops(small_tflite["float32"])[
        "SOFTMAX"
    ]
    for _, _, data in singles:
        assert sum(T.list_ops(data).values()) == 1


def test_benchmark_local_attaches_profile(small_tflite):
    res = B.benchmark(small_tflite["float32"], runs=2, warmup=0, enable_op_profiling=True)
    assert res.op_profile and res.extra["op_profile"]["method"] == "isolated_ops"
    assert sum(r.count for r in res.op_profile) == sum(T.list_ops(small_tflite["float32"]).values())
    plain = B.benchmark(small_tflite["float32"], runs=2, warmup=0)
    assert plain.op_profile == [] and "op_profile" not in plain.extra


def test_profile_rejects_garbage():
    with pytest.raises(ValueError):
        P.profile_local(b"not a model", runs=1)
