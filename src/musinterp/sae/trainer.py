"""Train a sparse autoencoder on an activation file and write an SAELens-loadable SAE directory.

    acts.h5 (/acts [n, d], /tokens/split)  →  out_dir/cfg.json, sae_weights.safetensors,
                                               metrics.json, training_log.tsv

1. One pass over every row checks that all activations are finite and computes the per-dimension
   mean and standard deviation of the training rows (split 0), in float64.
2. Training streams the training rows in a seeded global shuffle with bounded memory: blocks of
   whole HDF5 chunks are read in a random order into a shuffle buffer, which is permuted and cut
   into batches; the part of the buffer too small for a batch is carried into the next fill.
   The SAE sees z-scored inputs ``(x - mean) / std``.
3. Held-out rows (split 1) measure FVU, L0, dead and dense fractions (:mod:`.metrics`) in the raw
   activation space: every ``eval_every`` steps on the first ``eval_tokens`` held-out rows, and at
   the end on all of them.
4. The z-scoring is folded into the weights and the directory is written atomically.

Architectures plug in through :data:`ARCHITECTURES`: an ``nn.Module`` class with a ``cfg``
holding ``d_in`` and ``d_sae`` and the methods ``from_settings`` (classmethod), ``encode``,
``decode``, ``forward`` (→ ``x̂, z``), ``training_loss`` (→ loss, dict of detached parts, logged as
columns), ``after_optimizer_step`` (constraints such as unit-norm decoder rows) and
``saelens_export`` (→ SAELens architecture, tensors in the normalised space, extra cfg fields);
see :mod:`.relu_l1`. A new architecture is one module plus one entry here (and a field in
:class:`TrainSettings` for each new hyperparameter).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np
import torch
from tqdm import tqdm

from musinterp import PRODUCER
from musinterp.activations import ActivationFile
from musinterp.io import atomic_dir, write_json
from musinterp.sae.metrics import MetricsAccumulator, SAEMetrics
from musinterp.sae.relu_l1 import ReluL1SAE
from musinterp.sae.saelens import fold_input_normalisation, save_sae, saelens_cfg

log = logging.getLogger(__name__)

ARCHITECTURES: dict[str, type] = {"relu_l1": ReluL1SAE}

TRAIN, HELDOUT = 0, 1  # values of /tokens/split
BLOCK_BYTES = 4 << 20  # rows read at once: whole HDF5 chunks, about this many bytes
SHUFFLE_BUFFER_BYTES = 256 << 20
EVAL_BATCH_ROWS = 8192
# A dimension whose training std is below this fraction of the largest one is treated as constant:
# it is centred but not scaled, instead of blowing float noise up to unit variance.
CONSTANT_DIM_REL_STD = 1e-6


@dataclass
class TrainSettings:
    arch: str = "relu_l1"
    width: int | None = None  # d_sae; None means 4 · d_in
    l1_coeff: float = 1e-3
    lr: float = 1e-3
    batch_size: int = 2048
    epochs: int = 2
    seed: int = 0
    max_tokens: int | None = None  # stop after this many training tokens (all epochs together)
    eval_every: int = 500  # steps between held-out evaluations
    eval_tokens: int = 65_536  # held-out rows used by the periodic evaluations (the final uses all)
    buffer_tokens: int | None = None  # shuffle buffer rows; None means about 256 MiB of float32
    device: str = "cpu"

    def check(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown SAE architecture {self.arch!r}; known: {sorted(ARCHITECTURES)}")
        for name in ("batch_size", "epochs", "eval_every", "eval_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("width", "max_tokens", "buffer_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or None), got {value}")
        if not (self.lr > 0 and self.l1_coeff >= 0):
            raise ValueError(f"need lr > 0 and l1_coeff >= 0, got lr={self.lr}, l1_coeff={self.l1_coeff}")


class ActivationStore(ActivationFile):
    """An activation file opened for training: non-empty, with a valid ``/tokens/split``.

    Reads whole HDF5 chunks at a time (``block_rows``); every block read is checked for NaN/inf,
    and an error names the file and the first bad row.
    """

    def __init__(self, path: str | os.PathLike, block_bytes: int = BLOCK_BYTES):
        super().__init__(path)
        try:
            self._check_for_training(block_bytes)
        except BaseException:
            self.close()
            raise

    def _check_for_training(self, block_bytes: int) -> None:
        if self.n_rows == 0 or self.d == 0:
            raise ValueError(f"{self.path}: /acts is empty (shape {self.acts.shape}); nothing to train on")
        if not self.has_column("split"):
            raise ValueError(f"{self.path}: no /tokens/split column (0 = train, 1 = held-out)")
        self.split = self.column("split")
        unknown = ~np.isin(self.split, (TRAIN, HELDOUT))
        if unknown.any():
            row = int(np.argmax(unknown))
            raise ValueError(
                f"{self.path}: /tokens/split row {row} is {self.split[row]}, expected 0 (train) or 1 (held-out)"
            )
        chunk_rows = self.acts.chunks[0] if self.acts.chunks else 1024
        chunks_per_block = max(1, block_bytes // (chunk_rows * self.d * self.acts.dtype.itemsize))
        self.block_rows = chunk_rows * chunks_per_block

    def count(self, split_value: int) -> int:
        return int((self.split == split_value).sum())

    def blocks(self, split_value: int | None = None) -> list[tuple[int, int]]:
        """``(start, stop)`` row ranges in file order; only those holding ``split_value`` rows."""
        out = []
        for start in range(0, self.n_rows, self.block_rows):
            stop = min(start + self.block_rows, self.n_rows)
            if split_value is None or (self.split[start:stop] == split_value).any():
                out.append((start, stop))
        return out

    def read(self, start: int, stop: int, split_value: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` as float32 (only those of ``split_value`` if given), checked finite."""
        x = np.asarray(self.acts[start:stop], dtype=np.float32)
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            bad = start + int(np.argmin(finite))
            raise ValueError(f"{self.path}: /acts row {bad} contains NaN or infinite values")
        if split_value is not None:
            x = x[self.split[start:stop] == split_value]
        return x


