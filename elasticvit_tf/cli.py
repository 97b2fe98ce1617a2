"""The project's binaries: how they run (exit codes, quiet start, SIGTERM, output checks) and
their command lines rendered from settings (for reports and logs).

Each binary module owns the mapping from its config to its flags (``train_main.command_line``,
``search_main.command_line``, ...); this module only spells one ``--name=value`` argument and a
whole command the way absl parses them back.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import sys
import tempfile
import threading
import traceback
from typing import Any, Callable, Iterable, Mapping, Optional


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


def values_from_flags(
    target: Any, flag_values: Any, only_present: bool = False, keep: Iterable[str] = ()
) -> dict[str, Any]:
    """``{name: value}`` of the flags named like the fields of the dataclass ``target`` (or the
    parameters of the function ``target``): the one mapping from a binary's flags to its library
    settings. ``only_present`` keeps only flags given on the command line (and those in ``keep``).
    """
    import dataclasses
    import inspect

    if dataclasses.is_dataclass(target):
        names = [f.name for f in dataclasses.fields(target)]
    else:
        names = list(inspect.signature(target).parameters)
    keep = set(keep)
    return {
        n: flag_values[n].value
        for n in names
        if n in flag_values and (not only_present or flag_values[n].present or n in keep)
    }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return b is not None and flag_value(a) == flag_value(b)


# ------------------------------------------------------------------------------- running
# Every binary's console script is ``cli.run(<binary>, main, define_flags)``: one place for the
# quiet TensorFlow start, flag-parsing errors, exit codes and SIGTERM.
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, what a shell reports for a SIGTERM'd process

LOGS_ENV = "ELASTICVIT_TF_LOGS"
# TensorFlow's C++ logging (TF/XLA through absl and glog); read when TensorFlow is loaded.
_QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "ABSL_MIN_LOG_LEVEL": "3", "GLOG_minloglevel": "3"}
# Start-up lines printed while TensorFlow loads and probes its devices: C++ log records
# (``I0000 00:00:... cudart_stub.cc:31] ...``), absl's pre-init notice, the CPU-feature hint.
_STARTUP_NOISE = re.compile(
    r"^([IWEF]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl::InitializeLog|"
    r"To enable the following instructions|.*rebuild TensorFlow with the appropriate)"
)


class UsageError(ValueError):
    """Bad user input: one line on stderr, exit code 2."""


class Terminated(BaseException):
    """Raised when the process got SIGTERM; the binary exits with code 143."""


def verbose_logs() -> bool:
    """Whether the user asked for TensorFlow's own logs (``ELASTICVIT_TF_LOGS=1``)."""
    return os.environ.get(LOGS_ENV, "").strip().lower() not in ("", "0", "false", "no")


def quiet_tensorflow() -> None:
    """Loads TensorFlow with its C++ start-up logging silenced (unless ``ELASTICVIT_TF_LOGS=1``).

    The log levels must be in the environment before TensorFlow is first imported (absl's
    ``--verbosity`` is parsed too late); the lines TensorFlow prints while loading its CUDA stubs
    ignore them, so stderr is filtered while TensorFlow loads and lists its devices (any other
    line is replayed). Listing physical devices does not initialise the runtime: logical device
    configuration is still possible afterwards.
    """
    import logging
    import warnings

    if verbose_logs():
        return
    for k, v in _QUIET_ENV.items():
        os.environ.setdefault(k, v)
    # Keras warns for every fit() on a tf.data pipeline that its default shuffle=True is unused.
    warnings.filterwarnings("ignore", message=r"`shuffle=True` was passed")
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
    kept = [line for line in text.splitlines() if not _STARTUP_NOISE.match(line)]
    if kept:
        print("\n".join(kept), file=sys.stderr)


def check_output_dir(path: Optional[str], flag: str = "output_dir") -> None:
    """Refuses, before any work, an output directory that cannot be used: ``UsageError`` when
    ``path`` is empty, is a file (or lies under one), or cannot be created or written.

    Directories created to find out are removed again, so nothing is left behind.
    """
    if not path:
        raise UsageError(f"--{flag} is empty; expected a directory path")
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--{flag}={path} is a file; expected a directory")
    created = []
    parent = path
    while not os.path.exists(parent):
        created.append(parent)
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"--{flag}={path}: {parent} is a file; expected a directory path")
    try:
        for d in reversed(created):
            os.mkdir(d)
        fd, probe = tempfile.mkstemp(prefix=".write_check", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(
            f"--{flag}={path} cannot be created or written ({e.strerror or e}); expected a "
            "writable directory"
        ) from None
    finally:
        for d in created:
            try:
                os.rmdir(d)
            except OSError:
                pass


_stop = {"deferred": 0, "requested": False}


def _on_sigterm(signum, frame):
    if _stop["deferred"] and not _stop["requested"]:
        _stop["requested"] = True  # the running loop stops at its next safe point
        return
    raise Terminated()


def stop_requested() -> bool:
    """True once SIGTERM arrived inside ``deferred_sigterm()``: stop at the next safe point
    (after a checkpoint, between trials) and raise ``Terminated``."""
    return _stop["requested"]


@contextlib.contextmanager
def deferred_sigterm():
    """Within this block the first SIGTERM only sets ``stop_requested()`` (a second one stops
    at once); outside it SIGTERM raises ``Terminated`` wherever the process is."""
    _stop["deferred"] += 1
    try:
        yield
    finally:
        _stop["deferred"] -= 1


def execute(binary: str, main: Callable[[list], Optional[int]], argv: list) -> int:
    """Runs ``main(argv)`` (flags already parsed) and maps its outcome to an exit code.

    0: success (``main`` returned 0/None). 2: bad input: a ``ValueError`` (``UsageError``, the
    libraries' own input errors), one ``<binary>: error: ...`` line. 143: SIGTERM. 1: anything
    else, an internal error, reported with its traceback.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    _stop["requested"] = False
    try:
        code = main(argv)
        return EXIT_OK if code is None else int(code)
    except ValueError as e:
        print(f"{binary}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Terminated as e:
        detail = f": {_one_line(e)}" if str(e) else ""
        print(f"{binary}: terminated by SIGTERM{detail}", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print(f"{binary}: interrupted", file=sys.stderr)
        return 130
    except Exception:  # an internal error: keep the traceback for the bug report
        traceback.print_exc()
        print(
            f"{binary}: internal error (a bug; please report the traceback above)", file=sys.stderr
        )
        return EXIT_INTERNAL
    finally:
        sys.stdout.flush()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def parse_flags(binary: str, argv: list) -> list:
    """absl flag parsing with the project's exit code: a bad flag (unknown, ill-typed, missing
    when required, an unreadable --flagfile) is one line and exit code 2."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"{binary}: error: {_one_line(e)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def run(
    binary: str,
    main: Callable[[list], Optional[int]],
    define_flags: Callable[[], Any],
    required: Iterable[str] = (),
    tensorflow: bool = True,
) -> None:
    """Console-script entry point: quiet start, flags, ``execute``, ``sys.exit``.

    Args:
        binary: the command's name (prefix of its messages).
        main: ``main(argv) -> exit code``, run once the flags are parsed.
        define_flags: defines the binary's absl flags.
        required: flags that must be given.
        tensorflow: load TensorFlow quietly up front (False for binaries that never need it).
    """
    from absl import app, flags

    if tensorflow:
        quiet_tensorflow()
    define_flags()
    for name in required:
        flags.mark_flag_as_required(name)

    def _main(argv):
        sys.exit(execute(binary, main, argv))

    app.run(_main, flags_parser=lambda argv: parse_flags(binary, argv))
