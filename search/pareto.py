"""Pareto front of (predicted latency, top-1): minimise latency, maximise accuracy.

A point ``a`` dominates ``b`` when ``a.x <= b.x`` and ``a.y >= b.y`` with at least one strict
inequality. The front is the set of points no other point dominates (exact duplicates of a
front point are on the front too). Points with a non-finite coordinate are never on it.
"""

from __future__ import annotations

import math
from typing import Sequence


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether ``a = (x, y)`` dominates ``b`` (lower-or-equal x, higher-or-equal y, one strict)."""
    return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points, sorted by x then index. O(n log n).

    Args:
        points: ``(x, y)`` pairs; x is minimised (latency), y maximised (top-1).
    """
    finite = [
        i for i, (x, y) in enumerate(points) if math.isfinite(float(x)) and math.isfinite(float(y))
    ]
    order = sorted(finite, key=lambda i: (float(points[i][0]), -float(points[i][1]), i))
    front: list[int] = []
    best_y = -math.inf  # best y among points with a strictly smaller x
    k = 0
    while k < len(order):
        x = float(points[order[k]][0])
        group = []
        while k < len(order) and float(points[order[k]][0]) == x:
            group.append(order[k])
            k += 1
        top = float(points[group[0]][1])  # the group is sorted by y descending
        if top > best_y:
            front.extend(i for i in group if float(points[i][1]) == top)
            best_y = top
    return front
