"""Every command of the README's guides runs, at toy size, through its local equivalent.

The README's ``## Guides`` section is parsed (fenced ``bash`` blocks: commands, ``export``
lines, ``NAME=value`` prefixes; fenced ``text`` blocks whose first line is ``# NAME.flags``:
flagfiles). ``GUIDES`` below maps every command to what this test changes: README flag values
replaced by toy ones (``replace``; each must appear in the README command or its flagfile),
flags added at toy size (``add``), environment variables, and the stand-ins (mock ImageNet,
logical CPUs, fake ``adb``, loopback clusters, see tests/readme_fixtures.py). A README guide
command without a row, or a row without a command, fails ``test_table_covers_every_command``.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import readme_fixtures as rf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
FIXTURES = os.path.join(ROOT, "tests", "readme_fixtures.py")
MOCK = "24"  # TFDS mock examples per split


@dataclasses.dataclass
class Sub:
    """Toy-size substitutions of one README command (values may hold ``{name}`` fields that
    the guide's test fills in: tmp paths, the LUT just built, budgets, ports)."""

    binary: str
    replace: dict = dataclasses.field(default_factory=dict)
    add: dict = dataclasses.field(default_factory=dict)
    env: dict = dataclasses.field(default_factory=dict)
    stand_in: str = ""


_TRAIN_TOY = {
    "space": "tiny",
    "tfds_data_dir": "{tmp}/tfds",
    "manual_dir": "{tmp}/manual",
    "teacher": "{tmp}/teacher_a.keras,{tmp}/teacher_b.keras",
    "batch_size": "8",
    "epochs": "1",
    "warmup_steps": "1",
    "cooldown_steps": "0",
    "checkpoint_every": "2",
}
_TRAIN_ADD = {"steps": "2", "search_size": "4", "eval_batches": "1", "calib_batches": "1"}
_ADB = "adb:R58M1234ABC stays: the fake adb on PATH answers for any serial"
_SEARCH_ADD = {"calibration_batches": "1", "eval_batches": "1", "batch_size": "16"}
_KT = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": "{port}"}
_DIST_SEARCH = dict(
    replace={
        "model_dir": "{tmp}/tiny_model",
        "latency_lut": "{tmp}/lut_int8.json",
        "latency_budget_ms": "{budget}",
        "max_trials": "6",
        "directory": "{tmp}/search_runs",
    },
    add={**_SEARCH_ADD, "population": "4"},
    env=_KT,
    stand_in="loopback chief + workers; tiny untrained supernet (digits); LUT of "
    "tests/search_fakes.fake_lut",
)

# (guide, command index in the guide) -> substitutions.  The visible README -> test mapping.
GUIDES = {
    (1, 0): Sub(
        "elasticvit-train",
        replace={**_TRAIN_TOY, "model_dir": "{tmp}/imagenet"},
        add=_TRAIN_ADD,
        env={"README_MOCK_TFDS": MOCK, "README_LOGICAL_CPUS": "2"},
        stand_in="mock imagenet2012 (tfds.testing.mock_data); 2 logical CPUs = 2 GPUs; "
        "two small .keras teachers",
    ),
    (1, 1): Sub(
        "elasticvit-train",
        replace={**_TRAIN_TOY, "model_dir": "{tmp}/imagenet_mw"},
        add=_TRAIN_ADD,
        env={"README_MOCK_TFDS": MOCK, "TF_CONFIG": "{tf_config}"},
        stand_in="two worker processes on 127.0.0.1 (free ports), mock imagenet2012",
    ),
    (2, 0): Sub(
        "elasticvit-convert",
        replace={"checkpoint": "{tmp}/elasticvit_supernet.pth", "model_dir": "{tmp}/official"},
        add={"space": "tiny"},
        stand_in="synthetic official checkpoint of the tiny space (tests/numpy_reference.py)",
    ),
    (2, 1): Sub("elasticvit-info", stand_in="none: runs as written"),
    (2, 2): Sub(
        "elasticvit-export",
        replace={
            "model_dir": "{tmp}/official",
            "arch": "{tmp}/tiny_arch.json",
            "verify_images": "16",
            "output_dir": "{tmp}/export/elastic_S1",
        },
        add={
            "space": "tiny",
            "calibration_batches": "2",
            "warmup_runs": "1",
            "benchmark_runs": "3",
        },
        env={"TFDS_DATA_DIR": "{tmp}/tfds", "README_MOCK_TFDS": MOCK},
        stand_in="elastic_S1 -> the tiny space's min arch; mock imagenet2012",
    ),
    (3, 0): Sub(
        "elasticvit-lut",
        replace={
            "space": "tiny",
            "benchmark_model_path": "{tmp}/benchmark_model",
            "budget_s": "10",
            "output_dir": "{tmp}/luts",
        },
        add={"warmup": "1", "runs": "3", "num_calibration": "2"},
        stand_in=_ADB,
    ),
    (3, 1): Sub(
        "elasticvit-search",
        replace={
            "model_dir": "{tmp}/tiny_model",
            "latency_lut": "{lut_int8}",
            "latency_budget_ms": "{budgets}",
            "max_trials": "4",
            "population": "4",
            "parents": "2",
            "directory": "{tmp}/search_runs",
        },
        add=_SEARCH_ADD,
        stand_in="tiny untrained supernet (digits); the LUT the fake phone just gave; budgets "
        "at 50% and 100% between its min and max subnet",
    ),
    (4, 0): Sub("elasticvit-search", **_DIST_SEARCH),
    (4, 1): Sub("elasticvit-search", **_DIST_SEARCH),
    (4, 2): Sub("elasticvit-search", **_DIST_SEARCH),
    (5, 0): Sub(
        "elasticvit-export",
        replace={
            "model_dir": "{tmp}/tiny_model",
            "arch": "{tmp}/search_runs/phone/best_arch_30.json",
            "representative_steps": "16",
            "max_accuracy_drop": "100",  # untrained toy weights: accuracy is chance level
            "benchmark_model_path": "{tmp}/benchmark_model",
            "output_dir": "{tmp}/export/phone",
        },
        add={"calibration_batches": "2", "verify_images": "32", "warmup_runs": "1"},
        stand_in=_ADB + "; best_arch_30.json written as elasticvit-search writes it",
    ),
    (5, 1): Sub(
        "elasticvit-export",
        replace={
            "tflite": "{tmp}/export/phone/model_int8.tflite",
            "benchmark_model_path": "{tmp}/benchmark_model",
            "output_dir": "{tmp}/export/phone/profile",
        },
        add={"warmup_runs": "1", "benchmark_runs": "3"},
        stand_in=_ADB + " (op profiling: tests/data/benchmark_model_op_profiling.txt)",
    ),
}


# ------------------------------------------------------------------------------ parsing
@dataclasses.dataclass
class Command:
    env: dict
    argv: list

    @property
    def binary(self) -> str:
        return self.argv[0]

    def flags(self) -> list[tuple[str, str]]:
        out = []
        for a in self.argv[1:]:
            m = re.fullmatch(r"--([A-Za-z0-9_]+)(?:=(.*))?", a)
            assert m, f"{a!r} in {self.argv}: README guide commands use --flag=value"
            out.append((m.group(1), m.group(2)))
        return out


def _blocks(text: str):
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        yield m.group(1), m.group(2)


def parse_guides(text: str) -> tuple[dict, dict]:
    """(guide number -> [Command], flagfile name -> [(flag, value)]) of README's Guides."""
    section = ("\n" + text).split("\n## Guides", 1)[1].split("\n## ", 1)[0]
    guides, flagfiles = {}, {}
    for part in re.split(r"^### ", section, flags=re.M)[1:]:
        number = int(re.match(r"(\d+)\.", part).group(1))
        commands, env = [], {}
        for lang, body in _blocks(part):
            if lang == "text":
                first, _, rest = body.partition("\n")
                m = re.match(r"# (\S+\.flags)", first)
                assert m, f"guide {number}: a text block must start with '# NAME.flags'"
                flagfiles[m.group(1)] = Command({}, ["flagfile"] + rest.split()).flags()
                continue
            assert lang == "bash", f"guide {number}: unexpected block language {lang!r}"
            for line in re.sub(r"\\\n\s*", " ", body).splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                tokens = shlex.split(line)
                if tokens[0] == "export":
                    name, value = tokens[1].split("=", 1)
                    env[name] = value
                    continue
                prefix = {}
                while "=" in tokens[0] and re.match(r"[A-Z_]+=", tokens[0]):
                    name, value = tokens.pop(0).split("=", 1)
                    prefix[name] = value
                assert tokens[0].startswith("elasticvit-"), f"not a project binary: {line}"
                commands.append(Command({**env, **prefix}, tokens))
        guides[number] = commands
    return guides, flagfiles


def _readme():
    with open(README) as f:
        return parse_guides(f.read())


# ------------------------------------------------------------------------------ fast checks
def test_table_covers_every_command():
    guides, flagfiles = _readme()
    found = {(g, i): c for g, cmds in guides.items() for i, c in enumerate(cmds)}
    assert set(found) == set(GUIDES), (
        f"README guide commands without a GUIDES row: {sorted(set(found) - set(GUIDES))}; "
        f"rows without a command: {sorted(set(GUIDES) - set(found))}"
    )
    for key, cmd in found.items():
        sub = GUIDES[key]
        assert cmd.binary == sub.binary, f"{key}: README runs {cmd.binary}, table {sub.binary}"
        names = {n for n, _ in cmd.flags()}
        for n, v in cmd.flags():
            if n == "flagfile":
                assert v in flagfiles, f"{key}: --flagfile={v} is not shown in the README"
                names |= {f for f, _ in flagfiles[v]}
        missing = sorted(set(sub.replace) - names)
        assert not missing, f"{key}: flags to replace are not in the README command: {missing}"
        already = sorted(set(sub.add) & names)
        assert not already, f"{key}: flags to add are already in the README command: {already}"


def test_parser_reads_commands_env_and_flagfiles():
    text = (
        "## Guides\n### 1. X\n```text\n# a.flags: c\n--x=1\n```\n```bash\nexport A=1\n"
        "# note\nB=2 elasticvit-info --arch=elastic_S1 \\\n    --json\n```\n## Next\n"
    )
    guides, flagfiles = parse_guides(text)
    assert flagfiles == {"a.flags": [("x", "1")]}
    (cmd,) = guides[1]
    assert cmd.env == {"A": "1", "B": "2"}
    assert cmd.argv == ["elasticvit-info", "--arch=elastic_S1", "--json"]
    assert cmd.flags() == [("arch", "elastic_S1"), ("json", None)]


def _defined_flags(binary: str) -> set:
    """Flag names a console script defines (in a subprocess: absl flags are global)."""
    code = (
        "import sys\n"
        "from importlib.metadata import entry_points\n"
        "from absl import flags\n"
        f"ep = [e for e in entry_points(group='console_scripts') if e.name == {binary!r}][0]\n"
        "import importlib\n"
        "mod = importlib.import_module(ep.module)\n"
        "before = set(flags.FLAGS)\n"
        "mod.define_flags()\n"
        "print(' '.join(sorted(set(flags.FLAGS) - before)))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert r.returncode == 0, f"{binary}: cannot list its flags:\n{r.stderr[-2000:]}"
    return set(r.stdout.split())


# Flags the README shows that a binary does not define yet (reported to the lead). The test
# fails when one of them appears, so that this entry and the guide's xfail mark go.
KNOWN_MISSING: dict = {}


def test_every_readme_flag_exists_in_its_binary():
    guides, flagfiles = _readme()
    wanted: dict[str, set] = {}
    for cmds in guides.values():
        for cmd in cmds:
            for n, v in cmd.flags():
                if n == "flagfile":
                    wanted.setdefault(cmd.binary, set()).update(f for f, _ in flagfiles[v])
                else:
                    wanted.setdefault(cmd.binary, set()).add(n)
    for key, sub in GUIDES.items():  # the toy flags too
        wanted.setdefault(sub.binary, set()).update(sub.add)
    problems = []
    for binary, names in sorted(wanted.items()):
        defined = _defined_flags(binary)
        names = {n[2:] if n.startswith("no") and n[2:] in defined else n for n in names}
        known = KNOWN_MISSING.get(binary, set())
        if sorted(names - defined - known):
            problems.append(f"{binary}: {sorted(names - defined - known)}")
        if sorted(known & defined):
            problems.append(f"{binary}: now defined, remove from KNOWN_MISSING: {known & defined}")
    assert not problems, "flags used by the README guides but not defined:\n" + "\n".join(problems)


# ------------------------------------------------------------------------------ running
def _toy_command(key, cmd: Command, flagfiles: dict, ctx: dict, tmp) -> tuple[list, dict]:
    """The README command with the table's substitutions: (argv, env)."""
    sub = GUIDES[key]

    def fill(value):
        return value.format(**ctx) if value is not None else None

    def apply(flags):
        return [(n, fill(sub.replace[n]) if n in sub.replace else v) for n, v in flags]

    argv = [cmd.binary]
    for n, v in apply(cmd.flags()):
        if n == "flagfile":
            path = os.path.join(str(tmp), v)
            with open(path, "w") as f:
                f.write("".join(f"--{fn}={fv}\n" for fn, fv in apply(flagfiles[v])))
            v = path
        argv.append(f"--{n}" if v is None else f"--{n}={v}")
    argv += [f"--{n}={fill(v)}" for n, v in sub.add.items()]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.update(cmd.env)
    env.update({k: fill(v) for k, v in sub.env.items()})
    env["PATH"] = ctx["adb_path"] + os.pathsep + env["PATH"]
    return argv, env


def _start(argv, env, log_path):
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, FIXTURES] + argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
    )
    proc.log_path = log_path
    return proc


