"""BUILD stays in sync: every module, binary and test module is covered by a Bazel target."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIRS = [
    "elasticvit_tf",
    "elasticvit_tf/layers",
    "elasticvit_tf/train",
    "elasticvit_tf/pipeline",
    "search",
    "export",
]


def _build_srcs():
    text = open(os.path.join(ROOT, "BUILD")).read()
    return text, set(re.findall(r'"([\w/\.]+\.py)"', text))


def test_every_module_is_in_a_target():
    _, srcs = _build_srcs()
    missing = []
    for d in PACKAGE_DIRS:
        for f in sorted(os.listdir(os.path.join(ROOT, d))):
            if f.endswith(".py") and f"{d}/{f}" not in srcs:
                missing.append(f"{d}/{f}")
    assert not missing, f"modules without a BUILD target: {missing}; run tools/update_build.py"


def test_every_test_module_has_a_py_test():
    text, srcs = _build_srcs()
    tests = sorted(
        f
        for f in os.listdir(os.path.join(ROOT, "tests"))
        if f.startswith("test_") and f.endswith(".py")
    )
    for t in tests:
        assert f'name = "{t[:-3]}"' in text, f"tests/{t} has no py_test; run tools/update_build.py"
        assert f"tests/{t}" in srcs


def test_every_listed_source_exists():
    _, srcs = _build_srcs()
    gone = [s for s in srcs if not os.path.exists(os.path.join(ROOT, s))]
    assert not gone, f"BUILD lists missing files: {gone}"


def test_every_console_script_has_a_py_binary():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    text, _ = _build_srcs()
    for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines():
        name = line.split("=")[0].strip()
        assert f'py_binary(\n    name = "{name}"' in text, name
