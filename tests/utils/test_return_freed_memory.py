"""train.return_freed_memory and train.trim_after_phases: glibc gives freed tensors back to the OS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROBE = '''
import sys, torch
from bridgerl.utils.memory import return_freed_memory, trim_freed_memory
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
big = torch.ones(4 * 2**20); del big   # glibc raises its dynamic mmap threshold past 16 MiB
if sys.argv[1] == "on":
    assert return_freed_memory()
xs = [torch.ones(2**18) for _ in range(200)]  # 200 x 1 MiB, now served from the heap
keep = xs[-1]  # the last block keeps the heap's top from being trimmed
before = rss(); del xs
if sys.argv[1] == "trim":
    assert trim_freed_memory()
print(before - rss())
'''


@pytest.mark.skipif(not Path("/proc/self/statm").exists() or sys.platform != "linux", reason="glibc and /proc")
def test_freed_tensors_leave_resident_memory_only_when_glibc_is_told_to_return_them():
    def freed_mb(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])

    assert freed_mb("off") < 50  # glibc's default: 199 freed MiB stay resident in its heap
    assert freed_mb("on") > 150
    assert freed_mb("trim") > 150  # malloc_trim returns them at once (train.trim_after_phases)


def test_trim_after_phases_runs_at_the_end_of_every_phase_outside_its_time():
    import time

    from bridgerl.utils.timers import PhaseTimer

    calls = []
    timer = PhaseTimer(after=lambda: (calls.append(dict(timer.totals)), time.sleep(0.05)))
    with timer("generate"):
        pass
    with timer("optim"):
        pass
    assert [set(c) for c in calls] == [{"generate"}, {"generate", "optim"}]  # each phase already charged
    assert max(timer.pop().values()) < 0.05  # the trim's own time is in no phase


def test_the_trainer_trims_after_its_phases_only_when_asked():
    from bridgerl.config_load import load_config
    from bridgerl.trainers.loop import setup
    from bridgerl.utils.memory import trim_freed_memory

    small = ["task.arith.n_test=8", "task.arith.n_test_hard=8", "task.arith.n_val=8"]
    assert setup(load_config(None, small))[0].timer.after is None
    assert setup(load_config(None, [*small, "train.trim_after_phases=true"]))[0].timer.after is trim_freed_memory
