"""The malloc settings keep freed buffers: a step's allocations stop faulting pages in every step."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from onceforall import allocator

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

CHILD = """
import json, resource, sys, torch
from onceforall.allocator import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "tuned" else None
def step():  # like a training step: activations pile up, then all are freed
    buffers = [torch.ones(2 << 20) for _ in range(10)]  # 10 x 8 MiB
    del buffers
step()  # warm-up
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def faults_of(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc's defaults
    command = [sys.executable, "-c", CHILD, mode]
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout)


@glibc_only
def test_reused_buffers_stop_faulting():
    pages = (8 << 20) // 4096
    default, tuned = faults_of("default"), faults_of("tuned")
    assert tuned["applied"] == allocator.SETTINGS
    assert default["faults"] >= 5 * pages  # freed memory goes back to the OS and faults in again
    assert tuned["faults"] <= pages  # the heap keeps them: at most one buffer faults in, in 5 steps


def test_user_malloc_variables_win(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert allocator.reuse_freed_memory() is None
