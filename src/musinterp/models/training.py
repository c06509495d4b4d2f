"""Teacher-forced language-model training with held-out early stopping and resumable checkpoints.

Works for any model with ``loss(tokens, mask)``; sequences are whole tunes framed by ``<s>`` and
``</s>``, batched by similar length (as folk-rnn did) so little compute goes to padding.
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


def frame_tunes(tunes: list[np.ndarray], bos: int, eos: int, max_len: int | None) -> list[np.ndarray]:
    framed = [np.concatenate([[bos], t, [eos]]).astype(np.int64) for t in tunes]
    if max_len is not None:
        framed = [f[:max_len] for f in framed]
    return framed


def length_batches(seqs: list[np.ndarray], batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Index batches of tunes of similar length, in random order."""
    order = np.argsort([len(s) for s in seqs], kind="stable")
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def pad(seqs: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    tokens = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=bool)
    for row, s in enumerate(seqs):
        tokens[row, : len(s)] = s
        mask[row, : len(s)] = True
    return torch.from_numpy(tokens), torch.from_numpy(mask)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def evaluate(model, seqs: list[np.ndarray], batch_size: int, pad_id: int) -> float:
    """Mean per-token cross entropy (nats) over ``seqs``."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    order = np.argsort([len(s) for s in seqs])
    for i in range(0, len(order), batch_size):
        tokens, mask = (t.to(device) for t in pad([seqs[j] for j in order[i : i + batch_size]], pad_id))
        n = int(mask[:, 1:].sum())
        total += float(model.loss(tokens, mask)) * n
        count += n
    return total / max(count, 1)


def make_optimizer(model, cfg: TrainConfig):
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=cfg.lr)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (expected 'adam' or 'rmsprop')")


def train_lm(
    model,
    train_tunes: list[np.ndarray],
    valid_tunes: list[np.ndarray],
    bos: int,
    eos: int,
    cfg: TrainConfig,
    checkpoint_path: str | Path | None = None,
) -> dict:
    """Train ``model`` in place; return the history and leave the best held-out weights loaded.

    If ``checkpoint_path`` holds a checkpoint of the same run settings, training resumes from it.
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.max_train_tunes is not None and len(train_tunes) > cfg.max_train_tunes:
        pick = rng.choice(len(train_tunes), cfg.max_train_tunes, replace=False)
        train_tunes = [train_tunes[i] for i in sorted(pick)]
    train = frame_tunes(train_tunes, bos, eos, cfg.max_len)
    valid = frame_tunes(valid_tunes, bos, eos, cfg.max_len)
    if not train or not valid:
        raise ValueError(f"need training and held-out tunes, got {len(train)} and {len(valid)}")
    n_train_tokens = sum(len(s) - 1 for s in train)
    device = resolve_device(cfg.device)
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    history = {"epoch": [], "train_loss": [], "valid_loss": [], "seconds": []}
    best = {"valid_loss": math.inf, "epoch": -1, "state": None}
    start_epoch = 0

    ckpt = Path(checkpoint_path) if checkpoint_path else None
    if ckpt is not None and ckpt.exists():
        saved = torch.load(ckpt, weights_only=True, map_location=device)
        if saved.get("train_config") == asdict(cfg):
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            history, best, start_epoch = saved["history"], saved["best"], saved["epoch"] + 1
            torch.set_rng_state(saved["torch_rng"].cpu())
            rng.bit_generator.state = saved["numpy_rng"]
            log.info("resumed from %s at epoch %d", ckpt, start_epoch)
        else:
            log.warning("ignoring %s: it was written with other training settings", ckpt)

    log.info(
        "training %s: %d train tunes (%d tokens), %d held-out tunes, %d parameters",
        type(model).__name__, len(train), n_train_tokens, len(valid), sum(p.numel() for p in model.parameters()),
    )
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * cfg.lr_decay ** max(0, epoch - cfg.lr_decay_start)
        model.train()
        total, count = 0.0, 0
        batches = length_batches(train, cfg.batch_size, rng)
        for idx in tqdm(batches, desc=f"epoch {epoch}", mininterval=10, leave=False):
            tokens, mask = (t.to(device) for t in pad([train[j] for j in idx], eos))
            loss = model.loss(tokens, mask)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            n = int(mask[:, 1:].sum())
            total += loss.item() * n
            count += n
        valid_loss = evaluate(model, valid, cfg.batch_size, eos)
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
                        "epoch": epoch, "torch_rng": torch.get_rng_state(),
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
