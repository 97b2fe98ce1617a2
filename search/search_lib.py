"""Flag-free search library: ``run_search(SearchConfig) -> dict`` (used by the binary and demo),
and ``run_budget_searches`` (one search under several budgets, a fallback search per budget
that no trial fits).

Steps: resolve the space (from the model_dir's config), load the latency predictor (a LUT for
one quantization mode, refused if it belongs to another space or mode), check the constraints
up front (a budget below the smallest subnet's latency is a ``ValueError``), build the oracle
(evolution or random; the evolution's initial population starts from the trained memory banks
when the checkpoint holds them), run the Keras Tuner search (local, or chief/worker through
``KERASTUNER_*`` variables) and write the reports from all trials.

Every user-input problem raises ``ValueError`` with a message naming what was received and
what was expected; the binary turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Optional, Sequence

from elasticvit_tf.arch import ArchConfig
from elasticvit_tf.search.budgets import LatencyBudgets
from elasticvit_tf.space import SearchSpace, get_space

logger = logging.getLogger(__name__)

ORACLES = ("evolution", "random")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Everything a search needs (the binary's flags, resolved).

    Attributes:
        model_dir: trained supernet (``elasticvit-train`` / ``elasticvit-convert`` output).
        space: expected space preset; None = the one recorded in the model_dir.
        latency_lut: latency LUT JSON (``elasticvit-lut``); required with a latency budget.
        latency_mode: quantization mode the LUT must hold (fp32, fp16, dynamic_int8, int8...).
        latency_budgets_ms: the budgets (``LatencyBudgets``; a sequence of milliseconds is
            turned into one); the oracle's constraint is the largest, the best arch of every
            budget comes from all trials.
        mflops_range: optional ``(lo, hi)`` FLOPs window (official MFLOPs).
        max_trials: trials in total (resuming counts the ones already done).
        population, parents: evolution sizes (spec: 512 and 256); parents None = population/2.
        mutation_prob, depth_mutation_prob: docs/method.md#search (0.2, 0.4).
        seed: oracle seed (spec: 2012).
        directory, project_name: Keras Tuner project (re-running the same one resumes).
        output_dir: reports go here (default: the project directory).
        calibration_batches: BN recalibration batches per arch (spec: 65 in search).
        eval_batches: ``search``-split batches per arch; None = the whole split.
        batch_size: batch size of calibration and evaluation.
        oracle: ``"evolution"`` or ``"random"`` (baseline).
        use_memory_banks: seed the initial population from the checkpoint's sampler banks.
        overwrite: discard an existing project of the same name.
    """

    model_dir: Optional[str] = None
    space: Optional[str] = None
    latency_lut: Optional[str] = None
    latency_mode: Optional[str] = None
    latency_budgets_ms: LatencyBudgets = LatencyBudgets()
    mflops_range: Optional[tuple[float, float]] = None
    max_trials: int = 256
    population: int = 64
    parents: Optional[int] = None
    mutation_prob: float = 0.2
    depth_mutation_prob: float = 0.4
    seed: int = 2012
    directory: str = "search_runs"
    project_name: str = "elasticvit_search"
    output_dir: Optional[str] = None
    calibration_batches: int = 65
    eval_batches: Optional[int] = None
    batch_size: int = 96
    oracle: str = "evolution"
    use_memory_banks: bool = True
    overwrite: bool = False
    device_budgets_ms: tuple[LatencyBudgets, ...] = ()
    device_names: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "latency_budgets_ms", LatencyBudgets.of(self.latency_budgets_ms))
        object.__setattr__(
            self, "device_budgets_ms", tuple(LatencyBudgets.of(b) for b in self.device_budgets_ms)
        )
        object.__setattr__(self, "device_names", tuple(str(n) for n in self.device_names or ()))
        if self.multi_device and self.latency_budgets_ms:
            raise ValueError(
                f"latency_lut={self.latency_lut}: several LUTs take one budget list per LUT "
                "(device_budgets_ms, the flag's 'a,b;c,d' form), not latency_budgets_ms"
            )
        if not self.multi_device and (self.device_budgets_ms or self.device_names):
            raise ValueError(
                "device_budgets_ms / device_names need several LUTs (latency_lut='a.json,"
                f"b.json'); received latency_lut={self.latency_lut!r}"
            )
        if self.mflops_range is not None:
            if len(self.mflops_range) != 2:
                raise ValueError(f"mflops_range={self.mflops_range!r}: expected (lo, hi)")
            lo, hi = (float(v) for v in self.mflops_range)
            if not 0 <= lo <= hi:
                raise ValueError(f"mflops_range=({lo:g}, {hi:g}): expected 0 <= lo <= hi")
            object.__setattr__(self, "mflops_range", (lo, hi))
        if self.oracle not in ORACLES:
            raise ValueError(f"oracle={self.oracle!r}: expected one of {ORACLES}")
        for name in ("max_trials", "population", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r}: expected a positive integer")
        if self.calibration_batches < 0:
            raise ValueError(f"calibration_batches={self.calibration_batches}: expected >= 0")
        if self.eval_batches is not None and self.eval_batches < 1:
            raise ValueError(f"eval_batches={self.eval_batches}: expected None or >= 1")

    @property
    def lut_paths(self) -> list[str]:
        """The LUT paths (``latency_lut`` is one path or a comma list, one per device)."""
        return [p.strip() for p in (self.latency_lut or "").split(",") if p.strip()]

    @property
    def multi_device(self) -> bool:
        """Several LUTs: one search for several devices (``search/devices.py``)."""
        return len(self.lut_paths) > 1

    @property
    def parents_or_default(self) -> int:
        return self.parents if self.parents is not None else max(1, self.population // 2)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON values (the budgets as a list of milliseconds)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return dict(
            d,
            latency_budgets_ms=self.latency_budgets_ms.to_list(),
            device_budgets_ms=[b.to_list() for b in self.device_budgets_ms],
            device_names=list(self.device_names),
        )


