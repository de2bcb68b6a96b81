"""Shared pytest configuration."""

from __future__ import annotations

import os

import pytest

# One BLAS thread: the 2-core CI machine is oversubscribed otherwise (the
# orthogonal initializer's QR took seconds instead of milliseconds).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def pytest_addoption(parser: pytest.Parser) -> None:
    # `--update-golden` rewrites the golden files of emitted code (tests/golden/<backend>/)
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/* from the current emitters instead of comparing",
    )
