"""Every binary on bad input: exit code 2, one stderr line naming the value, no traceback,
nothing written (issue 12; the convention of docs/design.md#error-conventions).

The table ``CASES`` holds ``(binary, case id, flags, text the line must contain)``; ``{name}``
in a flag is a fixture path made below (damaged checkpoints, files where directories are
expected, a one-class image folder, ...), ``{out}`` a fresh path that must stay absent. The
cases of one binary run in one child process (absl's flags are process-global), each through
``cli.parse_flags`` + ``cli.execute`` like the console script, from its own empty working
directory; the whole fixture tree is compared before and after each case.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

BINARIES = {
    "elasticvit-info": ("elasticvit_tf.info_main", ()),
    "elasticvit-train": ("elasticvit_tf.train.train_main", ("model_dir",)),
    "elasticvit-search": ("elasticvit_tf.search.search_main", ()),
    "elasticvit-export": ("elasticvit_tf.export.export_main", ()),
    "elasticvit-lut": ("elasticvit_tf.export.lut_main", ()),
    "elasticvit-convert": ("elasticvit_tf.convert_main", ()),
    "elasticvit-demo": ("elasticvit_tf.pipeline.demo_main", ()),
}
NOPE = "/proc/elasticvit_nope/run"  # a pseudo file system: cannot be created

_INFO = [
    ("unknown_flag", ["--bogus"], "bogus"),
    ("int_flag_text", ["--arch=min", "--num_classes=abc"], "abc"),
    ("num_classes_zero", ["--arch=min", "--num_classes=0"], "--num_classes=0"),
    ("arch_missing", [], "--arch is required"),
    ("unknown_model", ["--arch=elastic_XXL"], "elastic_XXL"),
    ("arch_no_file", ["--arch={root}/missing.json"], "missing.json"),
    ("arch_malformed", ["--arch={bad_json}"], "bad.json"),
    ("unknown_space", ["--arch=min", "--space=huge"], "huge"),
    ("model_other_space", ["--arch=elastic_S1", "--space=demo"], "elastic_S1"),
    ("arch_other_space", ["--arch={arch_big}", "--space=tiny"], "arch_big.json"),
    ("bool_flag_value", ["--arch=min", "--json=maybe"], "maybe"),
    ("flagfile_missing", ["--flagfile={root}/none.flags"], "none.flags"),
    ("official_list_short", ["--arch={arch_list3}"], "official encoding"),
]
_TRAIN_OK = ["--model_dir={out}", "--space=tiny", "--dataset=digits", "--steps=2"]
_TRAIN = [
    ("unknown_flag", [*_TRAIN_OK, "--bogus"], "bogus"),
    ("steps_text", [*_TRAIN_OK, "--steps=abc"], "abc"),
    ("model_dir_missing", ["--space=tiny"], "model_dir"),
    ("model_dir_is_file", [*_TRAIN_OK, "--model_dir={txt}"], "notes.txt"),
    ("model_dir_uncreatable", [*_TRAIN_OK, f"--model_dir={NOPE}"], "/proc/elasticvit_nope"),
    ("unknown_dataset", [*_TRAIN_OK, "--dataset=imagenet_nowhere"], "imagenet_nowhere"),
    ("unknown_sampler", [*_TRAIN_OK, "--sampler=greedy"], "greedy"),
    ("unknown_strategy", [*_TRAIN_OK, "--strategy=tpu_pod"], "tpu_pod"),
    ("unknown_space", [*_TRAIN_OK, "--space=huge"], "huge"),
    ("unknown_preset", [*_TRAIN_OK, "--preset=fast"], "fast"),
    ("sampler_kwargs_text", [*_TRAIN_OK, "--sampler_kwargs=notjson"], "sampler_kwargs"),
    ("sampler_kwargs_list", [*_TRAIN_OK, "--sampler_kwargs=[1]"], "sampler_kwargs"),
    ("folder_missing", [*_TRAIN_OK, "--dataset=folder:{root}/nope"], "nope"),
    ("folder_one_class", [*_TRAIN_OK, "--dataset=folder:{one_class}"], "at least 2"),
    (
        "fm_no_files",
        [*_TRAIN_OK, "--dataset=fashion_mnist", "--data_dir=/nonexistent/fm"],
        "/nonexistent/fm",
    ),
    ("batch_size_zero", [*_TRAIN_OK, "--batch_size=0"], "batch_size=0"),
    ("steps_zero", [*_TRAIN_OK, "--steps=0"], "steps=0"),
    ("eval_split", [*_TRAIN_OK, "--eval_split=train2"], "train2"),
    ("label_smoothing", [*_TRAIN_OK, "--label_smoothing=1.5"], "label_smoothing=1.5"),
    ("ema_decay", [*_TRAIN_OK, "--ema_decay=1"], "ema_decay=1"),
    ("graph_opts", [*_TRAIN_OK, "--graph_optimizations=maybe"], "maybe"),
    ("positional", [*_TRAIN_OK, "extra"], "extra"),
    ("model_dir_other_space", [*_TRAIN_OK, "--model_dir={md_copy}", "--space=demo"], "demo"),
    ("float_text", [*_TRAIN_OK, "--lr=fast"], "fast"),
]
_SEARCH_OK = ["--model_dir={md}", "--directory={out}", "--max_trials=2", "--population=2"]
_SEARCH = [
    ("unknown_flag", [*_SEARCH_OK, "--bogus"], "bogus"),
    ("max_trials_text", [*_SEARCH_OK, "--max_trials=abc"], "abc"),
    ("model_dir_missing", ["--directory={out}"], "--model_dir is required"),
    ("model_dir_absent", [*_SEARCH_OK, "--model_dir={root}/nope"], "nope"),
    ("model_dir_is_file", [*_SEARCH_OK, "--model_dir={txt}"], "notes.txt"),
    ("ckpt_truncated", [*_SEARCH_OK, "--model_dir={md_trunc}"], "ckpt-1"),
    ("ckpt_random_index", [*_SEARCH_OK, "--model_dir={md_badidx}"], "ckpt-1"),
    ("budget_text", [*_SEARCH_OK, "--latency_budget_ms=abc"], "abc"),
    ("budget_without_lut", [*_SEARCH_OK, "--latency_budget_ms=5"], "--latency_lut"),
    (
        "lut_missing",
        [*_SEARCH_OK, "--latency_budget_ms=5", "--latency_lut={root}/l.json"],
        "l.json",
    ),
    ("lut_text", [*_SEARCH_OK, "--latency_budget_ms=5", "--latency_lut={txt}"], "notes.txt"),
    ("mflops_one", [*_SEARCH_OK, "--mflops_range=1"], "mflops_range"),
    ("mflops_text", [*_SEARCH_OK, "--mflops_range=a,b"], "a,b"),
    ("mflops_reversed", [*_SEARCH_OK, "--mflops_range=5,1"], "5"),
    ("oracle_enum", [*_SEARCH_OK, "--oracle=genetic"], "genetic"),
    ("directory_is_file", [*_SEARCH_OK, "--directory={txt}"], "notes.txt"),
    ("directory_uncreatable", [*_SEARCH_OK, f"--directory={NOPE}"], "/proc/elasticvit_nope"),
    ("output_dir_is_file", [*_SEARCH_OK, "--output_dir={txt}"], "notes.txt"),
    ("unknown_space", [*_SEARCH_OK, "--space=huge"], "huge"),
    ("other_space", [*_SEARCH_OK, "--space=demo"], "demo"),
    ("population_zero", [*_SEARCH_OK, "--population=0"], "population"),
]
_EXPORT_OK = ["--model_dir={md}", "--arch={arch_tiny}", "--output_dir={out}"]
_EXPORT = [
    ("unknown_flag", [*_EXPORT_OK, "--bogus"], "bogus"),
    ("batch_text", [*_EXPORT_OK, "--batch_size=abc"], "abc"),
    ("no_model", ["--output_dir={out}"], "model_dir"),
    ("unknown_model", [*_EXPORT_OK, "--arch=elastic_XXL"], "elastic_XXL"),
    ("ckpt_truncated", [*_EXPORT_OK, "--model_dir={md_trunc}"], "ckpt-1"),
    ("ckpt_random_index", [*_EXPORT_OK, "--model_dir={md_badidx}"], "ckpt-1"),
    ("output_is_file", [*_EXPORT_OK, "--output_dir={txt}"], "notes.txt"),
    ("output_uncreatable", [*_EXPORT_OK, f"--output_dir={NOPE}"], "/proc/elasticvit_nope"),
    ("quantize_mode", [*_EXPORT_OK, "--quantize=int4"], "int4"),
    ("int8_io_enum", [*_EXPORT_OK, "--int8_io=uint8"], "uint8"),
    ("no_tflite", ["--benchmark_only", "--output_dir={out}"], "tflite"),
    ("tflite_missing", ["--benchmark_only", "--tflite={root}/m.tflite"], "m.tflite"),
    (
        "keras_model_text",
        ["--keras_model={txt}", "--data=digits", "--output_dir={out}"],
        "notes.txt",
    ),
    ("model_dir_absent", [*_EXPORT_OK, "--model_dir={root}/nope"], "nope"),
    ("arch_malformed", [*_EXPORT_OK, "--arch={bad_json}"], "bad.json"),
    ("arch_other_space", [*_EXPORT_OK, "--arch={arch_big}"], "arch_big.json"),
    ("space_mismatch", [*_EXPORT_OK, "--space=demo"], "demo"),
    ("target_unknown", [*_EXPORT_OK, "--target=tpu"], "tpu"),
    ("drop_negative", [*_EXPORT_OK, "--max_accuracy_drop=-1"], "max_accuracy_drop"),
    ("positional", [*_EXPORT_OK, "extra"], "extra"),
]
_LUT_OK = ["--space=tiny", "--output_dir={out}", "--budget_s=5"]
_LUT = [
    ("unknown_flag", [*_LUT_OK, "--bogus"], "bogus"),
    ("threads_zero", [*_LUT_OK, "--num_threads=0"], "num_threads"),
    ("mode_unknown", [*_LUT_OK, "--modes=fp16"], "fp16"),
    ("target_unknown", [*_LUT_OK, "--target=tpu"], "tpu"),
    ("adb_missing", [*_LUT_OK, "--target=adb:XYZ", "--benchmark_model_path=/x/bm"], "adb"),
    ("output_is_file", [*_LUT_OK, "--output_dir={txt}"], "notes.txt"),
    ("output_uncreatable", [*_LUT_OK, f"--output_dir={NOPE}"], "/proc/elasticvit_nope"),
    ("unknown_space", [*_LUT_OK, "--space=huge"], "huge"),
    ("clock_enum", [*_LUT_OK, "--clock=gpu"], "gpu"),
    ("runs_zero", [*_LUT_OK, "--runs=0"], "runs"),
    ("budget_text", [*_LUT_OK, "--budget_s=abc"], "abc"),
    ("positional", [*_LUT_OK, "extra"], "extra"),
]
_CONVERT = [
    ("unknown_flag", ["--bogus"], "bogus"),
    ("checkpoint_missing", ["--model_dir={out}"], "--checkpoint is required"),
    ("text_file", ["--checkpoint={txt}", "--model_dir={out}"], "not a PyTorch checkpoint"),
    ("random_bytes", ["--checkpoint={rnd}", "--model_dir={out}"], "not a PyTorch checkpoint"),
    ("absent", ["--checkpoint={root}/none.pth", "--model_dir={out}"], "none.pth"),
    ("model_dir_is_file", ["--checkpoint={rnd}", "--model_dir={txt}"], "notes.txt"),
    ("model_dir_not_empty", ["--checkpoint={rnd}", "--model_dir={md}"], "already exists"),
    ("model_dir_uncreatable", ["--checkpoint={rnd}", f"--model_dir={NOPE}"], "elasticvit_nope"),
    ("zip_not_torch", ["--checkpoint={zip}", "--model_dir={out}"], "archive.zip"),
    ("num_classes_text", ["--checkpoint={rnd}", "--model_dir={out}", "--num_classes=x"], "x"),
    ("positional", ["--checkpoint={rnd}", "--model_dir={out}", "extra"], "extra"),
]
_DEMO = [
    ("unknown_flag", ["--output_dir={out}", "--bogus"], "bogus"),
    ("unknown_dataset", ["--output_dir={out}", "--dataset=nope"], "nope"),
    ("output_is_file", ["--output_dir={txt}"], "notes.txt"),
    ("output_uncreatable", [f"--output_dir={NOPE}"], "/proc/elasticvit_nope"),
    ("budgets_text", ["--output_dir={out}", "--budgets_ms=a"], "a"),
    ("steps_text", ["--output_dir={out}", "--train_steps=abc"], "abc"),
    ("clock_enum", ["--output_dir={out}", "--lut_clock=gpu"], "gpu"),
    ("positional", ["--output_dir={out}", "extra"], "extra"),
]
CASES = [
    (b, cid, args, want)
    for b, table in (
        ("elasticvit-info", _INFO),
        ("elasticvit-train", _TRAIN),
        ("elasticvit-search", _SEARCH),
        ("elasticvit-export", _EXPORT),
        ("elasticvit-lut", _LUT),
        ("elasticvit-convert", _CONVERT),
        ("elasticvit-demo", _DEMO),
    )
    for cid, args, want in table
]


# ------------------------------------------------------------------------------- fixtures
def make_fixtures(root: str) -> dict:
    """The files the cases name; returns ``{name: path}``."""
    import tensorflow as tf

    from elasticvit_tf import data as data_lib
    from elasticvit_tf import model_dir as md
    from elasticvit_tf.space import get_space
    from elasticvit_tf.supernet import ElasticSupernet

    os.makedirs(root, exist_ok=True)
    p = {"root": root}

    def write(name, data, mode="w"):
        p[name.split(".")[0]] = path = os.path.join(root, name)
        with open(path, mode) as f:
            f.write(data)

    write("txt.notes.txt", "hello\n")
    write("rnd.bin", np.random.default_rng(0).bytes(4096), "wb")
    write("bad_json.bad.json", "{not json")
    write("arch_list3.json", "[224, [16], [1]]")
    write("arch_big.json", get_space("elasticvit").max_arch().to_json())
    write("arch_tiny.json", get_space("tiny").min_arch().to_json())
    p["zip"] = os.path.join(root, "archive.zip")
    with zipfile.ZipFile(p["zip"], "w") as z:
        z.writestr("hello.txt", "hi")
    one = os.path.join(root, "one_class", "cat")
    os.makedirs(one)
    for i in range(4):
        tf.io.write_file(
            os.path.join(one, f"{i}.png"), tf.io.encode_png(np.full((8, 8, 3), i, np.uint8))
        )
    p["one_class"] = os.path.dirname(one)

    space = get_space("tiny")
    net = ElasticSupernet(space, 10, num_slots=1)
    md.ensure_built(net, space)
    config = {
        "num_classes": 10,
        "num_slots": 1,
        "data": data_lib.DataConfig(dataset="digits").to_dict(),
        "split_seed": 0,
    }
    for name in ("md", "md_copy", "md_trunc", "md_badidx"):
        p[name] = os.path.join(root, name)
        md.save_supernet(p[name], net, config, step=1)
    data_file = md.latest_checkpoint(p["md_trunc"]) + ".data-00000-of-00001"
    with open(data_file, "r+b") as f:
        f.truncate(os.path.getsize(data_file) // 2)
    with open(md.latest_checkpoint(p["md_badidx"]) + ".index", "wb") as f:
        f.write(np.random.default_rng(1).bytes(2048))
    return p


def _snapshot(root: str) -> dict:
    out = {}
    for d, _, files in os.walk(root):
        out[d] = None
        for f in files:
            st = os.stat(os.path.join(d, f))
            out[os.path.join(d, f)] = (st.st_size, st.st_mtime_ns)
    return out


def run_group(binary: str, cases: list, fixtures: dict) -> list:
    """Runs ``cases`` of one binary in this process, like its console script would."""
    import importlib

    from absl import flags

    from elasticvit_tf import cli

    module_name, required = BINARIES[binary]
    if binary != "elasticvit-info":
        cli.quiet_tensorflow()
    module = importlib.import_module(module_name)
    module.define_flags()
    for name in required:
        flags.mark_flag_as_required(name)
    results = []
    for cid, args, _ in cases:
        case_dir = os.path.join(fixtures["root"], "cases", binary, cid)
        os.makedirs(case_dir)
        values = dict(fixtures, out=os.path.join(case_dir, "out"))
        argv = [binary, *(a.format(**values) for a in args)]
        before = _snapshot(fixtures["root"])
        err, out = io.StringIO(), io.StringIO()
        os.chdir(case_dir)
        flags.FLAGS.unparse_flags()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = cli.execute(binary, module.main, cli.parse_flags(binary, argv))
            except SystemExit as e:
                code = e.code
        after = _snapshot(fixtures["root"])
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        results.append({"id": cid, "code": code, "err": err.getvalue(), "changed": changed})
    return results


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("bad_inputs"))
    return make_fixtures(os.path.join(root, "fx"))


_RESULTS: dict = {}


def group_results(binary: str, fixtures: dict) -> dict:
    """``{case id: result}`` of one binary's cases (one child process, run once)."""
    if binary not in _RESULTS:
        cases = [(cid, args, want) for b, cid, args, want in CASES if b == binary]
        spec = os.path.join(os.path.dirname(fixtures["root"]), f"{binary}.json")
        with open(spec, "w") as f:
            json.dump({"binary": binary, "cases": cases, "fixtures": fixtures}, f)
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PATH="/usr/bin:/bin")  # no adb
        proc = subprocess.run(
            [sys.executable, __file__, spec], env=env, capture_output=True, text=True, timeout=900
        )
        if proc.returncode != 0:
            _RESULTS[binary] = proc.stderr[-3000:]
        else:
            with open(spec + ".out") as f:
                _RESULTS[binary] = {r["id"]: r for r in json.load(f)}
    assert isinstance(_RESULTS[binary], dict), _RESULTS[binary]  # the group's process failed
    return _RESULTS[binary]


@pytest.mark.parametrize(
    "binary, cid, args, want", CASES, ids=[f"{c[0][11:]}-{c[1]}" for c in CASES]
)
def test_bad_input(fixtures, binary, cid, args, want):
    r = group_results(binary, fixtures)[cid]
    lines = r["err"].strip().splitlines()
    assert r["code"] == 2, r["err"]
    assert "Traceback" not in r["err"]
    assert len(lines) == 1, r["err"]
    assert lines[0].startswith(f"{binary}: error: ") and want in lines[0], lines[0]
    assert not r["changed"], r["changed"]


def test_the_table_is_large():
    assert len(CASES) >= 70 and {c[0] for c in CASES} == set(BINARIES)


if __name__ == "__main__":  # one binary's group, in a fresh process (see ``results``)
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    res = run_group(spec["binary"], spec["cases"], spec["fixtures"])
    with open(sys.argv[1] + ".out", "w") as f:
        json.dump(res, f)
