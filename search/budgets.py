"""``LatencyBudgets``: the latency budgets of a search, one value validated once.

Built from the flag (``--latency_budget_ms=2,3,4``, or the demo's ``--budgets_ms``) and carried
whole through the search config, the oracle (its constraint is the largest budget; several
budgets stratify its random draws and parents, docs/method.md#search), the reports and the
demo pipeline. ``tag`` is the one spelling of a budget in file names and JSON keys
(``best_arch_<tag>.json``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Iterator, Optional, Sequence, Union


@dataclasses.dataclass(frozen=True)
class LatencyBudgets:
    """Latency budgets in milliseconds (predicted latency): positive, finite, distinct, sorted.

    Empty means no latency constraint. The values are sorted on construction; anything else
    raises ``ValueError`` naming the value and what was expected.

    Attributes:
        ms: the budgets in milliseconds, ascending.
    """

    ms: tuple[float, ...] = ()

    def __post_init__(self):
        if isinstance(self.ms, (str, bytes)) or not isinstance(self.ms, Sequence):
            raise ValueError(f"latency budgets {self.ms!r}: expected a sequence of milliseconds")
        values = []
        for v in self.ms:
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise ValueError(f"latency budget {v!r}: expected a number of milliseconds")
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"expected positive milliseconds, received {float(v):g}")
            values.append(float(v))
        if len(set(values)) != len(values):
            raise ValueError(
                f"latency budgets {[f'{v:g}' for v in values]} ms: expected distinct budgets"
            )
        object.__setattr__(self, "ms", tuple(sorted(values)))

    @classmethod
    def of(cls, budgets: Union["LatencyBudgets", Sequence[float], None]) -> "LatencyBudgets":
        """``budgets`` itself when it is one already, else ``LatencyBudgets(tuple(budgets))``."""
        if isinstance(budgets, cls):
            return budgets
        return cls(tuple(budgets or ()))

    @classmethod
    def spread(
        cls, lo_ms: float, hi_ms: float, fractions: Sequence[float] = (0.25, 0.5, 0.75)
    ) -> "LatencyBudgets":
        """Budgets at ``fractions`` of the way from ``lo_ms`` to ``hi_ms`` (the smallest and the
        largest subnet's predicted latency), rounded to 0.001 ms."""
        if not 0 < lo_ms < hi_ms:
            raise ValueError(
                f"latency range ({lo_ms:g}, {hi_ms:g}) ms: expected 0 < min subnet < max subnet"
            )
        return cls(tuple(round(lo_ms + f * (hi_ms - lo_ms), 3) for f in fractions))

    @classmethod
    def parse(cls, values: Union[str, Sequence[str]], flag: str) -> "LatencyBudgets":
        """From a flag's text: ``"2,3.5"`` or a list of strings, each optionally ending in ``ms``.

        Args:
            values: the flag's value (a comma list or absl's list).
            flag: the flag's name for error messages, e.g. ``"--latency_budget_ms"``.
        """
        items = values.split(",") if isinstance(values, str) else list(values)
        text = ",".join(items)
        ms = []
        for item in items:
            s = item.strip().lower()
            s = s[:-2] if s.endswith("ms") else s
            try:
                ms.append(float(s))
            except ValueError:
                raise ValueError(
                    f"{flag}={text}: expected numbers of milliseconds (e.g. 2,3.5 or 2ms,3.5ms)"
                ) from None
        try:
            return cls(tuple(ms))
        except ValueError as e:
            raise ValueError(f"{flag}={text}: {e}") from None

    def __iter__(self) -> Iterator[float]:
        return iter(self.ms)

    def __len__(self) -> int:
        return len(self.ms)

    def __bool__(self) -> bool:
        return bool(self.ms)

    @property
    def constraint_ms(self) -> Optional[float]:
        """The oracle's constraint: the largest budget (None without budgets)."""
        return self.ms[-1] if self.ms else None

    @property
    def smallest_ms(self) -> Optional[float]:
        """The tightest budget (None without budgets): the smallest subnet must fit it."""
        return self.ms[0] if self.ms else None

    @property
    def strata_ms(self) -> tuple[float, ...]:
        """The budgets the oracle stratifies its draws over: all of them when there are
        several, none for one budget or none."""
        return self.ms if len(self.ms) > 1 else ()

    @staticmethod
    def tag(budget_ms: Optional[float]) -> str:
        """A budget's spelling in file names and JSON keys: ``2.5`` -> ``"2.5"``, None ->
        ``"all"``."""
        return "all" if budget_ms is None else f"{budget_ms:g}"

    def to_list(self) -> list[float]:
        """The budgets as a JSON list (ascending milliseconds)."""
        return list(self.ms)
