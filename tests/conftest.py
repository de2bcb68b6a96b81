"""Shared pytest configuration."""

from __future__ import annotations

import os

# One BLAS thread: the 2-core CI machine is oversubscribed otherwise (the
# orthogonal initializer's QR took seconds instead of milliseconds).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