def _wait(procs, timeout=900):
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    outputs = []
    for p in procs:
        with open(p.log_path) as f:
            out = f.read()
        assert p.returncode == 0, f"{p.args[2:]} exited {p.returncode}:\n{out[-4000:]}"
        outputs.append(out)
    return outputs


def _run(key, cmd, flagfiles, ctx, tmp, name, **env_over):
    argv, env = _toy_command(key, cmd, flagfiles, ctx, tmp)
    env.update(env_over)
    return _wait([_start(argv, env, os.path.join(str(tmp), f"{name}.log"))])[0]


@pytest.fixture
def ctx(tmp_path):
    adb = rf.install_fake_adb(str(tmp_path / "phone"))
    (tmp_path / "benchmark_model").write_bytes(b"\x7fELF fake benchmark_model")
    return {"tmp": str(tmp_path), "adb_path": adb["path"], "adb_log": adb["log"]}


def _read_json(path):
    with open(path) as f:
        return json.load(f)


@pytest.mark.slow
def test_guide_1_imagenet_mirrored_and_multi_worker(tmp_path, ctx):
    guides, flagfiles = _readme()
    for name in ("teacher_a", "teacher_b"):
        rf.write_teacher(str(tmp_path / f"{name}.keras"), 1000, seed=len(name))
    mirrored, multi = guides[1]
    _run((1, 0), mirrored, flagfiles, ctx, tmp_path, "mirrored")
    config = _read_json(str(tmp_path / "imagenet" / "config.json"))
    assert config["num_replicas"] == 2 and config["num_classes"] == 1000
    assert config["data"]["dataset"] == "tfds:imagenet2012"
    assert glob.glob(str(tmp_path / "imagenet" / "checkpoints" / "*.index"))

    ports = [rf.free_port(), rf.free_port()]
    procs = []
    for index in (0, 1):
        ctx["tf_config"] = rf.loopback_tf_config(ports, index)
        argv, env = _toy_command((1, 1), multi, flagfiles, ctx, tmp_path)
        procs.append(_start(argv, env, str(tmp_path / f"worker{index}.log")))
    _wait(procs)
    config = _read_json(str(tmp_path / "imagenet_mw" / "config.json"))
    assert config["num_replicas"] == 2 and config["train"]["sampler"] == "elasticvit"
    assert glob.glob(str(tmp_path / "imagenet_mw" / "checkpoints" / "*.index"))


