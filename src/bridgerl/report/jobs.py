"""Child processes for `bridgerl compare --jobs N`: each writes to its own log file and is reaped on its
own (os.wait4), so that its peak memory is its own; RUSAGE_CHILDREN would give the largest of all."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def thread_env(jobs: int) -> dict[str, str]:
    """The children's environment: the CPUs shared out among `jobs` of them, at least one torch thread each."""
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


class Children:
    """Running child processes by key; wait_any reaps whichever ends first, with its exit code and peak memory."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: dict[int, tuple[int, subprocess.Popen[bytes]]] = {}  # pid -> (key, process)

    @property
    def running(self) -> list[int]:
        return [key for key, _ in self.procs.values()]

    def start(self, key: int, argv: list[str], log: Path) -> None:
        # A session of its own: a terminal's Ctrl-C reaches compare only, whose stop() then sends each child
        # one SIGTERM (a second signal would make a run abandon its step instead of checkpointing it).
        with log.open("w") as f:  # stdout and stderr, interleaved as the child wrote them
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True)
        self.procs[proc.pid] = (key, proc)

    def wait_any(self, poll_s: float = 0.2) -> tuple[int, int, float]:
        """(key, exit code, peak RSS in MB) of the next child to end; exit code -N: killed by signal N."""
        while True:
            for pid, (key, proc) in list(self.procs.items()):
                done, status, usage = os.wait4(pid, os.WNOHANG)
                if done:
                    del self.procs[pid]
                    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so tell Popen
                    return key, proc.returncode, usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
            time.sleep(poll_s)

    def stop(self) -> None:
        """Stop and reap the children still running (the parent is stopping: an error or Ctrl-C); each
        checkpoints its last complete step on the SIGTERM and exits."""
        for _, proc in self.procs.values():
            proc.terminate()
        for _, proc in self.procs.values():
            proc.wait()
        self.procs.clear()


def last_line(log: Path) -> str:
    """The last non-blank line of a child's log (its error message, or a traceback's last line)."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
