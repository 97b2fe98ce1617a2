"""search/budgets.py: LatencyBudgets validation, parsing, the oracle's view and the tags."""

import pytest

from elasticvit_tf.search.budgets import LatencyBudgets


def test_sorted_and_views():
    b = LatencyBudgets((4, 2.5, 3))
    assert b.ms == (2.5, 3.0, 4.0) and list(b) == [2.5, 3.0, 4.0] and len(b) == 3
    assert b.constraint_ms == 4.0 and b.smallest_ms == 2.5 and b.strata_ms == b.ms
    assert LatencyBudgets((2.0,)).strata_ms == ()  # one budget: no strata
    none = LatencyBudgets()
    assert not none and none.constraint_ms is None and none.smallest_ms is None
    assert LatencyBudgets.tag(2.5) == "2.5" and LatencyBudgets.tag(None) == "all"
    assert LatencyBudgets.of(b) is b and LatencyBudgets.of([3, 1]).ms == (1.0, 3.0)
    assert b.to_list() == [2.5, 3.0, 4.0]


@pytest.mark.parametrize(
    "ms, match",
    [
        ((1.0, -2.0), "expected positive milliseconds, received -2"),
        ((0.0,), "expected positive milliseconds, received 0"),
        ((float("inf"),), "expected positive milliseconds, received inf"),
        ((True,), "latency budget True: expected a number"),
        (("2",), "latency budget '2': expected a number"),
        ((2.0, 2), r"expected distinct budgets"),
        ("2,3", "expected a sequence"),
    ],
)
def test_bad_budgets(ms, match):
    with pytest.raises(ValueError, match=match):
        LatencyBudgets(ms)


def test_parse_flag_values_with_units():
    assert LatencyBudgets.parse("3, 2ms,4MS", "--b").ms == (2.0, 3.0, 4.0)
    assert LatencyBudgets.parse(["1.5"], "--b").ms == (1.5,)
    assert not LatencyBudgets.parse([], "--b")
    with pytest.raises(ValueError, match=r"^--b=1,2s: expected numbers of milliseconds"):
        LatencyBudgets.parse("1,2s", "--b")
    with pytest.raises(ValueError, match=r"^--b=1,abc: expected numbers"):
        LatencyBudgets.parse(["1", "abc"], "--b")
    with pytest.raises(ValueError, match=r"^--b=1,-1: expected positive milliseconds"):
        LatencyBudgets.parse("1,-1", "--b")


def test_spread_between_the_smallest_and_largest_subnet():
    assert LatencyBudgets.spread(1.0, 3.0).ms == (1.5, 2.0, 2.5)
    assert LatencyBudgets.spread(1.0, 2.0, fractions=(0.5,)).ms == (1.5,)
    with pytest.raises(ValueError, match=r"latency range \(2, 1\) ms"):
        LatencyBudgets.spread(2.0, 1.0)