@pytest.mark.slow
def test_guide_2_official_checkpoint_convert_and_export(tmp_path, ctx):
    from elasticvit_tf.space import get_space

    guides, flagfiles = _readme()
    rf.write_official_checkpoint(str(tmp_path / "elasticvit_supernet.pth"), "tiny", 1000)
    (tmp_path / "tiny_arch.json").write_text(get_space("tiny").min_arch().to_json())
    convert, info, export = guides[2]
    out = _run((2, 0), convert, flagfiles, ctx, tmp_path, "convert")
    assert "space tiny, 1000 classes" in out
    out = _run((2, 1), info, flagfiles, ctx, tmp_path, "info")
    assert "total: 217.64 MFLOPs" in out  # the published elastic_S1
    _run((2, 2), export, flagfiles, ctx, tmp_path, "export")
    report = _read_json(str(tmp_path / "export" / "elastic_S1" / "export_report.json"))
    assert list(report["modes"]) == ["float32"]
    assert report["modes"]["float32"]["verification"]["passed"]
    assert os.path.isfile(str(tmp_path / "export" / "elastic_S1" / "model_float32.tflite"))


def _budgets(lut_path, fractions):
    from elasticvit_tf.lut import load_predictor
    from elasticvit_tf.space import get_space

    space = get_space("tiny")
    pred = load_predictor(lut_path, space)
    lo, hi = pred.predict(space.min_arch()), pred.predict(space.max_arch())
    return [round(lo + f * (hi - lo), 4) for f in fractions]


