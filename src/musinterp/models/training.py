"""Teacher-forced training of reference models, with held-out early stopping and resumable checkpoints.

Works for any family through its interface (:class:`musinterp.models.interface.MusicModel`):
pieces become batches with ``model.make_batch`` and the objective is ``model.loss``. Pieces are
batched by similar length (as folk-rnn did) so little compute goes to padding.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import PRODUCER
from ..io import atomic_path

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    optimizer: str = "adam"  # "adam" or "rmsprop" (folk-rnn v2 used RMSprop 0.003)
    grad_clip: float = 5.0
    lr_decay: float = 1.0  # multiply the lr by this after every epoch from lr_decay_start on (folk-rnn: 0.97)
    lr_decay_start: int = 0
    patience: int = 3  # epochs without held-out improvement before stopping
    max_train_tunes: int | None = None
    max_len: int | None = None  # truncate longer tunes (None keeps them whole)
    seed: int = 0
    device: str = "auto"  # "auto": CUDA when available, else CPU
    snapshot_every: int | None = None  # optimizer steps between weight snapshots (None: none), for training dynamics


def length_batches(seqs: list[np.ndarray], batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Index batches of tunes of similar length, in random order."""
    order = np.argsort([len(s) for s in seqs], kind="stable")
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def evaluate(model, pieces: list[np.ndarray], vocab, batch_size: int, max_len: int | None = None) -> float:
    """Mean per-target loss (nats) over ``pieces``."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    order = np.argsort([len(s) for s in pieces])
    for i in range(0, len(order), batch_size):
        batch = model.make_batch([pieces[j] for j in order[i : i + batch_size]], vocab, max_len).to(device)
        n = batch.n_targets
        total += float(model.loss(batch)) * n
        count += n
    return total / max(count, 1)


def make_optimizer(model, cfg: TrainConfig):
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=cfg.lr)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (expected 'adam' or 'rmsprop')")


def save_snapshot(model, snapshot_dir: str | Path, step: int, epoch: int) -> Path:
    """Write the model's current weights to ``snapshot_dir/step_{step:07d}.pt`` (atomically)."""
    path = Path(snapshot_dir) / f"step_{step:07d}.pt"
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"step": step, "epoch": epoch, "state_dict": state}, tmp)
    return path


def train_lm(
    model,
    train_tunes: list[np.ndarray],
    valid_tunes: list[np.ndarray],
    vocab,
    cfg: TrainConfig,
    checkpoint_path: str | Path | None = None,
    snapshot_dir: str | Path | None = None,
) -> dict:
    """Train ``model`` in place on pieces of token ids (in ``vocab``); return the history and
    leave the best held-out weights loaded.

    If ``checkpoint_path`` holds a checkpoint of the same run settings, training resumes from it.
    With ``cfg.snapshot_every`` set, the weights are also saved before the first step and after
    every ``snapshot_every`` optimizer steps, as ``{"step", "epoch", "state_dict"}`` in
    ``snapshot_dir/step_{step:07d}.pt`` (the weights as they are then, not the best ones).
    """
    if cfg.snapshot_every is not None and (cfg.snapshot_every < 1 or snapshot_dir is None):
        raise ValueError(f"snapshot_every={cfg.snapshot_every} needs a positive value and a snapshot_dir")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.max_train_tunes is not None and len(train_tunes) > cfg.max_train_tunes:
        pick = rng.choice(len(train_tunes), cfg.max_train_tunes, replace=False)
        train_tunes = [train_tunes[i] for i in sorted(pick)]
    train, valid = list(train_tunes), list(valid_tunes)
    if not train or not valid:
        raise ValueError(f"need training and held-out tunes, got {len(train)} and {len(valid)}")
    n_train_tokens = sum(model.make_batch([s], vocab, cfg.max_len).n_targets for s in train)
    device = resolve_device(cfg.device)
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    history = {"epoch": [], "train_loss": [], "valid_loss": [], "seconds": []}
    best = {"valid_loss": math.inf, "epoch": -1, "state": None}
    start_epoch = step = 0

    ckpt = Path(checkpoint_path) if checkpoint_path else None
    if ckpt is not None and ckpt.exists():
        saved = torch.load(ckpt, weights_only=True, map_location=device)
        if saved.get("train_config") == asdict(cfg):
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            history, best, start_epoch = saved["history"], saved["best"], saved["epoch"] + 1
            step = saved.get("step", 0)
            torch.set_rng_state(saved["torch_rng"].cpu())
            rng.bit_generator.state = saved["numpy_rng"]
            log.info("resumed from %s at epoch %d", ckpt, start_epoch)
        else:
            log.warning("ignoring %s: it was written with other training settings", ckpt)

    log.info(
        "training %s: %d train tunes (%d tokens), %d held-out tunes, %d parameters",
        type(model).__name__, len(train), n_train_tokens, len(valid), sum(p.numel() for p in model.parameters()),
    )
    if cfg.snapshot_every is not None and step == 0:
        for stale in Path(snapshot_dir).glob("step_*.pt"):  # of an earlier run: a fresh run replaces them
            stale.unlink()
        save_snapshot(model, snapshot_dir, step, start_epoch)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * cfg.lr_decay ** max(0, epoch - cfg.lr_decay_start)
        model.train()
        total, count = 0.0, 0
        batches = length_batches(train, cfg.batch_size, rng)
        for idx in tqdm(batches, desc=f"epoch {epoch}", mininterval=10, leave=False):
            batch = model.make_batch([train[j] for j in idx], vocab, cfg.max_len).to(device)
            loss = model.loss(batch)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            if cfg.snapshot_every is not None and step % cfg.snapshot_every == 0:
                save_snapshot(model, snapshot_dir, step, epoch)
            n = batch.n_targets
            total += loss.item() * n
            count += n
        valid_loss = evaluate(model, valid, vocab, cfg.batch_size, cfg.max_len)
        seconds = time.time() - t0
        for key, value in zip(history, (epoch, total / count, valid_loss, seconds)):
            history[key].append(value)
        log.info(
            "epoch %d: train %.4f, held-out %.4f nats/token, %.0f s (%.0f tokens/s)",
            epoch, total / count, valid_loss, seconds, n_train_tokens / seconds,
        )
        if valid_loss < best["valid_loss"]:
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            best = {"valid_loss": valid_loss, "epoch": epoch, "state": state}
        if ckpt is not None:
            with atomic_path(ckpt) as tmp:
                torch.save(
                    {
                        "train_config": asdict(cfg), "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "history": history, "best": best,
                        "epoch": epoch, "step": step, "torch_rng": torch.get_rng_state(),
                        "numpy_rng": rng.bit_generator.state,
                    },
                    tmp,
                )
        if epoch - best["epoch"] >= cfg.patience:
            log.info("early stop: no held-out improvement for %d epochs", cfg.patience)
            break
    model.load_state_dict(best["state"])
    model.cpu().eval()
    return {
        "history": history,
        "best_epoch": best["epoch"],
        "best_valid_loss": best["valid_loss"],
        "n_train_tunes": len(train),
        "n_valid_tunes": len(valid),
        "n_train_tokens": n_train_tokens,
        "device": str(device),
    }


