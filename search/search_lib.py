"""Flag-free search library: ``run_search(SearchConfig) -> dict`` (used by the binary and demo).

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
from typing import Any, Optional, Sequence

from elasticvit_tf.arch import ArchConfig
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
        latency_budgets_ms: one or more budgets; the oracle's constraint is the largest, the
            best arch of every budget comes from all trials.
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
    latency_budgets_ms: tuple[float, ...] = ()
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

    def __post_init__(self):
        budgets = tuple(float(b) for b in self.latency_budgets_ms)
        object.__setattr__(self, "latency_budgets_ms", budgets)
        for b in budgets:
            if not b > 0:
                raise ValueError(f"latency budget {b:g} ms: expected positive budgets")
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
    def parents_or_default(self) -> int:
        return self.parents if self.parents is not None else max(1, self.population // 2)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    from elasticvit_tf.search import latency

    if not config.latency_lut:
        return latency.FlopsProxyPredictor(space, ms_per_mflop=1.0)
    if not os.path.isfile(config.latency_lut):
        raise ValueError(f"--latency_lut={config.latency_lut}: no such file; expected a LUT JSON")
    load = getattr(latency, "load_predictor", None)
    if load is None:
        raise ValueError("this build has no LUT predictor (search/latency.py load_predictor)")
    try:
        return load(config.latency_lut, space, mode=config.latency_mode)
    except ValueError as e:
        raise ValueError(f"--latency_lut={config.latency_lut}: {e}") from None


def memory_bank_archs(model_dir: str, space: SearchSpace) -> list[ArchConfig]:
    """Archs of the sampler's memory banks stored in the latest checkpoint (may be empty)."""
    from elasticvit_tf import model_dir as md
    from elasticvit_tf.search.evaluator import archs_in

    state = None
    reader = getattr(md, "read_sampler_state", None)
    try:
        if reader is not None:
            state = reader(model_dir)
        else:
            import tensorflow as tf

            path = md.latest_checkpoint(model_dir)
            if path is not None and md.checkpoint_has(path, "sampler"):
                raw = tf.train.load_variable(path, "sampler/.ATTRIBUTES/VARIABLE_VALUE")
                state = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except Exception as e:  # a missing/odd sampler state only costs the seeding
        logger.info("no sampler state readable in %s (%s): population not seeded", model_dir, e)
        return []
    if not state:
        logger.info("checkpoint of %s holds no sampler state: population not seeded", model_dir)
        return []
    banks = state.get("banks", state) if isinstance(state, dict) else state
    scored = []
    if isinstance(banks, list):  # samplers' layout: one [[arch dict, score], ...] per level
        for bank in banks:
            for entry in bank if isinstance(bank, list) else ():
                if isinstance(entry, (list, tuple)) and len(entry) == 2:
                    found = list(archs_in(entry[0]))
                    if found and isinstance(entry[1], (int, float)):
                        scored.append((float(entry[1]), found[0]))
    if scored:  # best bank score first: they open the population in this order
        scored.sort(key=lambda sa: -sa[0])
        archs = [a for _, a in scored]
    else:
        archs = list(archs_in(banks))
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

    def calib():  # rebuilt per arch: the same batches whatever ran before (resume-exact)
        return data_lib.make_dataset(
            dcfg, "train", config.batch_size, training=True, repeat=True, seed=config.seed
        )

    evald = data_lib.make_dataset(dcfg, "search", config.batch_size, training=False)
    return SubnetEvaluator(
        net,
        calib,
        evald,
        calibration_batches=config.calibration_batches,
        eval_batches=config.eval_batches,
    )


def build_oracle(config, space, predictor, initial_archs: Sequence[ArchConfig] = ()):
    from elasticvit_tf.search import oracle as oracle_lib

    budget = max(config.latency_budgets_ms) if config.latency_budgets_ms else None
    common = dict(
        space=space,
        predictor=predictor,
        latency_budget_ms=budget,
        mflops_range=config.mflops_range,
        max_trials=config.max_trials,
        seed=config.seed,
        # several budgets: every one gets its share of the random draws (and of the parents)
        budget_strata_ms=config.latency_budgets_ms if len(config.latency_budgets_ms) > 1 else (),
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
    role = _role()
    space, _ = resolve_space(config)
    if predictor is None:
        if config.latency_budgets_ms and not config.latency_lut:
            raise ValueError(
                "a latency budget needs a latency predictor: pass --latency_lut (a LUT JSON "
                "written by elasticvit-lut)"
            )
        predictor = load_latency_predictor(config, space)
    budget = max(config.latency_budgets_ms) if config.latency_budgets_ms else None
    # Every listed budget must admit the smallest subnet (a smaller one can never be met).
    smallest_budget = min(config.latency_budgets_ms) if config.latency_budgets_ms else None
    oracle_lib.check_feasible(space, predictor, smallest_budget, config.mflops_range)

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
    settings = {k: v for k, v in config.to_dict().items() if v not in (None, (), "")}
    settings.update(
        {
            "space": space.name,
            "constraint_budget_ms": budget,
            "oracle_rejections": oracle.rejections,
            "stop_reason": oracle.stop_reason,
        }
    )
    paths = report.write_reports(
        out_dir, records, space, config.latency_budgets_ms, latency_mode=mode, settings=settings
    )
    from elasticvit_tf.search.pareto import pareto_front

    front = pareto_front([(r["latency_ms"], r["top1"]) for r in records])
    budgets = config.latency_budgets_ms or (None,)
    return {
        "role": role,
        "project_dir": tuner.project_dir,
        "output_dir": out_dir,
        "trials": len(records),
        "evaluations": tuner.evaluations,
        "best": {b: report.best_for_budget(records, b) for b in budgets},
        "front": [records[i]["trial_id"] for i in front],
        "paths": paths,
        "stop_reason": oracle.stop_reason,
    }


def _never_called(arch):
    raise RuntimeError("the chief serves the oracle and never evaluates archs")
