"""Command lines of the project's binaries, rendered from settings (for reports and logs).

Each binary module owns the mapping from its config to its flags (``train_main.command_line``,
``search_main.command_line``, ...); this module only spells one ``--name=value`` argument and a
whole command the way absl parses them back.
"""

from __future__ import annotations

import json
import shlex
from typing import Any, Iterable, Mapping


def flag_value(value: Any) -> str:
    """The text of one flag value: lists comma-joined, floats ``%g``, dicts as JSON."""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, (list, tuple)):
        return ",".join(flag_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def flag(name: str, value: Any) -> str:
    """``--name=value`` (shell-quoted); booleans as ``--name`` / ``--noname``."""
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no{name}"
    return shlex.quote(f"--{name}={flag_value(value)}")


def command(
    binary: str,
    flags: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
    always: Iterable[str] = (),
) -> str:
    """``binary --k=v ...``: every flag whose value is not None and, when ``defaults`` are given,
    differs from its default (flags named in ``always`` are kept regardless)."""
    defaults = defaults or {}
    always = set(always)
    args = [binary]
    for name, value in flags.items():
        if value is None:
            continue
        if name not in always and name in defaults and _same(value, defaults[name]):
            continue
        args.append(flag(name, value))
    return " ".join(args)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return b is not None and flag_value(a) == flag_value(b)
