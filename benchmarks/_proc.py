"""CPU time of processes and their threads, read from ``/proc`` (Linux)."""

from __future__ import annotations

import contextlib
import os

__all__ = ["child_pids", "process_cpu_s", "schedstat_ns"]


def process_cpu_s(pid: int, children: bool = False) -> float:
    """CPU seconds (user + system, every thread) a live process has used, from /proc; with
    ``children``, plus its live child processes' (the audit's delivery process)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    used = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    if children:
        for child in child_pids(pid):
            with contextlib.suppress(OSError):
                used += process_cpu_s(child)
    return used


def child_pids(pid: int) -> list[int]:
    """The live child processes of ``pid`` (forked by any of its threads)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                found.extend(int(p) for p in f.read().split())
    return found


def schedstat_ns(pid: int) -> int:
    """Run time of every live thread of ``pid``, in ns (``/proc/<pid>/task/*/schedstat``)."""
    total = 0
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
    return total
