"""Pytest configuration: markers and a quiet TensorFlow for the whole suite."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYTHONHASHSEED", "0")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: real-size or end-to-end tests (still run by the README/CI command)"
    )