@pytest.mark.slow
def test_guide_3_phone_lut_over_adb_then_search(tmp_path, ctx):
    guides, flagfiles = _readme()
    rf.write_tiny_model_dir(str(tmp_path / "tiny_model"))
    lut, search = guides[3]
    _run((3, 0), lut, flagfiles, ctx, tmp_path, "lut")
    luts = {}
    for mode in ("fp32", "int8"):
        (path,) = glob.glob(str(tmp_path / "luts" / f"lut_tiny_adb-R58M1234ABC_{mode}_t4_*.json"))
        luts[mode] = _read_json(path)
        assert luts[mode]["provenance"]["target"] == "adb:R58M1234ABC"
        assert luts[mode]["provenance"]["num_threads"] == 4
        ctx[f"lut_{mode}"] = path
    calls = open(ctx["adb_log"]).read()
    assert "push " + str(tmp_path / "benchmark_model") in calls and "--num_threads=4" in calls
    # the fake phone's latency grows with the file: the int8 blocks are faster in total
    fp32 = {json.dumps(e["op"], sort_keys=True): e["latency_ms"] for e in luts["fp32"]["entries"]}
    both = [
        (fp32[k], e["latency_ms"])
        for e in luts["int8"]["entries"]
        if (k := json.dumps(e["op"], sort_keys=True)) in fp32
    ]
    assert len(both) >= 4 and sum(i8 for _, i8 in both) < sum(f32 for f32, _ in both)

    budgets = _budgets(ctx["lut_int8"], (0.5, 1.0))
    ctx["budgets"] = ",".join(str(b) for b in budgets)
    _run((3, 1), search, flagfiles, ctx, tmp_path, "search")
    project = tmp_path / "search_runs" / "phone"
    for b in budgets:
        best = _read_json(str(project / f"best_arch_{b:g}.json"))
        assert best["latency_mode"] == "int8" and best["metrics"]["latency_ms"] <= b
    assert (project / "pareto.json").is_file() and (project / "report.md").is_file()


