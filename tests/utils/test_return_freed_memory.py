"""train.return_freed_memory: glibc gives freed tensors back to the OS at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROBE = '''
import sys, torch
from bridgerl.utils.memory import return_freed_memory
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
big = torch.ones(4 * 2**20); del big   # glibc raises its dynamic mmap threshold past 16 MiB
if sys.argv[1] == "on":
    assert return_freed_memory()
xs = [torch.ones(2**18) for _ in range(200)]  # 200 x 1 MiB, now served from the heap
keep = xs[-1]  # the last block keeps the heap's top from being trimmed
before = rss(); del xs; print(before - rss())
'''


@pytest.mark.skipif(not Path("/proc/self/statm").exists() or sys.platform != "linux", reason="glibc and /proc")
def test_freed_tensors_leave_resident_memory_only_when_glibc_is_told_to_return_them():
    def freed_mb(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])

    assert freed_mb("off") < 50  # glibc's default: 199 freed MiB stay resident in its heap
    assert freed_mb("on") > 150
