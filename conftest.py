"""Pytest configuration: markers, a quiet TensorFlow for the whole suite, and memory given back
after every test module."""

import ctypes
import gc
import os
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYTHONHASHSEED", "0")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: real-size or end-to-end tests (still run by the README/CI command)"
    )


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.fixture(autouse=True, scope="module")
def _give_memory_back(request):
    """After each module: Keras' global state cleared, garbage collected, and the C heap's
    free pages returned to the system.

    NOTE: an xdist worker runs half the suite in one process; without this its RSS grew to
    ~9 GB in 12 minutes, and in CI a worker was killed (out of memory) while a test's training
    subprocess ran beside it. ``ELASTICVIT_TEST_RSS_LOG=path`` appends each module's RSS."""
    yield
    before = _rss_mb()
    if "keras" in sys.modules:
        sys.modules["keras"].backend.clear_session(free_memory=False)
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    log = os.environ.get("ELASTICVIT_TEST_RSS_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {request.module.__name__} {before:.0f} {_rss_mb():.0f}\n")
