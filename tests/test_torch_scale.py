"""DDP and FSDP2 on a generated torch model (docs/scale.md, section PyTorch).

Two processes on gloo (CPU) train one SGD step on halves of a masked batch; the
weights after the step equal those of the same step on the whole batch in one
process (the loss is a masked sum with one normaliser, so the ranks' shares add
up). The job runs in a subprocess: tests/torch_scale_job.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ddp", "fsdp2"])
def test_two_processes_train_like_one(kind: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "torch_scale_job.py"), kind, str(free_port())],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
