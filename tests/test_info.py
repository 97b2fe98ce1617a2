"""Tests for the elasticvit-info binary (run as a real subprocess)."""

import json
import subprocess
import sys

import pytest

from elasticvit_tf.space import get_space


def _run(*args):
    p = subprocess.run(
        [sys.executable, "-m", "elasticvit_tf.info_main", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return p.returncode, p.stdout, p.stderr


def test_json_output_for_published_model():
    rc, out, _ = _run("--arch=elastic_S1", "--json")
    assert rc == 0
    d = json.loads(out)
    assert d["mflops"] == pytest.approx(217.64, abs=0.01)
    assert d["params_m"] == pytest.approx(10.837, abs=0.001)
    assert [s["heads"] for s in d["stages"][2:]] == [4, 6, 12, 17]


def test_table_and_list_models():
    rc, out, _ = _run("--arch=elastic_T1")
    assert rc == 0 and "62.92 MFLOPs" in out and "stage5" in out
    rc, out, _ = _run("--list_models")
    assert rc == 0 and len(out.strip().splitlines()) == 9 and "elastic_L1.5" in out


def test_arch_json_file_in_other_space(tmp_path):
    space = get_space("demo")
    path = tmp_path / "arch.json"
    path.write_text(space.max_arch().to_json())
    rc, out, _ = _run(f"--arch={path}", "--space=demo", "--json")
    assert rc == 0
    assert json.loads(out)["mflops"] == pytest.approx(11.455, abs=0.001)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arch=elastic_XXL"], "is neither a published model"),
        (["--arch=/nonexistent/a.json"], "no such file; expected an ArchConfig JSON file"),
        (["--arch=elastic_S1", "--space=moon"], "--space: unknown space 'moon'"),
        ([], "--arch is required"),
        (
            ["--arch=elastic_S1", "--space=demo"],
            "is a published model of space 'elasticvit', not 'demo'",
        ),
    ],
)
def test_bad_input_exit_code_2(args, message):
    rc, out, err = _run(*args)
    assert rc == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_malformed_and_out_of_space_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    rc, _, err = _run(f"--arch={bad}")
    assert rc == 2 and "malformed JSON" in err
    other = tmp_path / "other.json"
    other.write_text(get_space("demo").max_arch().to_json())
    rc, _, err = _run(f"--arch={other}")
    assert rc == 2 and "arch.resolution=32 is not in space 'elasticvit'" in err