@pytest.mark.slow
def test_guide_4_distributed_search_chief_and_workers(tmp_path, ctx):
    from search_fakes import fake_lut

    from elasticvit_tf.space import get_space

    guides, flagfiles = _readme()
    rf.write_tiny_model_dir(str(tmp_path / "tiny_model"))
    (tmp_path / "lut_int8.json").write_text(json.dumps(fake_lut(get_space("tiny"), "int8")))
    ctx["budget"] = str(_budgets(str(tmp_path / "lut_int8.json"), (0.6,))[0])
    ctx["port"] = str(rf.free_port())
    procs = []
    for i, cmd in enumerate(guides[4]):
        argv, env = _toy_command((4, i), cmd, flagfiles, ctx, tmp_path)
        procs.append(_start(argv, env, str(tmp_path / f"{cmd.env['KERASTUNER_TUNER_ID']}.log")))
    _wait(procs)
    trials = [
        _read_json(p)
        for p in glob.glob(str(tmp_path / "search_runs" / "phone_dist" / "*/trial.json"))
    ]
    done = [t for t in trials if t.get("status") == "COMPLETED"]
    assert len(done) == 6, [t.get("status") for t in trials]
    budget = float(ctx["budget"])  # the chief writes the reports
    best = _read_json(str(tmp_path / "search_runs" / "phone_dist" / f"best_arch_{budget:g}.json"))
    assert best["metrics"]["latency_ms"] <= budget and best["budget_ms"] == budget