# --------------------------------------------------------------------------------- pieces
def _role() -> str:
    """``local``, ``chief`` or ``worker`` from Keras Tuner's distribution variables."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "local"
    for var in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        if var not in os.environ:
            raise ValueError(
                f"KERASTUNER_ORACLE_IP is set but {var} is not: a distributed search needs "
                "KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT"
            )
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def resolve_space(config: SearchConfig) -> tuple[SearchSpace, Optional[dict]]:
    """The space (and the model_dir config when there is a model_dir)."""
    if config.model_dir is None:
        if config.space is None:
            raise ValueError("no --model_dir and no --space: expected at least one")
        return get_space(config.space), None
    from elasticvit_tf import model_dir as md

    if not os.path.isdir(config.model_dir):
        raise ValueError(
            f"--model_dir={config.model_dir}: no such directory; expected a model_dir written by "
            "elasticvit-train or elasticvit-convert"
        )
    mcfg = md.read_config(config.model_dir)
    try:
        space = md.space_from_config(mcfg, config.space)
    except ValueError as e:
        raise ValueError(f"--model_dir={config.model_dir}: {e}") from None
    return space, mcfg


def load_latency_predictor(config: SearchConfig, space: SearchSpace):
    """The LUT predictor, or a FLOPs proxy (1 ms per MFLOP, mode "flops") without a LUT."""
    from elasticvit_tf import lut
    from elasticvit_tf.search import latency

    if not config.latency_lut:
        return latency.FlopsProxyPredictor(space, ms_per_mflop=1.0)
    if not os.path.isfile(config.latency_lut):
        raise ValueError(f"--latency_lut={config.latency_lut}: no such file; expected a LUT JSON")
    try:
        pred = lut.load_predictor(config.latency_lut, space, mode=config.latency_mode)
        lut.check_covers(pred, space)
        return pred
    except ValueError as e:
        raise ValueError(f"--latency_lut={config.latency_lut}: {e}") from None


def memory_bank_archs(model_dir: str, space: SearchSpace) -> list[ArchConfig]:
    """Archs of the sampler's memory banks in the latest checkpoint, best score first (may be
    empty)."""
    from elasticvit_tf import model_dir as md
    from elasticvit_tf.sampling.level_samplers import bank_archs

    try:
        state = md.read_sampler_state(model_dir)
        archs = bank_archs(state) if state else []
    except ValueError as e:  # a malformed sampler state only costs the seeding
        logger.info("no sampler state readable in %s (%s): population not seeded", model_dir, e)
        return []
    if not state:
        logger.info("checkpoint of %s holds no sampler state: population not seeded", model_dir)
        return []
    archs = [a for a in archs if space.contains(a)]
    logger.info("memory banks: %d archs seed the initial population", len(archs))
    return archs


def build_evaluator(config: SearchConfig, space: SearchSpace):
    """``SubnetEvaluator`` over the model_dir's supernet (EMA weights) and data config."""
    from elasticvit_tf import data as data_lib
    from elasticvit_tf import model_dir as md
    from elasticvit_tf.search.evaluator import SubnetEvaluator

    try:
        net, mcfg = md.load_supernet(config.model_dir, space_name=space.name, use_ema=True)
    except ValueError as e:
        raise ValueError(f"--model_dir={config.model_dir}: {e}") from None
    if "data" not in mcfg:
        raise ValueError(f"--model_dir={config.model_dir}: config.json has no 'data' entry")
    dcfg = data_lib.DataConfig.from_dict(mcfg["data"])
    cache = data_lib.DataCache(max_sources=1)  # both splits from one read of the source

    def calib():  # rebuilt per arch: the same batches whatever ran before (resume-exact)
        return data_lib.make_dataset(
            dcfg,
            "train",
            config.batch_size,
            training=True,
            repeat=True,
            seed=config.seed,
            cache=cache,
        )

    evald = data_lib.make_dataset(dcfg, "search", config.batch_size, training=False, cache=cache)
    return SubnetEvaluator(
        net,
        calib,
        evald,
        calibration_batches=config.calibration_batches,
        eval_batches=config.eval_batches,
    )


