"""Our SAE trainer against SAELens's ``SAETrainer`` on the same activations and hyperparameters.

    .venv/bin/python bench/sae_vs_saelens.py            # driver: runs every step below
    .venv/bin/python bench/sae_vs_saelens.py --l1 ... --k ... --lr ...

Steps (each a subprocess, one at a time; the driver picks the interpreter):

1. ``prepare`` (.venv): planted-dictionary activations, d = 256, saved once to
   ``/tmp/musinterp-bench/planted_d256.npz`` (``x`` float32 [n, d], ``split``, ``piece``), and an
   activation store (HDF5, written with :class:`musinterp.activations.SiteWriter`) from the same
   array for our trainer. The data: 1024 random unit directions f_i; feature i fires on a token
   with probability p_i ∝ (i + 1)^−0.6 (mean 10 active features per token), amplitude
   s_i · (0.5 + |N(0, 1)|) with a per-feature scale s_i log-uniform in [0.5, 2];
   x = g ⊙ (μ + Σ_active a_i f_i) + 0.05 · N(0, I), with a random offset μ (‖μ‖ ≈ 3) and a
   per-dimension gain g log-uniform in [0.5, 2] (so per-dimension and scalar normalisation
   differ, as in real activations). Pieces of 256 tokens; 128 random pieces held out.
2. ``ours`` (.venv, per architecture): ``musinterp.sae.trainer.train_sae`` on the store.
3. ``saelens`` (/tmp/saelens-venv, per architecture): ``sae_lens.training.sae_trainer.SAETrainer``
   (the trainer SAELens's own runners use, without a language model) fed by an in-memory data
   provider that yields shuffled batches of the training rows (one permutation per epoch), then
   ``save_inference_model``.
4. ``eval`` (/tmp/saelens-venv): both SAE directories loaded with ``sae_lens.SAE.load_from_disk``
   and measured by ONE function (:func:`heldout_metrics`) on the same held-out tokens:
   FVU = Σ‖x − x̂‖² / Σ‖x − x̄‖² (x̄ the held-out mean, float64), L0 = mean number of non-zero
   latents per token, dead = never fires on the held-out tokens, dense = fires on > 10 %.

Matched: data and held-out tokens, d_in, width, batch, lr (constant, no warm-up/decay), token
budget (2 epochs), k (topk), the dead-latent window (ours: dead_tokens = 10 % of the budget;
SAELens: dead_feature_window = the same number of steps), threads (2). The sparsity penalty is
matched as an objective: ours is mean-over-elements MSE + λ·Σ|z| on unit-norm decoder rows;
SAELens's is sum-over-dimensions MSE + c·Σ|z|·‖W_dec,i‖, so c = d_in · λ gives the same loss up
to the factor d_in (Adam is invariant to it). Each side keeps the rest of its own recipe (stated
in the README): ours z-scores every dimension (relu_l1) or scales by one number (topk), keeps
decoder rows at unit norm and uses AuxK (1/32, normalised); SAELens scales by one number
("expected_average_only_in"), initialises the decoder at norm 0.1, clips the gradient norm at 1,
penalises |z|·‖W_dec‖ instead of constraining the norm, and uses its AuxK (coefficient 1).

Tokens/s: "loop" = the training loop alone (ours: from the first batch request to the final
held-out evaluation, minus the in-loop evaluation, data streaming from HDF5 included; SAELens:
from the first training batch, after its norm-estimation batches, to the end of ``fit``),
"end to end" = the whole call (ours: ``train_sae`` incl. the statistics pass over the file,
evaluations and writing; SAELens: ``fit`` incl. norm estimation + ``save_inference_model``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, CpuMonitor, machine_info, wait_for_quiet  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OURS_PY = REPO / ".venv" / "bin" / "python"
SAELENS_PY = Path("/tmp/saelens-venv/bin/python")
WORK = Path("/tmp/musinterp-bench")
DATA = WORK / "planted_d256.npz"
STORE = WORK / "planted_d256.h5"

D, N_FEATURES, PIECE_LEN, N_PIECES, N_HELDOUT_PIECES = 256, 1024, 256, 1176, 128


# --- data --------------------------------------------------------------------------------------


def prepare(args) -> dict:
    rng = np.random.default_rng(0)
    n = N_PIECES * PIECE_LEN
    features = rng.standard_normal((N_FEATURES, D))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    p = (np.arange(N_FEATURES) + 1.0) ** -0.6
    p *= 10.0 / p.sum()
    scale = np.exp(rng.uniform(np.log(0.5), np.log(2.0), N_FEATURES))
    mu = rng.standard_normal(D) * 3 / math.sqrt(D)
    gain = np.exp(rng.uniform(np.log(0.5), np.log(2.0), D))
    x = np.empty((n, D), dtype=np.float32)
    for start in range(0, n, 16384):
        m = min(16384, n - start)
        active = rng.random((m, N_FEATURES)) < p
        amps = active * scale * (0.5 + np.abs(rng.standard_normal((m, N_FEATURES))))
        x[start : start + m] = (gain * (mu + amps @ features) + 0.05 * rng.standard_normal((m, D))).astype(
            np.float32
        )
    piece = np.repeat(np.arange(N_PIECES, dtype=np.int32), PIECE_LEN)
    held = np.zeros(N_PIECES, dtype=np.uint8)
    held[rng.choice(N_PIECES, N_HELDOUT_PIECES, replace=False)] = 1
    split = held[piece]
    WORK.mkdir(parents=True, exist_ok=True)
    np.savez(DATA, x=x, split=split, piece=piece)

    from musinterp.activations import SiteWriter

    columns = {"piece": np.int32, "position": np.int32, "token": np.int32, "split": np.uint8}
    attrs = {"subject": "planted", "site": "synthetic_d256", "d": D, "family": "synthetic",
             "producer": "bench/sae_vs_saelens.py"}  # fmt: skip
    w = SiteWriter(STORE, D, columns, {"split": ["train", "heldout"]}, attrs)
    try:
        for start in range(0, n, 65536):
            sl = slice(start, start + 65536)
            w.append(x[sl], {"piece": piece[sl], "position": (np.arange(n)[sl] % PIECE_LEN).astype(np.int32),
                             "token": np.zeros(len(x[sl]), np.int32), "split": split[sl]})  # fmt: skip
    except BaseException:
        w.close(ok=False)
        raise
    w.close()
    info = {"n_tokens": n, "n_train": int((split == 0).sum()), "n_heldout": int((split == 1).sum()),
            "d": D, "planted_features": N_FEATURES, "mean_active_features": 10.0,
            "npz": str(DATA), "store": str(STORE), "store_bytes": STORE.stat().st_size}  # fmt: skip
    print(json.dumps(info))
    return info


# --- our side ----------------------------------------------------------------------------------


def run_ours(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from musinterp.sae import trainer

    stamps = {"batches": [], "evals": []}
    real_iter, real_eval = trainer.iter_shuffled_rows, trainer.evaluate

    def timed_iter(*a, **kw):
        stamps.setdefault("loop_start", time.perf_counter())
        for batch in real_iter(*a, **kw):
            stamps["batches"].append(time.perf_counter())
            yield batch

    def timed_eval(*a, **kw):
        t0 = time.perf_counter()
        out = real_eval(*a, **kw)
        stamps["evals"].append((t0, time.perf_counter()))
        return out

    trainer.iter_shuffled_rows, trainer.evaluate = timed_iter, timed_eval
    out_dir = WORK / f"ours_{args.arch}"
    kw = dict(arch=args.arch, width=args.width, lr=args.lr, batch_size=args.batch, epochs=args.epochs, seed=0,
              warmup_fraction=0.0, decay_fraction=0.0)  # fmt: skip
    if args.arch == "relu_l1":
        kw["l1_coeff"] = args.l1
    else:
        kw["k"] = args.k
    if args.max_tokens:
        kw["max_tokens"] = args.max_tokens
    with CpuMonitor() as mon:
        t0 = time.perf_counter()
        metrics = trainer.train_sae(STORE, out_dir, **kw)
        wall = time.perf_counter() - t0
    final_eval_start = stamps["evals"][-1][0]
    in_loop_eval = sum(b - a for a, b in stamps["evals"][:-1])
    loop = final_eval_start - stamps["loop_start"] - in_loop_eval
    tokens = metrics["tokens_seen"]
    res = {"side": "ours", "arch": args.arch, "settings": kw, "tokens": tokens, "steps": metrics["steps"],
           "wall_s": wall, "loop_s": loop, "in_loop_eval_s": in_loop_eval,
           "tokens_per_s_loop": tokens / loop, "tokens_per_s_end_to_end": tokens / wall,
           "own_metrics": {k: metrics[k] for k in ("fvu", "l0", "dead_fraction", "dense_fraction")},
           "sae_dir": str(out_dir), "contention": mon.result, "machine": machine_info()}  # fmt: skip
    print(json.dumps({k: v for k, v in res.items() if k != "machine"}))
    return res


# --- SAELens side ------------------------------------------------------------------------------


class InMemoryProvider:
    """Shuffled batches of an in-memory [n, d] tensor, one permutation per epoch, forever;
    records when each batch was requested."""

    def __init__(self, x, batch: int, seed: int = 0):
        import torch

        self.x, self.batch = x, batch
        self.gen = torch.Generator().manual_seed(seed)
        self.perm, self.pos = None, len(x)
        self.stamps: list[float] = []

    def __iter__(self):
        return self

    def __next__(self):
        import torch

        self.stamps.append(time.perf_counter())
        if self.pos + self.batch > len(self.x):
            self.perm, self.pos = torch.randperm(len(self.x), generator=self.gen), 0
        idx = self.perm[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return self.x[idx]


def run_saelens(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    import sae_lens
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    data = np.load(DATA)
    x_train = torch.from_numpy(data["x"][data["split"] == 0])
    n_train = len(x_train)
    total = args.max_tokens or args.epochs * n_train
    steps_per_epoch = n_train // args.batch
    dead_tokens = max(args.batch, int(total * 0.1))  # ours: resolve_dead_tokens default
    dead_window = math.ceil(dead_tokens / args.batch) - 1  # SAELens: dead when passes > window
    if args.arch == "relu_l1":
        cfg = StandardTrainingSAEConfig(d_in=D, d_sae=args.width, l1_coefficient=D * args.l1,
                                        normalize_activations="expected_average_only_in")  # fmt: skip
        sae = StandardTrainingSAE(cfg)
    else:
        cfg = TopKTrainingSAEConfig(d_in=D, d_sae=args.width, k=args.k,
                                    normalize_activations="expected_average_only_in")  # fmt: skip
        sae = TopKTrainingSAE(cfg)
    tcfg = SAETrainerConfig(
        total_training_samples=total, train_batch_size_samples=args.batch, lr=args.lr,
        lr_end=args.lr, lr_scheduler_name="constant", lr_warm_up_steps=0, lr_decay_steps=0, device="cpu",
        dead_feature_window=dead_window, n_checkpoints=0, save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False), n_batches_for_norm_estimate=steps_per_epoch,
    )  # fmt: skip
    provider = InMemoryProvider(x_train, args.batch)
    trainer = SAETrainer(cfg=tcfg, sae=sae, data_provider=provider)
    out_dir = WORK / f"saelens_{args.arch}"
    with CpuMonitor() as mon:
        t0 = time.perf_counter()
        sae = trainer.fit()
        t_fit = time.perf_counter()
        sae.save_inference_model(out_dir)
        wall = time.perf_counter() - t0
    loop_start = provider.stamps[steps_per_epoch]  # the first training batch
    loop = t_fit - loop_start
    tokens = trainer.n_training_samples
    res = {"side": "saelens", "arch": args.arch, "saelens_version": sae_lens.__version__,
           "torch": torch.__version__, "sae_cfg": {k: v for k, v in cfg.to_dict().items() if k != "metadata"},
           "trainer_cfg": {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                           for k, v in vars(tcfg).items()},
           "tokens": tokens, "steps": trainer.n_training_steps, "wall_s": wall, "loop_s": loop,
           "norm_estimate_s": loop_start - t0,
           "tokens_per_s_loop": tokens / loop, "tokens_per_s_end_to_end": tokens / wall,
           "sae_dir": str(out_dir), "contention": mon.result, "machine": machine_info()}  # fmt: skip
    print(json.dumps({k: v for k, v in res.items() if k not in ("machine", "sae_cfg", "trainer_cfg")}))
    return res


# --- the shared evaluation ---------------------------------------------------------------------


def heldout_metrics(sae, x, batch: int = 8192, dense_threshold: float = 0.1) -> dict:
    """FVU, L0, dead and dense fractions of an SAELens ``SAE`` on held-out rows ``x`` [n, d]
    (float32 tensor), accumulated in float64. Used for both sides."""
    import torch

    x64 = x.to(torch.float64)
    total_var = float(((x64 - x64.mean(dim=0)) ** 2).sum())
    sse, nnz = 0.0, 0
    fires = torch.zeros(sae.cfg.d_sae, dtype=torch.int64)
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = x[i : i + batch]
            z = sae.encode(xb)
            x_hat = sae.decode(z)
            sse += float(((xb.to(torch.float64) - x_hat.to(torch.float64)) ** 2).sum())
            f = z != 0
            nnz += int(f.sum())
            fires += f.sum(dim=0)
    rate = fires.to(torch.float64) / len(x)
    return {"fvu": sse / total_var, "l0": nnz / len(x), "dead_fraction": float((fires == 0).double().mean()),
            "dense_fraction": float((rate > dense_threshold).double().mean()), "n_tokens": len(x)}  # fmt: skip


def run_eval(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from sae_lens import SAE

    data = np.load(DATA)
    x_held = torch.from_numpy(data["x"][data["split"] == 1])
    out = {}
    for side in ("ours", "saelens"):
        for arch in ("relu_l1", "topk"):
            path = WORK / f"{side}_{arch}"
            if path.is_dir():
                sae = SAE.load_from_disk(path)
                out[f"{side}_{arch}"] = heldout_metrics(sae, x_held)
    print(json.dumps(out))
    return out


# --- driver ------------------------------------------------------------------------------------


def sub(step: str, args, extra: list[str] | None = None) -> dict:
    py = SAELENS_PY if step in ("saelens", "eval") else OURS_PY
    tmp = WORK / f".{step}_{'_'.join(extra or [])}.json"
    cmd = [str(py), __file__, step, "--out-json", str(tmp), "--threads", str(args.threads),
           "--l1", str(args.l1), "--k", str(args.k), "--lr", str(args.lr), "--width", str(args.width),
           "--batch", str(args.batch), "--epochs", str(args.epochs), *(extra or [])]  # fmt: skip
    if args.max_tokens:
        cmd += ["--max-tokens", str(args.max_tokens)]
    env = {**os.environ, "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}
    if py == OURS_PY:
        env["PYTHONPATH"] = str(REPO / "src")
    print("$", " ".join(cmd[:3]), " ".join(extra or []), flush=True)
    subprocess.run(cmd, check=True, env=env)
    return json.loads(tmp.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", nargs="?", default="all", choices=["all", "prepare", "ours", "saelens", "eval"])
    ap.add_argument("--arch", choices=["relu_l1", "topk"], default="relu_l1")
    ap.add_argument("--archs", nargs="+", default=["relu_l1", "topk"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--l1", type=float, default=4e-3, help="our l1_coeff; SAELens gets d_in times it")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--out-json", type=Path)
    ap.add_argument("--out", type=Path, default=RESULTS / "sae_vs_saelens.json")
    ap.add_argument("--wait-quiet", type=float, default=300)
    ap.add_argument("--keep", action="store_true", help="keep /tmp/musinterp-bench afterwards")
    args = ap.parse_args()
    steps = {"prepare": prepare, "ours": run_ours, "saelens": run_saelens, "eval": run_eval}
    if args.step != "all":
        res = steps[args.step](args)
        if args.out_json:
            args.out_json.write_text(json.dumps(res, indent=1))
        return

    t0 = time.perf_counter()
    quiet = wait_for_quiet(args.wait_quiet)
    if DATA.exists() and STORE.exists():  # left by an earlier run with --keep
        split = np.load(DATA)["split"]
        data_info = {"reused": str(DATA), "n_tokens": len(split), "n_train": int((split == 0).sum()),
                     "n_heldout": int((split == 1).sum()), "d": D, "planted_features": N_FEATURES,
                     "mean_active_features": 10.0, "store_bytes": STORE.stat().st_size}  # fmt: skip
    else:
        data_info = sub("prepare", args)
    runs = {}
    for arch in args.archs:  # interleaved, so slow drift of the machine hits both sides alike
        runs[f"ours_{arch}"] = sub("ours", args, ["--arch", arch])
        runs[f"saelens_{arch}"] = sub("saelens", args, ["--arch", arch])
    evals = sub("eval", args)
    table = []
    for arch in args.archs:
        o, s = runs[f"ours_{arch}"], runs[f"saelens_{arch}"]
        eo, es = evals[f"ours_{arch}"], evals[f"saelens_{arch}"]
        table.append({
            "arch": arch,
            "ours_tok_s_loop": o["tokens_per_s_loop"], "saelens_tok_s_loop": s["tokens_per_s_loop"],
            "speedup_loop": o["tokens_per_s_loop"] / s["tokens_per_s_loop"],
            "ours_tok_s_e2e": o["tokens_per_s_end_to_end"], "saelens_tok_s_e2e": s["tokens_per_s_end_to_end"],
            "speedup_e2e": o["tokens_per_s_end_to_end"] / s["tokens_per_s_end_to_end"],
            "ours_fvu": eo["fvu"], "saelens_fvu": es["fvu"], "ours_l0": eo["l0"], "saelens_l0": es["l0"],
            "ours_dead": eo["dead_fraction"], "saelens_dead": es["dead_fraction"],
            "ours_dense": eo["dense_fraction"], "saelens_dense": es["dense_fraction"],
            "ours_fvu_own_metrics": o["own_metrics"]["fvu"], "ours_l0_own_metrics": o["own_metrics"]["l0"],
            "goal_2x_tokens_s_loop": o["tokens_per_s_loop"] >= 2 * s["tokens_per_s_loop"],
            "fvu_and_l0_not_worse": eo["fvu"] <= es["fvu"] and eo["l0"] <= es["l0"],
        })  # fmt: skip
    result = {
        "benchmark": "sae_vs_saelens",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "other_processes_cores_before": quiet,
        "data": data_info,
        "hyperparameters": {"d_in": D, "width": args.width, "batch": args.batch, "lr": args.lr,
                            "epochs": args.epochs, "l1_ours": args.l1, "l1_saelens": D * args.l1,
                            "k": args.k, "threads": args.threads},  # fmt: skip
        "table": table,
        "runs": runs,
        "eval": evals,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for row in table:
        print(json.dumps(row))
    print(f"wrote {args.out} ({result['wall_s']} s)")
    if not args.keep:
        import shutil

        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