def train_model(
    family: str,
    corpus_dir: str | Path,
    out_dir: str | Path,
    model_params: dict | None = None,
    train_params: dict | None = None,
    n_samples: int = 5,
    temperature: float = 1.0,
) -> dict:
    """Train a reference model of ``family`` on a corpus; write model.pt, model.json, samples.txt.

    Settings left out take the defaults of the family's config dataclass and :class:`TrainConfig`.
    """
    from ..corpus.store import load_corpus
    from ..registry import get_family
    from .store import save, write_samples

    spec = get_family(family)
    corpus = load_corpus(corpus_dir)
    if corpus.format not in spec.formats:
        raise ValueError(f"{corpus_dir}: token format {corpus.format!r} is not one {family} reads ({list(spec.formats)})")
    cfg = TrainConfig(**(train_params or {}))
    torch.manual_seed(cfg.seed)
    model = spec.model_class()(spec.make_config(model_params, vocab_size=len(corpus.vocab)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    # passed only when asked for, so trainers without snapshot support keep working
    snapshots = {} if cfg.snapshot_every is None else {"snapshot_dir": out_dir / "snapshots"}
    result = spec.train_function()(
        model,
        [corpus.tunes[i] for i in corpus.indices("train")],
        [corpus.tunes[i] for i in corpus.indices("heldout")],
        corpus.token_vocab,
        cfg,
        checkpoint_path=out_dir / "checkpoint.pt",
        **snapshots,
    )
    seconds = time.time() - t0

    if hasattr(model, "generate"):
        write_samples(model, corpus.vocab, out_dir / "samples.txt", n_samples, temperature, cfg.seed)
    else:
        with atomic_path(out_dir / "samples.txt") as tmp:
            tmp.write_text("")  # the family does not generate

    meta = {
        "vocab": corpus.vocab,
        "format": corpus.format,
        "corpus": str(corpus_dir),
        "corpus_name": corpus.name,
        "train_config": vars(cfg),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "training_seconds": seconds,
        "sampling": {"n_samples": n_samples, "temperature": temperature, "seed": cfg.seed},
        "producer": PRODUCER,
        **result,
    }
    save(model, out_dir, meta)
    (out_dir / "checkpoint.pt").unlink(missing_ok=True)  # only needed to resume an unfinished run
    log.info("wrote %s (best held-out loss %.4f at epoch %d)", out_dir, result["best_valid_loss"], result["best_epoch"])
    return meta
