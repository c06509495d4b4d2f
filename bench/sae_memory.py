"""Train an SAE on an activation store at least twice as large as the memory it may use.

    .venv/bin/python bench/sae_memory.py [--gib 3.25] [--cap-gib 1.5] [--max-tokens 262144]

1. Writes a store of ``--gib`` GiB of float32 activations (d = 512) to /tmp with
   :class:`musinterp.activations.SiteWriter` (the contract: /acts chunked by 1024 rows, gzip;
   /tokens/piece, position, token, split; pieces of 512 tokens, 5 % held out).
2. Makes a memory cgroup (cgroup v1 ``memory.limit_in_bytes``, nested in this process's own
   memory cgroup; cgroup v2 ``memory.max`` is used instead where the v2 memory controller is
   available) with the cap, and first checks the cap is enforced: a child that touches more
   than the cap must be killed.
3. Runs ``musinterp.sae.trainer.train_sae`` (relu_l1, 512 → 2048, batch 2048, ``--max-tokens``)
   in a child process inside that cgroup. The child samples its own RSS every 0.2 s and reports
   its VmHWM; the parent also takes ``ru_maxrss`` from ``os.wait4`` and the cgroup's
   ``memory.max_usage_in_bytes`` (which also counts page cache, reclaimable).
4. Deletes the store, the SAE and the cgroup.

No RLIMIT_AS (``ulimit -v``): torch and OpenMP reserve far more virtual memory than they touch,
so an address-space limit measures the wrong thing. It is only a fallback if no cgroup can be made.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, CpuMonitor, machine_info, wait_for_quiet  # noqa: E402

WORK = Path("/tmp/musinterp-bench-memory")
STORE = WORK / "big_d512.h5"
D, PIECE = 512, 512


def write_store(gib: float) -> dict:
    import numpy as np

    from musinterp.activations import SiteWriter

    n = int(gib * 2**30 / (4 * D)) // PIECE * PIECE
    rng = np.random.default_rng(0)
    n_pieces = n // PIECE
    split_piece = (rng.random(n_pieces) < 0.05).astype(np.uint8)
    basis = rng.standard_normal((64, D)).astype(np.float32)  # some shared structure, not pure noise
    columns = {"piece": np.int32, "position": np.int32, "token": np.int32, "split": np.uint8}
    attrs = {"subject": "bench", "site": "random_d512", "d": D, "family": "synthetic",
             "producer": "bench/sae_memory.py"}  # fmt: skip
    t0 = time.perf_counter()
    w = SiteWriter(STORE, D, columns, {"split": ["train", "heldout"]}, attrs)
    try:
        rows = 64 * 1024
        for start in range(0, n, rows):
            m = min(rows, n - start)
            x = rng.standard_normal((m, D), dtype=np.float32)
            x += rng.standard_normal((m, 64), dtype=np.float32) @ basis
            idx = np.arange(start, start + m)
            w.append(x, {"piece": (idx // PIECE).astype(np.int32), "position": (idx % PIECE).astype(np.int32),
                         "token": np.zeros(m, np.int32), "split": split_piece[idx // PIECE]})  # fmt: skip
    except BaseException:
        w.close(ok=False)
        raise
    w.close()
    return {"rows": n, "d": D, "logical_bytes": n * D * 4, "file_bytes": STORE.stat().st_size,
            "heldout_rows": int(split_piece.sum()) * PIECE, "write_s": time.perf_counter() - t0}  # fmt: skip


# --- the child: training under the cap ---------------------------------------------------------


def vm_status() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmHWM", "VmRSS", "VmPeak", "VmSize")):
            key, value = line.split(":")
            out[key] = int(value.split()[0]) * 1024
    return out


def train_child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    samples: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    stop = threading.Event()

    trace = open(Path(args.child_out).with_suffix(".rss.tsv"), "w")  # survives an OOM kill

    def sampler():
        while not stop.is_set():
            samples.append((round(time.perf_counter() - t0, 2), vm_status()["VmRSS"]))
            trace.write("%.2f\t%d\n" % samples[-1])
            trace.flush()
            stop.wait(0.2)

    threading.Thread(target=sampler, daemon=True).start()
    from musinterp.sae.trainer import train_sae

    after_import = vm_status()
    metrics = train_sae(STORE, WORK / "sae", arch="relu_l1", width=4 * D, batch_size=2048,
                        max_tokens=args.max_tokens, seed=0, buffer_tokens=args.buffer_tokens)  # fmt: skip
    stop.set()
    status = vm_status()
    peak_at = max(samples, key=lambda s: s[1]) if samples else None
    out = {"metrics": {k: metrics[k] for k in ("fvu", "l0", "tokens_seen", "steps", "seconds",
                                                "tokens_per_second", "n_train_tokens", "n_heldout_tokens")},
           "vm_after_import": after_import, "vm_end": status, "rss_samples_every_0.2s": samples[::5],
           "rss_peak_sample": peak_at}  # fmt: skip
    Path(args.child_out).write_text(json.dumps(out))


# --- the cap -------------------------------------------------------------------------------------


class MemoryCgroup:
    """A cgroup capping the memory of the processes put in it (v2 ``memory.max`` where the v2
    memory controller exists, else v1 ``memory.limit_in_bytes``), nested in our own cgroup."""

    def __init__(self, cap_bytes: int):
        self.cap = cap_bytes
        self.path, self.version = self._make()
        if self.version == 2:
            (self.path / "memory.max").write_text(str(cap_bytes))
            (self.path / "memory.swap.max").write_text("0") if (self.path / "memory.swap.max").exists() else None
        else:
            (self.path / "memory.limit_in_bytes").write_text(str(cap_bytes))
            sw = self.path / "memory.memsw.limit_in_bytes"
            if sw.exists():
                try:
                    sw.write_text(str(cap_bytes))  # no swap as an escape either
                except OSError:
                    pass

    @staticmethod
    def _make() -> tuple[Path, int]:
        name = f"musinterp-bench-{os.getpid()}"
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        for line in lines:  # cgroup v2 with the memory controller
            hid, ctrls, rel = line.split(":", 2)
            if hid == "0":
                for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
                    base = root / rel.lstrip("/")
                    ctl = base / "cgroup.controllers"
                    if ctl.exists() and "memory" in ctl.read_text().split():
                        sub = base / "cgroup.subtree_control"
                        if "memory" not in sub.read_text().split():
                            sub.write_text("+memory")
                        (base / name).mkdir()
                        return base / name, 2
        for line in lines:  # cgroup v1 memory hierarchy
            hid, ctrls, rel = line.split(":", 2)
            if "memory" in ctrls.split(","):
                base = Path("/sys/fs/cgroup/memory") / rel.lstrip("/")
                (base / name).mkdir()
                return base / name, 1
        raise OSError("no writable memory cgroup")

    def enter(self) -> None:
        """For preexec_fn: move the calling (child) process into the cgroup."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def stats(self) -> dict:
        def read(name):
            p = self.path / name
            return p.read_text().strip() if p.exists() else None

        if self.version == 2:
            events = dict(line.split() for line in (read("memory.events") or "").splitlines())
            return {"memory.peak": read("memory.peak"), "oom_kill": events.get("oom_kill"),
                    "max_events": events.get("max")}  # fmt: skip
        oom = dict(line.split() for line in (read("memory.oom_control") or "").splitlines())
        return {"memory.max_usage_in_bytes": int(read("memory.max_usage_in_bytes")),
                "memory.failcnt": int(read("memory.failcnt")), "oom_kill": int(oom.get("oom_kill", -1))}  # fmt: skip

    def reset_peak(self) -> None:
        if self.version == 1:
            (self.path / "memory.max_usage_in_bytes").write_text("0")
            (self.path / "memory.failcnt").write_text("0")

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def run_capped(cmd: list[str], cg: MemoryCgroup | None, as_limit: int | None) -> dict:
    def pre():
        if cg is not None:
            cg.enter()
        else:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))

    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, preexec_fn=pre, env={**os.environ, "TQDM_DISABLE": "1"})
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return {"returncode": p.returncode,
            "killed_by": signal.Signals(-p.returncode).name if p.returncode < 0 else None,
            "ru_maxrss_bytes": ru.ru_maxrss * 1024, "wall_s": time.perf_counter() - t0}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gib", type=float, default=3.25, help="store size (float32 data, GiB)")
    ap.add_argument("--cap-gib", type=float, default=1.5)
    ap.add_argument("--max-tokens", type=int, default=262_144)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--buffer-tokens", type=int, default=None,
                    help="train_sae buffer_tokens (shuffle fill rows); default: the trainer's (256 MiB)")
    ap.add_argument("--out", type=Path, default=RESULTS / "sae_memory.json")
    ap.add_argument("--wait-quiet", type=float, default=120)
    ap.add_argument("--child-out")
    ap.add_argument("step", nargs="?", default="all", choices=["all", "train-child"])
    args = ap.parse_args()
    if args.step == "train-child":
        return train_child(args)

    quiet = wait_for_quiet(args.wait_quiet)
    cap = int(args.cap_gib * 2**30)
    WORK.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "sae_memory", "date": dt.datetime.now().isoformat(timespec="seconds"),
              "other_processes_cores_before": quiet, "cap_bytes": cap, "machine": machine_info()}  # fmt: skip
    cg = None
    try:
        try:
            cg = MemoryCgroup(cap)
            result["cap_mechanism"] = f"cgroup v{cg.version} ({cg.path})"
        except OSError as err:
            result["cap_mechanism"] = f"RLIMIT_AS (no cgroup: {err})"
        print("cap:", result["cap_mechanism"], flush=True)

        # the cap must bite: a child touching cap + 0.5 GiB is killed
        hog = [sys.executable, "-c",
               f"import numpy as np; a = np.ones({(cap + (512 << 20)) // 8}, dtype=np.float64); print(a.sum())"]  # fmt: skip
        result["control_over_cap"] = run_capped(hog, cg, None if cg else cap)
        if cg:
            result["control_over_cap"]["cgroup"] = cg.stats()
            cg.reset_peak()
        print("control (touch cap + 0.5 GiB):", result["control_over_cap"], flush=True)

        print(f"writing a {args.gib} GiB store to {STORE} ...", flush=True)
        result["store"] = write_store(args.gib)
        print("store:", result["store"], flush=True)

        child_out = WORK / "child.json"
        cmd = [sys.executable, __file__, "train-child", "--child-out", str(child_out),
               "--max-tokens", str(args.max_tokens), "--threads", str(args.threads)]  # fmt: skip
        if args.buffer_tokens:
            cmd += ["--buffer-tokens", str(args.buffer_tokens)]
        result["settings"] = {"arch": "relu_l1", "d_in": D, "width": 4 * D, "batch": 2048,
                              "max_tokens": args.max_tokens, "buffer_tokens": args.buffer_tokens,
                              "threads": args.threads}  # fmt: skip
        oom_before = cg.stats()["oom_kill"] if cg else None
        with CpuMonitor() as mon:
            run = run_capped(cmd, cg, None if cg else cap)
        run["contention"] = mon.result
        if cg:
            run["cgroup"] = cg.stats()
            # the counter is cumulative: the control child's kill is already in it
            run["oom_kills_during_train"] = int(run["cgroup"]["oom_kill"]) - int(oom_before)
        trace = child_out.with_suffix(".rss.tsv")
        if trace.exists():
            rows = [line.split("\t") for line in trace.read_text().splitlines() if "\t" in line]
            run["rss_trace_1s"] = [(float(t), int(r)) for t, r in rows[::5]]
            run["rss_trace_peak"] = max(((float(t), int(r)) for t, r in rows), key=lambda x: x[1], default=None)
        if child_out.exists():
            run["child"] = json.loads(child_out.read_text())
            run["child_vm_hwm_bytes"] = run["child"]["vm_end"].get("VmHWM")
        run["completed"] = run["returncode"] == 0 and child_out.exists()
        result["train"] = run
        result["store_over_cap"] = result["store"]["logical_bytes"] / cap
        result["peak_rss_over_cap"] = run["ru_maxrss_bytes"] / cap
        print("train:", {k: v for k, v in run.items() if k != "child"}, flush=True)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
        if cg is not None:
            cg.remove()
            result["cgroup_removed"] = not cg.path.exists()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
