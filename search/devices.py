"""Several target devices in one search: one latency LUT and one budget list per device.

``elasticvit-search --latency_lut=a.json,b.json --latency_budget_ms="3,5;8,12"``: the budget
lists are separated by ``;``, in the order of the LUTs (here 3 and 5 ms on ``a``, 8 and 12 ms
on ``b``); a device is named by its LUT's target and thread count (``local-t1``,
``adb-SERIAL-t4``) unless ``--device_names`` names them. Every trial is predicted on every
device (docs/method.md#search).

The oracle sees one ``MultiDevicePredictor``: ``predict(arch)`` is the largest over devices of
the predicted latency divided by that device's largest budget, so the oracle's constraint
``<= 1`` means "fits the largest budget of every device", and its budget strata are every
device budget expressed as that fraction (``MultiDevicePredictor.budgets``).

Bad input (LUTs of different spaces or modes, a budget list count that does not match the LUT
count, a LUT that cannot price a block type the space needs, duplicate device names) raises
``ValueError`` with one line, before any trial runs.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

from elasticvit_tf.arch import ArchConfig
from elasticvit_tf.search.budgets import LatencyBudgets
from elasticvit_tf.space import SearchSpace


def parse_budget_lists(
    values: str | Sequence[str], num_luts: int, flag: str = "--latency_budget_ms"
) -> tuple[LatencyBudgets, ...]:
    """``"3,5;8,12"`` -> one ``LatencyBudgets`` per LUT (``;`` between lists, ``,`` within).

    An empty value gives ``num_luts`` empty lists (no constraint); otherwise the number of
    lists must equal ``num_luts``.
    """
    text = values if isinstance(values, str) else ",".join(values)
    if not text.strip():
        return tuple(LatencyBudgets() for _ in range(num_luts))
    groups = text.split(";")
    if len(groups) != num_luts:
        raise ValueError(
            f"{flag}={text}: {len(groups)} budget list(s) for {num_luts} LUT(s); expected one "
            "list per --latency_lut entry, separated by ';' (e.g. '3,5;8,12')"
        )
    return tuple(LatencyBudgets.parse(g, flag) for g in groups)


def default_name(provenance: dict) -> str:
    """``<target>-t<threads>`` from a LUT's provenance (``adb:SERIAL`` -> ``adb-SERIAL``)."""
    target = str(provenance.get("target", "unknown"))
    name = f"{target}-t{provenance.get('num_threads', '?')}"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


@dataclasses.dataclass(frozen=True)
class Device:
    """One target: its name, LUT path, predictor and budgets."""

    name: str
    lut_path: str
    predictor: object
    budgets: LatencyBudgets


def load_devices(
    space: SearchSpace,
    lut_paths: Sequence[str],
    budget_lists: Sequence[LatencyBudgets],
    names: Sequence[str] = (),
    mode: Optional[str] = None,
) -> list[Device]:
    """Loads and cross-checks one LUT per device (see the module docstring for the checks)."""
    from elasticvit_tf import lut

    if len(budget_lists) != len(lut_paths):
        raise ValueError(
            f"--latency_budget_ms: {len(budget_lists)} budget list(s) for {len(lut_paths)} "
            "LUT(s); expected one list per --latency_lut entry, separated by ';'"
        )
    if names and len(names) != len(lut_paths):
        raise ValueError(
            f"--device_names={','.join(names)}: {len(names)} name(s) for {len(lut_paths)} "
            "LUT(s); expected one per --latency_lut entry"
        )
    devices, modes = [], {}
    for i, path in enumerate(lut_paths):
        if not os.path.isfile(path):
            raise ValueError(f"--latency_lut entry {path!r}: no such file; expected a LUT JSON")
        try:
            pred = lut.load_predictor(path, space, mode=mode)
            lut.check_covers(pred, space)
        except ValueError as e:
            raise ValueError(f"--latency_lut entry {path!r}: {e}") from None
        modes[path] = pred.mode
        name = names[i] if names else default_name(pred.provenance)
        devices.append(Device(name, path, pred, budget_lists[i]))
    if len(set(modes.values())) > 1:
        raise ValueError(
            f"--latency_lut: the LUTs hold different modes {modes}; expected one mode (one "
            "search ranks one quantized model per device)"
        )
    bad = [
        d.name
        for d in devices
        if not d.name or any(not (c.isalnum() or c in "-_.") for c in d.name)
    ]
    if bad:
        raise ValueError(
            f"--device_names: {bad} cannot go into file names; expected letters, digits, '-', "
            "'_' or '.'"
        )
    seen = [d.name for d in devices]
    dup = sorted({n for n in seen if seen.count(n) > 1})
    if dup:
        raise ValueError(
            f"device name(s) {dup} repeat (LUTs of the same target and threads); expected "
            "distinct names: pass --device_names"
        )
    if any(d.budgets for d in devices) and not all(d.budgets for d in devices):
        raise ValueError("--latency_budget_ms: expected a budget list for every LUT, or none")
    return devices


def check_feasible(space: SearchSpace, devices: Sequence[Device], mflops_range=None) -> None:
    """``oracle.check_feasible`` per device, the message naming the device."""
    from elasticvit_tf.search import oracle as oracle_lib

    for d in devices:
        try:
            oracle_lib.check_feasible(space, d.predictor, d.budgets, mflops_range)
        except ValueError as e:
            raise ValueError(f"device {d.name!r} ({d.lut_path}): {e}") from None


class MultiDevicePredictor:
    """The oracle's predictor over several devices (see the module docstring).

    Args:
        devices: the devices; without budgets a device's latency is divided by 1 ms.
    """

    def __init__(self, devices: Sequence[Device]):
        if not devices:
            raise ValueError("devices: expected at least one")
        self.devices = list(devices)
        self.space = self.devices[0].predictor.space
        self.mode = self.devices[0].predictor.mode
        self._scale = [d.budgets.constraint_ms or 1.0 for d in self.devices]

    @property
    def budgets(self) -> LatencyBudgets:
        """Every device budget as a fraction of that device's largest budget (the oracle's
        budgets: the constraint is 1)."""
        fr = {round(b / s, 12) for d, s in zip(self.devices, self._scale) for b in d.budgets}
        return LatencyBudgets(tuple(sorted(fr)))

    def predict_all(self, arch: ArchConfig) -> dict[str, float]:
        """``{device name: predicted ms}``."""
        return {d.name: float(d.predictor.predict(arch)) for d in self.devices}

    def predict(self, arch: ArchConfig) -> float:
        """The largest over devices of latency / largest budget."""
        return max(float(d.predictor.predict(arch)) / s for d, s in zip(self.devices, self._scale))
