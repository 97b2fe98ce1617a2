"""``DemoConfig``: the settings of one demo run (``elasticvit-demo``'s flags map 1:1 onto it)
and the per-stage plans of the full and the ``--quick`` run.

Kept apart from the pipeline's stages, report and driver so that each of them can read the
settings without importing the others.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from elasticvit_tf.search.budgets import LatencyBudgets

# Per-stage settings of the full run and of ``--quick`` (same code path, smaller numbers).
FULL_PLAN: dict[str, Any] = {
    "train_minutes": 9.0,
    "train_steps": None,  # None: the demo recipe's epochs
    "num_subnets": None,  # None: the demo recipe's (4 per step)
    "max_train_examples": None,
    "search_size": 5000,
    "train_eval_batches": 0,  # whole test split
    "probe_steps": 40,
    "lut_budget_s": 80.0,
    "lut_warmup": 5,
    "lut_runs": 30,
    "lut_calibration": 2,
    "max_trials": 40,
    "population": 16,
    "search_calibration_batches": 10,
    "search_eval_batches": 20,
    "search_batch_size": 96,
    "export_verify_images": 10000,
    "export_calibration_batches": 20,
    "export_representative_steps": 100,
    "export_benchmark_runs": 50,
    "export_warmup_runs": 10,
}
QUICK_PLAN: dict[str, Any] = {
    **FULL_PLAN,
    "train_minutes": 1.5,
    "train_steps": 40,
    "num_subnets": 2,  # max + min per step: half the graph to trace
    "max_train_examples": 2048,
    "search_size": 512,
    "train_eval_batches": 4,
    "probe_steps": 0,  # no probe: a fixed small step count
    "lut_budget_s": 8.0,
    "lut_warmup": 2,
    "lut_runs": 5,
    "lut_calibration": 2,
    "max_trials": 6,
    "population": 4,
    "search_calibration_batches": 3,
    "search_eval_batches": 3,
    "search_batch_size": 64,
    "export_verify_images": 256,
    "export_calibration_batches": 4,
    "export_representative_steps": 32,
    "export_benchmark_runs": 10,
    "export_warmup_runs": 3,
}
TRAIN_PLAN_KEYS = (
    "train_minutes", "train_steps", "max_train_examples", "search_size", "train_eval_batches",
    "probe_steps",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Settings of one demo run (``elasticvit-demo`` flags map 1:1 onto it).

    Attributes:
        output_dir: everything goes here (``model_dir/``, ``lut/``, ``search/``, ``export/``,
            ``report.md``...).
        quick: the ~2-4 minute CI version (fewer steps and examples, small LUT budget, few
            trials); same code path.
        dataset: ``fashion_mnist`` (falls back to ``digits`` with a notice when its files are
            missing), ``digits``, ``tfds:NAME`` or ``folder:PATH``.
        data_dir: folder holding the Fashion-MNIST IDX files (default: the Debian package's).
        seed: seed of training, LUT design and search.
        train_minutes: training time box (the step count is fitted to it); None = plan default.
        train_steps: total training steps; None = plan default (full: 3 epochs).
        max_train_examples: cap on the train split; None = plan default.
        max_trials: search trials; None = plan default.
        budgets_ms: override the three latency budgets (fp32, predicted ms).
        lut_budget_s: LUT measurement budget for both modes; None = plan default.
        resume: reuse finished stages whose inputs are unchanged; False starts afresh.
        num_threads: interpreter threads for the LUT and the benchmarks.
        lut_clock: ``"wall"`` (latency) or ``"cpu"`` (1-thread CPU time: stabler LUTs on a
            shared, overloaded CPU; needs ``num_threads=1``).
        verbose: Keras progress bars (1) or not (0).
    """

    output_dir: str = "runs/demo"
    quick: bool = False
    dataset: str = "fashion_mnist"
    data_dir: Optional[str] = None
    seed: int = 0
    train_minutes: Optional[float] = None
    train_steps: Optional[int] = None
    max_train_examples: Optional[int] = None
    max_trials: Optional[int] = None
    budgets_ms: LatencyBudgets = LatencyBudgets()
    lut_budget_s: Optional[float] = None
    resume: bool = True
    num_threads: int = 1
    lut_clock: str = "wall"
    verbose: int = 1

    def __post_init__(self):
        try:
            object.__setattr__(self, "budgets_ms", LatencyBudgets.of(self.budgets_ms))
        except ValueError as e:
            raise ValueError(f"budgets_ms: {e}") from None
        if not self.output_dir:
            raise ValueError("output_dir: expected a directory path, received an empty string")
        for name in ("train_steps", "max_train_examples", "max_trials", "num_threads"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name}={v!r}: expected a positive integer or None")
        if self.lut_clock not in ("wall", "cpu"):
            raise ValueError(f"lut_clock={self.lut_clock!r}: expected 'wall' or 'cpu'")
        for name in ("train_minutes", "lut_budget_s"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name}={v!r}: expected a positive number or None")

    def plan(self) -> dict[str, Any]:
        """The resolved per-stage settings (plan defaults overridden by explicit fields)."""
        plan = dict(QUICK_PLAN if self.quick else FULL_PLAN)
        for name in ("train_minutes", "train_steps", "max_train_examples", "max_trials"):
            if getattr(self, name) is not None:
                plan[name] = getattr(self, name)
        if self.train_minutes is not None and self.train_steps is None:
            plan["train_steps"] = None  # an explicit time box plans the steps (quick too)
        if self.lut_budget_s is not None:
            plan["lut_budget_s"] = self.lut_budget_s
        return plan

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON values (the budgets as a list of milliseconds)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return dict(d, budgets_ms=self.budgets_ms.to_list())


def command_line(config: DemoConfig) -> str:
    """The ``elasticvit-demo`` command of ``config``: its output dir and every flag that
    differs from the defaults."""
    from elasticvit_tf import cli

    return cli.command(
        "elasticvit-demo",
        config.to_dict(),
        DemoConfig().to_dict(),
        always=("output_dir",),
    )