@pytest.mark.slow
def test_guide_5_int8_export_for_android_and_profiling(tmp_path, ctx):
    from elasticvit_tf.space import get_space

    guides, flagfiles = _readme()
    rf.write_tiny_model_dir(str(tmp_path / "tiny_model"))
    space = get_space("tiny")
    arch = space.min_arch()
    project = tmp_path / "search_runs" / "phone"
    project.mkdir(parents=True)
    best = {  # the shape elasticvit-search writes (search/report.py)
        "arch": json.loads(arch.to_json()),
        "metrics": {"top1": 10.0, "latency_ms": 25.0, "mflops": 1.0},
        "budget_ms": 30.0,
        "latency_mode": "int8",
        "space": "tiny",
        "space_hash": space.fingerprint(),
        "trial_id": "0000",
        "arch_key": arch.key(),
    }
    (project / "best_arch_30.json").write_text(json.dumps(best))
    export, profile = guides[5]
    _run((5, 0), export, flagfiles, ctx, tmp_path, "export")
    out_dir = tmp_path / "export" / "phone"
    report = _read_json(str(out_dir / "export_report.json"))
    modes = report["modes"]
    assert sorted(modes) == ["float32", "int8"]
    for m in modes.values():
        assert m["benchmark"]["target"] == "adb:R58M1234ABC"
    sizes = {k: os.path.getsize(str(out_dir / f"model_{k}.tflite")) for k in modes}
    assert sizes["int8"] < sizes["float32"]
    # the fake phone's latency follows the file size (tests/readme_fixtures.py)
    assert modes["int8"]["benchmark"]["mean_ms"] < modes["float32"]["benchmark"]["mean_ms"]

    out = _run((5, 1), profile, flagfiles, ctx, tmp_path, "profile")
    bench = _read_json(str(out_dir / "profile" / "benchmark_report.json"))
    assert bench["target"] == "adb:R58M1234ABC" and bench["op_profile"]
    assert "BATCH_MATMUL" in out
