"""Helpers shared by the benchmarks; standard library only (imported from both venvs)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_info() -> dict:
    info = {"cpu": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release()}  # fmt: skip
    try:
        import torch

        info.update(torch=torch.__version__, threads=torch.get_num_threads())
    except ImportError:
        pass
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["mem_total_gib"] = round(int(mem) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    return info


def _busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return total - idle, total


class CpuMonitor:
    """How much of the machine's CPU time during a measurement went to *other* processes.

    ``other_cores`` = (busy CPU time of the whole machine − CPU time of this process and its
    waited-for children) / wall time, in cores. On this 2-core machine, anything well above 0
    means the timings were taken under contention and are pessimistic.
    """

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.j0 = _busy_jiffies()
        self.o0 = os.times()
        self.load0 = os.getloadavg()[0]
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t0
        j1 = _busy_jiffies()
        o1 = os.times()
        hz = os.sysconf("SC_CLK_TCK")
        ncpu = os.cpu_count() or 1
        busy = (j1[0] - self.j0[0]) / hz
        total = (j1[1] - self.j0[1]) / hz
        own = sum(o1[i] - self.o0[i] for i in range(4))
        wall_cores = total / ncpu if total else wall
        self.result = {
            "wall_s": round(wall, 3),
            "machine_busy_cores": round(busy / max(wall_cores, 1e-9), 3),
            "own_cores": round(own / max(wall, 1e-9), 3),
            "other_cores": round(max(0.0, busy - own) / max(wall_cores, 1e-9), 3),
            "loadavg_1min_start": round(self.load0, 2),
            "loadavg_1min_end": round(os.getloadavg()[0], 2),
        }
        return False


def other_processes_busy(seconds: float = 2.0) -> float:
    """Cores used by other processes over a short idle sample (this process sleeps)."""
    j0 = _busy_jiffies()
    time.sleep(seconds)
    j1 = _busy_jiffies()
    total = j1[1] - j0[1]
    return (j1[0] - j0[0]) / total * (os.cpu_count() or 1) if total else 0.0


def wait_for_quiet(max_wait_s: float = 0.0, threshold_cores: float = 0.3) -> float:
    """Sample the other processes' CPU use; wait up to ``max_wait_s`` for it to drop below
    ``threshold_cores``. Returns the last sample (cores)."""
    deadline = time.monotonic() + max_wait_s
    while True:
        busy = other_processes_busy()
        if busy < threshold_cores or time.monotonic() >= deadline:
            return round(busy, 3)
        print(f"machine busy ({busy:.2f} cores used by other processes); waiting ...", flush=True)
        time.sleep(10)
