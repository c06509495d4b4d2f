"""Throughput of one SAE training step against the dense fp32 matmul peak of this machine.

    .venv/bin/python bench/sae_throughput.py            # all variants, ~4 min on 2 cores
    .venv/bin/python bench/sae_throughput.py --only baseline

A *training step* is what ``musinterp.sae.trainer.train_sae_with`` does per batch, minus reading
the batch: ``sae.training_loss(x, dead_mask)`` (forward + loss), ``zero_grad``, ``backward``,
``Adam.step`` and the architecture's ``after_optimizer_step`` (unit-norm decoder rows). It is
timed twice: "bare" (exactly those calls) and "trainer" (plus the per-step bookkeeping of the
trainer loop: input normalisation, lr assignment, the fired/dead-latent counters and the
``float()`` reads of the loss parts for the log).

FLOPs counted per step (B tokens, d = d_in, m = d_sae), matmuls only:

    forward   encoder  x @ W_enc                 2·B·d·m
              decoder  z @ W_dec                 2·B·m·d
    backward  encoder  dW_enc = xᵀ @ dpre        2·B·d·m   (x needs no gradient: no dx matmul)
              decoder  dz = dx̂ @ W_decᵀ           2·B·m·d
                       dW_dec = zᵀ @ dx̂          2·B·m·d
    total                                        10·B·d·m  ("executed" count, used for the ratio)

The common "backward = 2 × forward" convention would give 12·B·d·m; the JSON also reports that
figure (``gflops_convention12``) but the ratios use the FLOPs actually executed. Elementwise
work (bias, ReLU / top-k, scatter, loss, Adam, decoder renormalisation) is *not* counted: it is
O(B·m + d·m), under 1 % of the matmul FLOPs here, but its time is in the step.

The peak is measured in the same run (same worker process, just before its steps): best of N
``torch.mm`` of the encoder-forward shape [B, d] × [d, m] of each configuration (the
"comparable-shape peak", the denominator of the ratio), and a 4096³ square as the machine
peak. The five GEMMs of the step are also timed alone, with the transposes autograd hands them,
giving the matmul-only lower bound of a step.

Variants (each a fresh worker process, run one after the other):

    baseline        the code as it is
    malloc          + glibc told not to hand big blocks back to the kernel
                      (MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_=16 GiB, MALLOC_TOP_PAD_=512 MiB):
                      every fresh [B, m] temporary otherwise page-faults its way in
    malloc+fused    + torch.optim.Adam(fused=True)
    malloc+fused+l1sum  + relu_l1 L1 term as z.sum() (z ≥ 0 after ReLU, so |z| = z; saves the
                      abs forward and sgn backward passes over [B, m]); topk unchanged
    current         the trainer's own set-up since the 2026-11-22 changes: Adam from
                      ``make_optimizer`` (fused) and ``keep_freed_memory_mapped()`` (mallopt) called
                      in-process, no environment variables; run with B 2048 and 4096, GEMMs, profile

Since those changes, ``src/`` itself computes the L1 term as z.sum(), so "baseline" and the other
variants measure the new relu_l1 with the old optimiser and allocator, not the code the first
2026-11-22 figures came from (see bench/README.md for the b_dec change in the second run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, CpuMonitor, machine_info, wait_for_quiet  # noqa: E402

MALLOC_ENV = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(16 << 30),
    "MALLOC_TOP_PAD_": str(512 << 20),
}
VARIANTS = {
    # name: (extra environment, fused Adam, L1 as z.sum())
    "baseline": ({}, False, False),
    "malloc": (MALLOC_ENV, False, False),
    "malloc+fused": (MALLOC_ENV, True, False),
    "malloc+fused+l1sum": (MALLOC_ENV, True, True),
    "current": ({}, "src", False),  # fused="src": the trainer's make_optimizer; mallopt in-process
}
FULL_VARIANTS = ("baseline", "current")  # also B = 4096, the GEMMs alone and the profile
SHAPES = [(512, 4096), (256, 2048)]


# --- worker ------------------------------------------------------------------------------------


def best_time(fn, reps: int, warmup: int = 2) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def mm_gflops(M: int, K: int, N: int, reps: int, ta: bool = False, tb: bool = False) -> dict:
    """Best-of-``reps`` fp32 GFLOP/s of [M, K] × [K, N] (operands optionally stored transposed)."""
    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randn(K, M, generator=g).t() if ta else torch.randn(M, K, generator=g)
    b = torch.randn(N, K, generator=g).t() if tb else torch.randn(K, N, generator=g)
    out = torch.empty(M, N)
    best, median = best_time(lambda: torch.mm(a, b, out=out), reps)
    flops = 2 * M * K * N
    return {"shape": [M, K, N], "ta": ta, "tb": tb, "best_s": best, "median_s": median,
            "gflops_best": flops / best / 1e9, "gflops_median": flops / median / 1e9}  # fmt: skip


def step_gemms(B: int, d: int, m: int, reps: int) -> dict:
    parts = {
        "enc_fwd x@W_enc": mm_gflops(B, d, m, reps),
        "dec_fwd z@W_dec": mm_gflops(B, m, d, reps),
        "enc_bwd x^T@dpre": mm_gflops(d, B, m, reps, ta=True),
        "dec_bwd dxhat@W_dec^T": mm_gflops(B, d, m, reps, tb=True),
        "dec_bwd z^T@dxhat": mm_gflops(m, B, d, reps, ta=True),
    }
    total = sum(p["best_s"] for p in parts.values())
    return {"parts": parts, "sum_best_s": total, "gflops": 10 * B * d * m / total / 1e9}


def make_sae(arch: str, d: int, m: int, k: int, l1sum: bool):
    import torch
    from torch.nn import functional as F

    from musinterp.sae.base import LossOutput
    from musinterp.sae.relu_l1 import ReluL1Config, ReluL1SAE
    from musinterp.sae.topk import TopKConfig, TopKSAE

    class ReluL1SumSAE(ReluL1SAE):
        """ReluL1SAE with the L1 term as z.sum() (a proposed change, demonstrated here)."""

        def training_loss(self, x, dead_mask=None):
            x_hat, z = self(x)
            mse = F.mse_loss(x_hat, x)
            l1 = z.sum(dim=1).mean()  # z >= 0
            loss = mse + self.cfg.l1_coeff * l1
            return LossOutput(loss, {"mse": mse.detach(), "l1": l1.detach()}, z.detach())

    g = torch.Generator().manual_seed(0)
    if arch == "relu_l1":
        cls = ReluL1SumSAE if l1sum else ReluL1SAE
        return cls(ReluL1Config(d_in=d, d_sae=m), generator=g)
    return TopKSAE(TopKConfig(d_in=d, d_sae=m, k=k), generator=g, input_mean=torch.zeros(d))


def make_adam(sae, fused):
    import torch

    if fused == "src":
        from musinterp.sae.trainer import make_optimizer

        return make_optimizer(sae.parameters(), 1e-4)
    return torch.optim.Adam(sae.parameters(), lr=1e-4, fused=fused or None)


def time_steps(arch: str, d: int, m: int, B: int, k: int, reps: int, fused: bool, l1sum: bool) -> dict:
    import torch

    sae = make_sae(arch, d, m, k, l1sum)
    opt = make_adam(sae, fused)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(B, d, generator=g) for _ in range(4)]  # z-scored-like inputs
    dead_mask = torch.zeros(m, dtype=torch.bool)  # nothing dead: AuxK is skipped, as early on

    def bare(x):
        out = sae.training_loss(x, dead_mask)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        sae.after_optimizer_step()

    for i in range(3):
        bare(xs[i % 4])
    bare_times = []
    for i in range(reps):
        t0 = time.perf_counter()
        bare(xs[i % 4])
        bare_times.append(time.perf_counter() - t0)

    part_names = ("forward+loss", "zero_grad", "backward", "adam_step", "after_step")
    parts = {name: [] for name in part_names}
    for i in range(reps):
        x = xs[i % 4]
        t = [time.perf_counter()]
        out = sae.training_loss(x, dead_mask)
        t.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        t.append(time.perf_counter())
        out.loss.backward()
        t.append(time.perf_counter())
        opt.step()
        t.append(time.perf_counter())
        sae.after_optimizer_step()
        t.append(time.perf_counter())
        for j, name in enumerate(part_names):
            parts[name].append(t[j + 1] - t[j])

    # the trainer's loop body (musinterp.sae.trainer.train_sae_with), data reading excluded
    shift, divisor = torch.zeros(d), torch.ones(d)
    tokens_since_fired = torch.zeros(m, dtype=torch.int64)
    dead_tokens = 10_000_000
    raw = [x.numpy() for x in xs]
    trainer_times = []
    for i in range(reps):
        t0 = time.perf_counter()
        x = (torch.from_numpy(raw[i % 4]) - shift) / divisor
        for group in opt.param_groups:
            group["lr"] = 1e-4
        out = sae.training_loss(x, tokens_since_fired >= dead_tokens)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        sae.after_optimizer_step()
        fired = (out.latents != 0).any(dim=0)
        tokens_since_fired = torch.where(fired, 0, tokens_since_fired + B)
        row = {"loss": float(out.loss.detach())}
        row.update({name: float(v) for name, v in out.parts.items()})
        row["dead_latents"] = int((tokens_since_fired >= dead_tokens).sum())
        trainer_times.append(time.perf_counter() - t0)

    flops = 10 * B * d * m
    med, tmed = statistics.median(bare_times), statistics.median(trainer_times)
    return {
        "arch": arch, "d_in": d, "d_sae": m, "batch": B, "k": k if arch == "topk" else None,
        "flops_per_step": flops,
        "bare_step_s": {"median": med, "best": min(bare_times), "all": bare_times},
        "bare_tokens_per_s": B / med,
        "bare_gflops": flops / med / 1e9,
        "gflops_convention12": 12 * B * d * m / med / 1e9,
        "trainer_step_s": {"median": tmed, "best": min(trainer_times)},
        "trainer_tokens_per_s": B / tmed,
        "trainer_gflops": flops / tmed / 1e9,
        "parts_median_s": {name: statistics.median(v) for name, v in parts.items()},
    }  # fmt: skip


def profile_step(arch: str, d: int, m: int, B: int, k: int, fused: bool, l1sum: bool, top: int = 16) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    sae = make_sae(arch, d, m, k, l1sum)
    opt = make_adam(sae, fused)
    x = torch.randn(B, d, generator=torch.Generator().manual_seed(2))
    dead_mask = torch.zeros(m, dtype=torch.bool)

    def bare():
        out = sae.training_loss(x, dead_mask)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        sae.after_optimizer_step()

    for _ in range(3):
        bare()
    n = 4
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            bare()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    rows = [{"op": e.key, "calls_per_step": e.count / n, "self_ms_per_step": e.self_cpu_time_total / 1e3 / n,
             "share": e.self_cpu_time_total / total} for e in events[:top]]  # fmt: skip
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
    return {"arch": arch, "d_in": d, "d_sae": m, "batch": B, "total_ms_per_step": total / 1e3 / n,
            "top_ops": rows, "table": table}  # fmt: skip


def worker(args) -> None:
    import resource

    import torch

    torch.set_num_threads(args.threads)
    _, fused, l1sum = VARIANTS[args.variant]
    out = {"variant": args.variant, "fused_adam": fused, "l1sum": l1sum,
           "malloc_env": {k: os.environ.get(k) for k in MALLOC_ENV}, "runs": [], "profiles": []}  # fmt: skip
    if fused == "src":
        from musinterp.sae.trainer import keep_freed_memory_mapped

        out["mallopt_applied"] = keep_freed_memory_mapped()
    with CpuMonitor() as mon:
        out["machine_peak_4096cubed_start"] = mm_gflops(4096, 4096, 4096, 4)
        for d, m in SHAPES:
            for B in args.batches:
                peak = mm_gflops(B, d, m, args.mm_reps)
                gemms = step_gemms(B, d, m, args.mm_reps) if args.gemms else None
                for arch in ("relu_l1", "topk"):
                    r = time_steps(arch, d, m, B, args.k, args.reps, fused, l1sum)
                    r["peak_mm_same_shape"] = peak
                    r["peak_gflops_same_shape"] = peak["gflops_best"]
                    r["ratio_bare_vs_peak"] = r["bare_gflops"] / peak["gflops_best"]
                    r["ratio_trainer_vs_peak"] = r["trainer_gflops"] / peak["gflops_best"]
                    if gemms:
                        r["gemm_only_bound_s"] = gemms["sum_best_s"]
                        r["gemm_only_gflops"] = gemms["gflops"]
                        r["gemm_share_of_step"] = gemms["sum_best_s"] / r["bare_step_s"]["median"]
                        r["step_gemms"] = gemms["parts"]
                    out["runs"].append(r)
                    print(
                        f"[{args.variant}] {arch:8s} {d}->{m} B={B}: {r['bare_tokens_per_s']:7.0f} tok/s "
                        f"{r['bare_gflops']:6.1f} GFLOP/s = {100 * r['ratio_bare_vs_peak']:5.1f}% of "
                        f"{peak['gflops_best']:.1f}; trainer loop {r['trainer_tokens_per_s']:7.0f} tok/s "
                        f"({100 * r['ratio_trainer_vs_peak']:5.1f}%); "
                        + ", ".join(f"{n} {1e3 * v:.1f}" for n, v in r["parts_median_s"].items())
                        + " ms",
                        flush=True,
                    )
        out["machine_peak_4096cubed_end"] = mm_gflops(4096, 4096, 4096, 4)
        if args.profile:
            for arch in ("relu_l1", "topk"):
                out["profiles"].append(profile_step(arch, 512, 4096, 2048, args.k, fused, l1sum))
    out["contention"] = mon.result
    out["minor_page_faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    out["machine"] = machine_info()
    args.worker_out.write_text(json.dumps(out, indent=1))


# --- driver ------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--mm-reps", type=int, default=10)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batches", type=int, nargs="+", default=None)
    ap.add_argument("--only", choices=sorted(VARIANTS), nargs="+", default=None)
    ap.add_argument("--out", type=Path, default=RESULTS / "sae_throughput.json")
    ap.add_argument("--wait-quiet", type=float, default=300, help="seconds to wait for an idle machine")
    # worker mode
    ap.add_argument("--variant", choices=sorted(VARIANTS))
    ap.add_argument("--worker-out", type=Path)
    ap.add_argument("--gemms", action="store_true")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    if args.worker_out:
        args.batches = args.batches or [2048]
        return worker(args)

    t0 = time.perf_counter()
    quiet = wait_for_quiet(args.wait_quiet)
    results = {
        "benchmark": "sae_throughput",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "other_processes_cores_before": quiet,
        "flop_formula": "10*B*d_in*d_sae per step: enc fwd 2Bdm + dec fwd 2Bdm + enc bwd (dW only) "
        "2Bdm + dec bwd (dz and dW) 4Bdm; elementwise, Adam and renormalisation not counted",
        "settings": {"threads": args.threads, "reps": args.reps, "mm_reps": args.mm_reps, "k": args.k,
                     "dtype": "float32", "lr": 1e-4, "dead_mask": "none dead (AuxK skipped)"},  # fmt: skip
        "variants": {},
    }
    for name in args.only or list(VARIANTS):
        env_extra = VARIANTS[name][0]
        batches = args.batches or ([2048, 4096] if name in FULL_VARIANTS else [2048])
        tmp = RESULTS / f".throughput_{name}.json"
        cmd = [sys.executable, __file__, "--variant", name, "--worker-out", str(tmp),
               "--threads", str(args.threads), "--reps", str(args.reps), "--mm-reps", str(args.mm_reps),
               "--k", str(args.k), "--batches", *map(str, batches)]  # fmt: skip
        if name in FULL_VARIANTS:
            cmd += ["--gemms", "--profile"]
        RESULTS.mkdir(parents=True, exist_ok=True)
        subprocess.run(cmd, check=True, env={**os.environ, **env_extra})
        data = json.loads(tmp.read_text())
        tmp.unlink()
        profiles = data.pop("profiles")
        if profiles:
            suffix = ".profile.txt" if name == "baseline" else f".{name}.profile.txt"
            args.out.with_suffix(suffix).write_text(
                "\n\n".join(f"{p['arch']} {p['d_in']}->{p['d_sae']} B={p['batch']} ({name})\n{p['table']}"
                            for p in profiles)  # fmt: skip
            )
            data["profiles"] = [{k: v for k, v in p.items() if k != "table"} for p in profiles]
        results["variants"][name] = data
        results["machine"] = data["machine"]
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out} ({results['wall_s']} s)")


if __name__ == "__main__":
    main()