def build_oracle(config, space, predictor, initial_archs: Sequence[ArchConfig] = ()):
    """The oracle; with a ``MultiDevicePredictor`` its budgets are the devices' budgets as
    fractions of each device's largest (``search/devices.py``)."""
    from elasticvit_tf.search import oracle as oracle_lib
    from elasticvit_tf.search.devices import MultiDevicePredictor

    budgets = config.latency_budgets_ms
    if isinstance(predictor, MultiDevicePredictor):
        budgets = predictor.budgets
    common = dict(
        space=space,
        predictor=predictor,
        latency_budgets=budgets,
        mflops_range=config.mflops_range,
        max_trials=config.max_trials,
        seed=config.seed,
    )
    if config.oracle == "random":
        return oracle_lib.ConstrainedRandomOracle(**common)
    return oracle_lib.ConstrainedEvolutionOracle(
        population=config.population,
        parents=config.parents_or_default,
        mutation_prob=config.mutation_prob,
        depth_mutation_prob=config.depth_mutation_prob,
        initial_archs=initial_archs,
        **common,
    )


# ---------------------------------------------------------------------------------- main
def run_search(config: SearchConfig, evaluator=None, predictor=None) -> dict[str, Any]:
    """Runs (or resumes) a search and writes its reports; returns a summary dict.

    Args:
        config: the ``SearchConfig``.
        evaluator: optional ``arch -> top1`` callable replacing the supernet evaluator (tests,
            custom fitness); then ``model_dir`` may be None when ``config.space`` is set.
        predictor: optional latency predictor replacing ``config.latency_lut``.

    Returns:
        ``{"role", "project_dir", "output_dir", "trials", "evaluations", "best": {budget:
        record}, "front": [trial ids], "paths": {...}, "stop_reason"}``; a worker returns only
        ``role``, ``project_dir`` and ``evaluations``.
    """
    from elasticvit_tf.search import oracle as oracle_lib
    from elasticvit_tf.search import report
    from elasticvit_tf.search.tuner import SupernetTuner

    if config.model_dir is None and evaluator is None:
        raise ValueError("--model_dir is required (the trained supernet to search)")
    from elasticvit_tf.search import devices as devices_lib

    role = _role()
    space, _ = resolve_space(config)
    if predictor is None and config.multi_device:
        devices = devices_lib.load_devices(
            space,
            config.lut_paths,
            config.device_budgets_ms or [LatencyBudgets()] * len(config.lut_paths),
            config.device_names,
            config.latency_mode,
        )
        predictor = devices_lib.MultiDevicePredictor(devices)
    devices = getattr(predictor, "devices", None)
    if devices is not None:
        devices_lib.check_feasible(space, devices, config.mflops_range)
    elif predictor is None:
        if config.latency_budgets_ms and not config.latency_lut:
            raise ValueError(
                "a latency budget needs a latency predictor: pass --latency_lut (a LUT JSON "
                "written by elasticvit-lut)"
            )
        predictor = load_latency_predictor(config, space)
    if devices is None:
        # Every listed budget must admit the smallest subnet (a smaller one can never be met).
        oracle_lib.check_feasible(space, predictor, config.latency_budgets_ms, config.mflops_range)

    initial = []
    if (
        config.oracle == "evolution"
        and config.use_memory_banks
        and config.model_dir
        and role != "worker"
    ):
        initial = memory_bank_archs(config.model_dir, space)
    if evaluator is None and role != "chief":
        evaluator = build_evaluator(config, space)
    elif evaluator is None:  # the chief only serves the oracle: it never evaluates
        evaluator = _never_called
    oracle = build_oracle(config, space, predictor, initial)
    cache_meta = {
        "model_dir": os.path.abspath(config.model_dir) if config.model_dir else None,
        "calibration_batches": config.calibration_batches,
        "eval_batches": config.eval_batches,
        "batch_size": config.batch_size,
    }
    tuner = SupernetTuner(
        oracle,
        space,
        evaluator,
        predictor=predictor,
        cache_meta=cache_meta,
        directory=config.directory,
        project_name=config.project_name,
        overwrite=config.overwrite,
    )
    if role != "worker":
        with open(os.path.join(tuner.project_dir, "search_config.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=2)
    from elasticvit_tf import cli

    with cli.deferred_sigterm():  # SIGTERM finishes the running trial, then stops
        tuner.search(verbose=0)
    if role == "worker":
        return {"role": role, "project_dir": tuner.project_dir, "evaluations": tuner.evaluations}

    records = report.trial_records(tuner.oracle, space)
    out_dir = config.output_dir or tuner.project_dir
    mode = getattr(predictor, "mode", None)
    settings = {k: v for k, v in config.to_dict().items() if v not in (None, (), [], "")}
    settings.update(
        {
            "space": space.name,
            "constraint_budget_ms": config.latency_budgets_ms.constraint_ms,
            "oracle_rejections": oracle.rejections,
            "stop_reason": oracle.stop_reason,
        }
    )
    if devices is not None:
        return _device_results(
            config, space, predictor, records, out_dir, settings, tuner, oracle, role
        )
    paths = report.write_reports(
        out_dir, records, space, config.latency_budgets_ms, latency_mode=mode, settings=settings
    )
    from elasticvit_tf.search.pareto import pareto_front

    front = pareto_front([(r["latency_ms"], r["top1"]) for r in records])
    budgets = config.latency_budgets_ms or (None,)
    best = {b: report.best_for_budget(records, b) for b in budgets}
    front_ids = [records[i]["trial_id"] for i in front]
    return _summary(role, tuner, oracle, out_dir, len(records), best, front_ids, paths)


def _summary(role, tuner, oracle, out_dir, trials, best, front, paths) -> dict[str, Any]:
    """``run_search``'s return value (see its docstring)."""
    return {
        "role": role,
        "project_dir": tuner.project_dir,
        "output_dir": out_dir,
        "trials": trials,
        "evaluations": tuner.evaluations,
        "best": best,
        "front": front,
        "paths": paths,
        "stop_reason": oracle.stop_reason,
    }


def _device_results(config, space, predictor, records, out_dir, settings, tuner, oracle, role):
    """Reports and summary of a several-device search: every trial predicted on every device,
    a front and a best arch per device and budget (keys ``<device>/<budget tag>``)."""
    from elasticvit_tf.search import report

    for r in records:
        r["budget_fraction"] = r.pop("latency_ms")
        r["latency_ms_by_device"] = predictor.predict_all(ArchConfig.from_dict(r["arch"]))
    settings = dict(settings, devices={d.name: d.lut_path for d in predictor.devices})
    out = report.write_device_reports(
        out_dir, records, space, predictor.devices, predictor.mode, settings
    )
    return _summary(
        role, tuner, oracle, out_dir, len(records), out["best"], out["front"], out["paths"]
    )


def _never_called(arch):
    raise RuntimeError("the chief serves the oracle and never evaluates archs")


# -------------------------------------------------------------------------- several budgets
def completed_trials(project_dir: str) -> int:
    """Trials of a Keras Tuner project whose ``trial.json`` says COMPLETED (the progress of a
    search running in another thread or process); 0 before the project exists."""
    if not os.path.isdir(project_dir):
        return 0
    n = 0
    for name in os.listdir(project_dir):
        try:
            with open(os.path.join(project_dir, name, "trial.json")) as f:
                n += json.load(f).get("status") == "COMPLETED"
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
    return n


def _chosen(space: SearchSpace, budget: float, rec: Optional[dict], prefix: str):
    """The best record of one budget as the budget searches report it (params included)."""
    from elasticvit_tf.flops import count_params

    if rec is None:
        return None
    return {
        "budget_ms": budget,
        "trial_id": prefix + str(rec["trial_id"]),
        "arch_key": rec["arch_key"],
        "arch": rec["arch"],
        "search_top1": rec["top1"],
        "latency_ms": rec["latency_ms"],
        "mflops": rec["mflops"],
        "params_m": count_params(space, ArchConfig.from_dict(rec["arch"])) / 1e6,
    }


def _front_points(result: dict, prefix: str) -> list[dict]:
    """The trials of one search (from its ``pareto.json``), trial ids prefixed."""
    try:
        with open(result["paths"]["pareto.json"]) as f:
            points = json.load(f).get("points", [])
    except (OSError, json.JSONDecodeError):
        points = []
    keys = ("arch_key", "top1", "latency_ms", "mflops")
    return [
        {"trial_id": prefix + str(p["trial_id"]), **{k: p.get(k) for k in keys}} for p in points
    ]


def run_budget_searches(
    config: SearchConfig,
    space: Optional[SearchSpace] = None,
    search: Callable[[SearchConfig], dict] = run_search,
    log: Callable[[str], None] = logger.info,
) -> dict[str, Any]:
    """One search under all of ``config.latency_budgets_ms`` (the constraint is the largest);
    each budget that no trial fits then gets its own search constrained to it (a quarter of the
    trials, at least 3; project ``<project>/<project>_<budget>ms``), so that every budget has a
    subnet. The Pareto front is recomputed over the trials of all searches
    (``<project>/pareto_all.png``).

    Args:
        config: the search (its budgets, trials and project).
        space: the search space; None = resolved from ``config``.
        search: runs one search (``run_search``, or a wrapper that adds progress or injects an
            evaluator).
        log: one line per search.

    Returns:
        ``{"trials", "stop_reason" (of the first search), "front" (trial ids), "best" ({budget
        tag: record or None}), "points" (every trial), "extra_configs" (the fallback searches'
        ``SearchConfig`` dicts), "paths"}``; the trial ids of a fallback search are prefixed
        ``<budget>ms/``.
    """
    from elasticvit_tf.search.pareto import pareto_front
    from elasticvit_tf.search.report import plot_pareto

    budget_tag = LatencyBudgets.tag
    if config.multi_device:
        raise ValueError(
            f"latency_lut={config.latency_lut}: the per-budget fallback searches take one LUT; "
            "run one search for several devices with run_search"
        )

    if space is None:
        space, _ = resolve_space(config)

    def one(c: SearchConfig, prefix: str) -> dict:
        res = search(c)
        log(f"[search] {c.project_name}: {res['trials']} trials, stop reason: {res['stop_reason']}")
        found = {budget_tag(b): _chosen(space, b, res["best"].get(b), prefix) for b in res["best"]}
        return {**res, "chosen": found, "points": _front_points(res, prefix)}

    first = one(config, "")
    best, points = dict(first["chosen"]), list(first["points"])
    paths, trials, extra = dict(first["paths"]), first["trials"], []
    project_dir = first["project_dir"]
    for b in config.latency_budgets_ms:
        tag = budget_tag(b)
        if best.get(tag) is not None:
            continue
        n = max(3, config.max_trials // 4)
        sub = dataclasses.replace(
            config,
            latency_budgets_ms=(b,),
            max_trials=n,
            population=min(config.population, n),
            directory=project_dir,
            project_name=f"{config.project_name}_{tag}ms",
            output_dir=None,
        )
        log(f"[search] no trial fits {tag} ms: a {n}-trial search constrained to {tag} ms")
        res = one(sub, f"{tag}ms/")
        best[tag] = res["chosen"].get(tag)
        points += res["points"]
        trials += res["trials"]
        extra.append(sub.to_dict())
        paths.update({f"{tag}ms/{k}": v for k, v in res["paths"].items()})
    front_idx = pareto_front([(p["latency_ms"], p["top1"]) for p in points])
    front = [points[i]["trial_id"] for i in front_idx]
    for p in points:
        p["on_front"] = p["trial_id"] in front
    paths["pareto_all.png"] = os.path.join(project_dir, "pareto_all.png")
    plot_pareto(
        paths["pareto_all.png"],
        points,
        set(front),
        list(config.latency_budgets_ms),
        f"predicted latency (ms), {config.latency_mode}",
    )
    return {
        "trials": trials,
        "stop_reason": first["stop_reason"],
        "front": front,
        "best": best,
        "points": points,
        "extra_configs": extra,
        "paths": paths,
    }
