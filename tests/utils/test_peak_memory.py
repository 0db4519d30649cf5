"""utils.memory.reset_peak_memory / vm_hwm_mb: each run of a comparison gets a peak of its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROBE = '''
import torch
from bridgerl.utils.memory import reset_peak_memory, trim_freed_memory, vm_hwm_mb
big = torch.ones(64 * 2**20)  # 256 MiB, touched
del big
trim_freed_memory()
before = vm_hwm_mb()
assert reset_peak_memory()
print(before, vm_hwm_mb())
'''


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc")
def test_the_peak_starts_over_after_a_reset_so_an_earlier_run_does_not_count():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    before, after = map(float, out.stdout.split())
    assert before > 256  # the freed 256 MiB are in the high-water mark
    assert after < before - 200  # and gone from it after the reset
