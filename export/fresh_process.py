"""Runs a LiteRT function in a fresh Python process and returns its result.

The export verifies and times its converted files through :func:`call`, in a fresh process
that imports numpy and LiteRT, not TensorFlow, so that a native crash of the runtime becomes a
one-line ``FreshProcessError`` naming the function and the signal instead of killing the
export (or a test worker). Such a crash was measured: an int8 file with a degenerate
calibrated range made LiteRT's XNNPACK delegate free one block twice and abort the process
(``tflite.floor_calibrated_ranges`` removes that cause; this module keeps the next unknown one
from taking the caller down).

Arguments and results travel as pickles through a private temporary folder; an exception of
the function is raised again in the caller with its type and message.
"""

from __future__ import annotations

import importlib
import os
import pickle
import signal
import subprocess
import sys
import tempfile
from typing import Any

CALL_FILE = "call.pkl"
RESULT_FILE = "result.pkl"


def _no_core_dump() -> None:
    # A crashing runtime must not leave a core file of a TensorFlow-sized process behind.
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class FreshProcessError(RuntimeError):
    """The fresh process died without a result (a crash, a kill or a timeout)."""


def call(module: str, function: str, /, timeout_s: float = 3600.0, **kwargs: Any) -> Any:
    """``module.function(**kwargs)`` in a fresh ``python -m elasticvit_tf.export.fresh_process``.

    Raises:
        The function's own exception (same type and message), or FreshProcessError when the
        process died without a result.
    """
    with tempfile.TemporaryDirectory(prefix="fresh_process_") as wd:
        with open(os.path.join(wd, CALL_FILE), "wb") as f:
            pickle.dump((module, function, kwargs), f, protocol=pickle.HIGHEST_PROTOCOL)
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        cmd = [sys.executable, "-m", "elasticvit_tf.export.fresh_process", wd]
        try:
            proc = subprocess.run(
                cmd,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                preexec_fn=_no_core_dump if os.name == "posix" else None,
            )
        except subprocess.TimeoutExpired as err:
            raise FreshProcessError(
                f"{module}.{function} did not finish within {timeout_s:.0f} s in its process"
            ) from err
        path = os.path.join(wd, RESULT_FILE)
        if proc.returncode != 0 or not os.path.exists(path):
            code = proc.returncode
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            tail = "\n".join(proc.stderr.strip().splitlines()[-10:])
            raise FreshProcessError(f"{module}.{function} failed in its process ({how}):\n{tail}")
        with open(path, "rb") as f:
            ok, value = pickle.load(f)
    if not ok:
        raise value
    return value


def main(argv: list[str]) -> int:
    wd = argv[1]
    with open(os.path.join(wd, CALL_FILE), "rb") as f:
        module, function, kwargs = pickle.load(f)
    try:
        result = (True, getattr(importlib.import_module(module), function)(**kwargs))
    except Exception as err:  # noqa: BLE001 - handed to the caller, which raises it again
        result = (False, err)
    try:
        data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - an exception that does not pickle: its type and text
        err = result[1]
        data = pickle.dumps((False, RuntimeError(f"{type(err).__name__}: {err}")))
    with open(os.path.join(wd, RESULT_FILE), "wb") as f:
        f.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