def input_statistics(store: ActivationStore) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Training rows' per-dimension mean and std, and the number of constant dimensions.

    Reads every row once, so it is also the finiteness check of the whole file (a bad row is
    reported wherever it is, train or held-out). Constant dimensions get std 1.
    """
    n = 0
    mean = np.zeros(store.d, dtype=np.float64)
    sq_dev = np.zeros(store.d, dtype=np.float64)
    for start, stop in tqdm(store.blocks(), desc="scanning activations", unit="block", mininterval=2.0):
        x = store.read(start, stop, TRAIN).astype(np.float64)  # checks all rows, keeps train ones
        if len(x) == 0:
            continue
        # Chan et al.: merge this block's mean and squared deviations into the running ones.
        b_mean = x.mean(axis=0)
        b_sq_dev = ((x - b_mean) ** 2).sum(axis=0)
        total = n + len(x)
        delta = b_mean - mean
        sq_dev += b_sq_dev + delta**2 * (n * len(x) / total)
        mean += delta * (len(x) / total)
        n = total
    std = np.sqrt(sq_dev / n)
    constant = std <= CONSTANT_DIM_REL_STD * max(float(std.max()), np.finfo(np.float32).tiny)
    std[constant] = 1.0
    return torch.from_numpy(mean), torch.from_numpy(std), int(constant.sum())


def iter_shuffled_rows(
    store: ActivationStore,
    split_value: int,
    batch_size: int,
    buffer_rows: int,
    rng: np.random.Generator,
) -> Iterator[np.ndarray]:
    """One epoch of ``split_value`` rows in a seeded global shuffle, as batches.

    Blocks come in a random order into a buffer of about ``buffer_rows`` rows, which is permuted
    and emitted as full batches; the remainder is carried into the next fill. Only the very last
    batch of the epoch may be short.
    """
    carry = np.empty((0, store.d), dtype=np.float32)
    pending: list[np.ndarray] = []
    n_pending = 0
    blocks = store.blocks(split_value)

    def drain(final: bool) -> Iterator[np.ndarray]:
        nonlocal carry, pending, n_pending
        buffer = np.concatenate([carry, *pending])
        pending, n_pending = [], 0
        buffer = buffer[rng.permutation(len(buffer))]
        n_full = len(buffer) if final else len(buffer) // batch_size * batch_size
        for i in range(0, n_full, batch_size):
            yield buffer[i : i + batch_size]
        carry = buffer[n_full:]

    for index in rng.permutation(len(blocks)):
        start, stop = blocks[index]
        rows = store.read(start, stop, split_value)
        pending.append(rows)
        n_pending += len(rows)
        if n_pending >= buffer_rows:
            yield from drain(final=False)
    yield from drain(final=True)


def iter_rows(store: ActivationStore, split_value: int, limit: int | None = None) -> Iterator[np.ndarray]:
    """``split_value`` rows in file order, block by block, at most ``limit`` of them."""
    seen = 0
    for start, stop in store.blocks(split_value):
        rows = store.read(start, stop, split_value)
        if limit is not None:
            rows = rows[: limit - seen]
        seen += len(rows)
        yield rows
        if limit is not None and seen >= limit:
            return


@torch.no_grad()
def evaluate(sae: torch.nn.Module, row_blocks, mean: torch.Tensor, std: torch.Tensor) -> SAEMetrics:
    """Held-out metrics of ``sae`` (which reads z-scored inputs) measured on raw activations."""
    device = mean.device
    acc = MetricsAccumulator(sae.cfg.d_in, sae.cfg.d_sae)
    was_training = sae.training
    sae.eval()
    for rows in row_blocks:
        for i in range(0, len(rows), EVAL_BATCH_ROWS):
            x = torch.from_numpy(rows[i : i + EVAL_BATCH_ROWS]).to(device)
            x_hat_n, z = sae((x - mean) / std)
            acc.update(x, x_hat_n * std + mean, z)
    sae.train(was_training)
    return acc.result()


class _TrainingLog:
    """``training_log.tsv``: one row per step; held-out columns filled at evaluation steps."""

    def __init__(self, path: Path, part_names: list[str]):
        self.columns = ["step", "tokens_seen", "loss", *part_names, "heldout_fvu", "heldout_l0"]
        self.file = open(path, "w")
        self.file.write("\t".join(self.columns) + "\n")

    def write(self, row: dict[str, Any]) -> None:
        def fmt(value):
            if value is None:
                return ""
            return f"{value:.7g}" if isinstance(value, float) else str(value)

        self.file.write("\t".join(fmt(row.get(c)) for c in self.columns) + "\n")

    def close(self) -> None:
        self.file.close()


def train_sae(
    acts_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    arch: str = "relu_l1",
    width: int | None = None,
    l1_coeff: float = 1e-3,
    lr: float = 1e-3,
    batch_size: int = 2048,
    epochs: int = 2,
    seed: int = 0,
    max_tokens: int | None = None,
    eval_every: int = 500,
    device: str = "cpu",
    *,
    eval_tokens: int = 65_536,
    buffer_tokens: int | None = None,
) -> dict[str, Any]:
    """Train an SAE on ``acts_path`` and write it to ``out_dir``; return the final metrics.

    Deterministic on CPU for a given ``seed`` (initialisation and shuffling draw only from
    generators seeded with it). ``out_dir`` appears only when everything has been written.
    """
    settings = TrainSettings(
        arch=arch, width=width, l1_coeff=l1_coeff, lr=lr, batch_size=batch_size, epochs=epochs,
        seed=seed, max_tokens=max_tokens, eval_every=eval_every, eval_tokens=eval_tokens,
        buffer_tokens=buffer_tokens, device=device,
    )  # fmt: skip
    settings.check()
    acts_path, out_dir = Path(acts_path), Path(out_dir)
    t_start = time.perf_counter()
    with ActivationStore(acts_path) as store:
        n_train, n_heldout = store.count(TRAIN), store.count(HELDOUT)
        if n_train == 0:
            raise ValueError(f"{acts_path}: no training rows (/tokens/split == {TRAIN})")
        if n_heldout == 0:
            raise ValueError(
                f"{acts_path}: no held-out rows (/tokens/split == {HELDOUT}); the SAE stage measures "
                "FVU, L0 and dead latents on held-out pieces, so record activations with held-out pieces"
            )
        d_in = store.d
        d_sae = settings.width or 4 * d_in
        log.info(
            "training %s SAE %d->%d on %s: %d train / %d held-out tokens, %d epochs, batch %d, seed %d",
            arch, d_in, d_sae, acts_path, n_train, n_heldout, epochs, batch_size, seed,
        )  # fmt: skip
        mean, std, n_constant = input_statistics(store)
        if n_constant:
            log.warning(
                "%s: %d of %d dimensions are constant on the training rows", acts_path, n_constant, d_in
            )

        torch_device = torch.device(device)
        mean_dev = mean.to(torch.float32).to(torch_device)
        std_dev = std.to(torch.float32).to(torch_device)
        generator = torch.Generator().manual_seed(seed)
        rng = np.random.default_rng(seed)
        sae = ARCHITECTURES[arch].from_settings(d_in, d_sae, settings, generator=generator).to(torch_device)
        optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
        eval_rows = np.concatenate(list(iter_rows(store, HELDOUT, limit=eval_tokens)))
        buffer_rows = settings.buffer_tokens or max(4 * batch_size, SHUFFLE_BUFFER_BYTES // (4 * d_in))
        total_tokens = epochs * n_train if max_tokens is None else min(max_tokens, epochs * n_train)

        with atomic_dir(out_dir) as tmp_dir:
            training_log = None
            step = tokens_seen = 0
            last: dict[str, Any] = {}
            progress = tqdm(
                total=total_tokens,
                desc=f"training SAE {out_dir.name}",
                unit="tok",
                unit_scale=True,
                mininterval=2.0,
            )
            try:
                for epoch in range(1, epochs + 1):
                    if tokens_seen >= total_tokens:
                        break
                    for batch in iter_shuffled_rows(store, TRAIN, batch_size, buffer_rows, rng):
                        batch = batch[: total_tokens - tokens_seen]
                        x = (torch.from_numpy(batch).to(torch_device) - mean_dev) / std_dev
                        loss, parts = sae.training_loss(x)
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                        sae.after_optimizer_step()
                        step += 1
                        tokens_seen += len(batch)
                        progress.update(len(batch))
                        row = {"step": step, "tokens_seen": tokens_seen, "loss": float(loss.detach())}
                        row.update({name: float(value) for name, value in parts.items()})
                        if not math.isfinite(row["loss"]):
                            raise FloatingPointError(
                                f"{acts_path}: SAE training diverged at step {step} (loss {row['loss']}); try a lower lr"
                            )
                        if training_log is None:
                            training_log = _TrainingLog(tmp_dir / "training_log.tsv", list(parts))
                        if step % eval_every == 0 or tokens_seen >= total_tokens:
                            metrics = evaluate(sae, [eval_rows], mean_dev, std_dev)
                            row.update(heldout_fvu=metrics.fvu, heldout_l0=metrics.l0)
                            progress.set_postfix(
                                loss=f"{row['loss']:.4g}", fvu=f"{metrics.fvu:.3f}", l0=f"{metrics.l0:.1f}"
                            )
                            log.info(
                                "step %d epoch %d tokens %d: loss %.5g, held-out FVU %.4f, L0 %.2f",
                                step, epoch, tokens_seen, row["loss"], metrics.fvu, metrics.l0,
                            )  # fmt: skip
                        training_log.write(row)
                        last = row
                        if tokens_seen >= total_tokens:
                            break
            finally:
                progress.close()
                if training_log is not None:
                    training_log.close()

            final = evaluate(sae, iter_rows(store, HELDOUT), mean_dev, std_dev)
            seconds = time.perf_counter() - t_start
            saelens_arch, tensors, extra_cfg = sae.saelens_export()
            folded = fold_input_normalisation(tensors, mean, std)
            provenance = {
                "producer": PRODUCER,
                "trainer": "musinterp.sae.trainer.train_sae",
                "arch": arch,
                "acts_path": str(acts_path),
                "acts_producer": store.attrs.get("producer"),
                "family": store.attrs.get("family"),
                "input_normalisation": (
                    "per-dimension z-scoring with the training tokens' mean and std, "
                    "folded into W_enc, b_enc, W_dec and b_dec"
                ),
                "settings": {**asdict(settings), "width": d_sae},
            }
            cfg = saelens_cfg(
                saelens_arch, d_in, d_sae,
                subject=str(store.attrs.get("subject", "")), site=str(store.attrs.get("site", "")),
                provenance=provenance, device=device, **extra_cfg,
            )  # fmt: skip
            save_sae(tmp_dir, folded, cfg)
            result = {
                **final.to_dict(),
                "n_train_tokens": n_train,
                "n_heldout_tokens": n_heldout,
                "tokens_seen": tokens_seen,
                "steps": step,
                "final_train_loss": last.get("loss"),
                "seconds": round(seconds, 3),
                "tokens_per_second": round(tokens_seen / seconds, 1) if seconds > 0 else None,
                "arch": arch,
                "d_in": d_in,
                "d_sae": d_sae,
                "subject": cfg["metadata"]["subject"],
                "site": cfg["metadata"]["site"],
                "constant_dims": n_constant,
                "settings": provenance["settings"],
                "producer": PRODUCER,
            }
            result.pop("n_tokens")  # the same as n_heldout_tokens
            write_json(tmp_dir / "metrics.json", result)
    log.info(
        "wrote %s: held-out FVU %.4f, L0 %.2f, dead %.3f, dense %.3f (%d steps, %.1f s, %.0f tok/s)",
        out_dir, final.fvu, final.l0, final.dead_fraction, final.dense_fraction, step, seconds,
        tokens_seen / max(seconds, 1e-9),
    )  # fmt: skip
    return result


def read_metrics(sae_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``metrics.json`` of an SAE directory."""
    return json.loads((Path(sae_dir) / "metrics.json").read_text())
