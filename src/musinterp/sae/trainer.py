"""Train a sparse autoencoder on an activation file and write an SAELens-loadable SAE directory.

    acts.h5 (/acts [n, d], /tokens/split)  →  out_dir/cfg.json, sae_weights.safetensors,
                                               metrics.json, training_log.tsv

1. One pass over every row checks that all activations are finite and computes the statistics
   of the training rows (split 0) in float64: per-dimension mean and standard deviation, and the
   mean squared norm E‖x‖².
2. The architecture decides how inputs are normalised before the SAE sees them
   (:data:`musinterp.sae.base.INPUT_NORMALISATIONS`): ``relu_l1`` z-scores every dimension,
   ``x_n = (x − mean) / std``; the others scale by one number, ``x_n = s · x`` with
   ``s = sqrt(d_in / E‖x‖²)``, so that E‖x_n‖² = d_in. Either is ``x_n = (x − shift) / divisor``
   with per-dimension vectors, which :func:`musinterp.sae.saelens.fold_input_normalisation`
   folds into the saved weights (``normalize_activations`` stays ``"none"``).
3. Training streams the training rows in a seeded global shuffle with bounded memory
   (:func:`iter_shuffled_rows`): the order of an epoch is a function of (seed, epoch) alone, so
   a run can resume at any batch.
4. The learning rate warms up linearly from ``lr / warmup_steps`` to ``lr`` over the first
   ``warmup_fraction`` of the steps, stays at ``lr``, and decays linearly to 0 over the last
   ``decay_fraction`` (:func:`learning_rate`); Adam, the loss of the architecture, then the
   architecture's constraint (unit-norm decoder rows) after every step.
5. The trainer counts, for every latent, the training tokens since it last fired. A latent is
   *dead* (for training purposes) once that count reaches ``dead_tokens``; the top-k family
   trains dead latents with its AuxK loss, and every architecture can resample them
   (``resample_every`` steps, during the first half of training; :mod:`.base`).
6. Held-out rows (split 1) measure FVU, L0, dead and dense fractions (:mod:`.metrics`) in the raw
   activation space: every ``eval_every`` steps on the first ``eval_tokens`` held-out rows, and at
   the end on all of them.
7. Every ``checkpoint_every`` steps the whole training state goes to ``{out_dir}.ckpt/``
   (:func:`checkpoint_dir_for`), beside the output; a run started again with the same settings on
   the same file resumes from it and ends with bit-identical weights (on the same device and
   thread count). At the end the output directory is written atomically and the checkpoint
   directory removed.

Architectures plug in through :data:`ARCHITECTURES`; the interface they offer is documented on
:class:`musinterp.sae.base.SparseAutoencoder` (``config_from_settings``, ``from_settings``,
``encode``, ``decode``, ``forward`` → ``x̂, z``, ``training_loss`` → loss, parts, latents,
``after_optimizer_step``, ``resample_dead_latents``, ``saelens_export``). A new architecture is
one module plus one entry here (and a field in :class:`TrainSettings` for each new setting).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from musinterp import PRODUCER
from musinterp.activations import ActivationFile
from musinterp.io import atomic_dir, atomic_path, write_json
from musinterp.sae.base import SparseAutoencoder
from musinterp.sae.batchtopk import BatchTopKSAE
from musinterp.sae.jumprelu import JumpReLUSAE
from musinterp.sae.metrics import MetricsAccumulator, SAEMetrics
from musinterp.sae.relu_l1 import ReluL1SAE
from musinterp.sae.saelens import fold_input_normalisation, save_sae, saelens_cfg
from musinterp.sae.topk import TopKSAE

log = logging.getLogger(__name__)

ARCHITECTURES: dict[str, type[SparseAutoencoder]] = {
    "relu_l1": ReluL1SAE,
    "topk": TopKSAE,
    "batchtopk": BatchTopKSAE,
    "jumprelu": JumpReLUSAE,
}

TRAIN, HELDOUT = 0, 1  # values of /tokens/split
BLOCK_BYTES = 4 << 20  # rows read at once: whole HDF5 chunks, about this many bytes
SHUFFLE_BUFFER_BYTES = 256 << 20
EVAL_BATCH_ROWS = 8192
# A dimension whose training std is below this fraction of the largest one is treated as constant:
# it is centred but not scaled, instead of blowing float noise up to unit variance.
CONSTANT_DIM_REL_STD = 1e-6
# dead_tokens default: a tenth of the training tokens, at most Gao et al.'s 10M, at least a batch.
DEAD_TOKENS_MAX = 10_000_000
DEAD_TOKENS_FRACTION = 0.1

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "training_log.tsv"
CHECKPOINT_FORMAT = 1
# Settings that may change between a killed run and its resumption (they do not touch the
# trajectory of the weights).
RESUMABLE_ACROSS = ("checkpoint_every",)

# Distinct first words of the seed sequences (numpy SeedSequence entropy) of the shuffle's parts.
_BLOCK_ORDER_STREAM, _GROUP_PERMUTATION_STREAM = 0x5AE0B10C, 0x5AE06209


@dataclass
class TrainSettings:
    """Every setting of a training run. Architecture settings left ``None`` take the default of
    the architecture's config dataclass; setting one the architecture does not read is an error."""

    arch: str = "relu_l1"
    width: int | None = None  # d_sae; None means 4 · d_in
    # architecture settings (see each architecture's config dataclass for defaults and meaning)
    k: int | None = None  # topk, batchtopk: latents per token (required)
    l1_coeff: float | None = None  # relu_l1
    aux_coeff: float | None = None  # topk, batchtopk: weight of the AuxK loss
    k_aux: int | None = None  # topk, batchtopk: dead latents used by AuxK
    threshold_rate: float | None = None  # batchtopk: EMA rate of the global threshold
    l0_coeff: float | None = None  # jumprelu: weight of the L0 penalty
    bandwidth: float | None = None  # jumprelu: straight-through kernel width
    threshold_init: float | None = None  # jumprelu: initial per-latent threshold
    # optimisation
    lr: float = 1e-3
    batch_size: int = 2048
    epochs: int = 2
    seed: int = 0
    max_tokens: int | None = None  # stop after this many training tokens (all epochs together)
    warmup_fraction: float = 0.05
    decay_fraction: float = 0.2
    # dead latents
    dead_tokens: int | None = None  # None: min(10M, max(batch, total tokens / 10))
    resample_every: int | None = None  # steps between resamplings of dead latents; None: never
    # evaluation, memory, checkpoints
    eval_every: int = 500  # steps between held-out evaluations
    eval_tokens: int = 65_536  # held-out rows used by the periodic evaluations (the final uses all)
    buffer_tokens: int | None = None  # shuffle buffer rows; None means about 256 MiB of float32
    checkpoint_every: int | None = 1000  # steps between checkpoints; None: no checkpoints
    device: str = "cpu"

    def check(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown SAE architecture {self.arch!r}; known: {sorted(ARCHITECTURES)}")
        used = ARCHITECTURES[self.arch].settings_used
        for name in sorted(_architecture_settings() - set(used)):
            if getattr(self, name) is not None:
                users = [a for a, cls in ARCHITECTURES.items() if name in cls.settings_used]
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is a setting of {', '.join(users)}, "
                    f"not of the {self.arch} architecture"
                )
        if self.arch in ("topk", "batchtopk") and self.k is None:
            raise ValueError(f"{self.arch}: k (latents kept per token) is required")
        for name in ("batch_size", "epochs", "eval_every", "eval_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in (
            "width",
            "max_tokens",
            "buffer_tokens",
            "dead_tokens",
            "resample_every",
            "checkpoint_every",
        ):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1 (or None), got {value!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("warmup_fraction", "decay_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.warmup_fraction + self.decay_fraction > 1:
            raise ValueError(
                f"warmup_fraction + decay_fraction must be at most 1, got "
                f"{self.warmup_fraction} + {self.decay_fraction}"
            )


def _architecture_settings() -> set[str]:
    return {name for cls in ARCHITECTURES.values() for name in cls.settings_used}


# --- activations -------------------------------------------------------------------------------


class ActivationStore(ActivationFile):
    """An activation file opened for training: non-empty, with a valid ``/tokens/split``.

    Reads whole HDF5 chunks at a time (``block_rows``); every block read is checked for NaN/inf,
    and an error names the file and the first bad row.
    """

    def __init__(self, path: str | os.PathLike, block_bytes: int | None = None):
        super().__init__(path)
        try:
            self._check_for_training(BLOCK_BYTES if block_bytes is None else block_bytes)
        except BaseException:
            self.close()
            raise

    def _check_for_training(self, block_bytes: int) -> None:
        if self.n_rows == 0 or self.d == 0:
            raise ValueError(f"{self.path}: /acts is empty (shape {self.acts.shape}); nothing to train on")
        declared = self.attrs.get("d")
        if declared is not None and int(declared) != self.d:
            raise ValueError(f"{self.path}: attribute d={declared} but /acts has {self.d} columns")
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
        return [(start, stop) for start, stop, _ in self.block_counts(split_value)]

    def block_counts(self, split_value: int | None = None) -> list[tuple[int, int, int]]:
        """``(start, stop, rows of split_value in it)`` for the blocks holding any; no data read."""
        out = []
        for start in range(0, self.n_rows, self.block_rows):
            stop = min(start + self.block_rows, self.n_rows)
            n = stop - start if split_value is None else int((self.split[start:stop] == split_value).sum())
            if n:
                out.append((start, stop, n))
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

    def identity(self) -> dict[str, Any]:
        """What ties a checkpoint to this file: path, size, modification time and shape."""
        stat = self.path.stat()
        return {
            "path": str(self.path.resolve()),
            "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "n_rows": self.n_rows,
            "d": self.d,
        }


@dataclass
class InputStatistics:
    """Statistics of the training rows (float64); ``std`` is 1 in constant dimensions."""

    mean: torch.Tensor
    std: torch.Tensor
    mean_squared_norm: float  # E‖x‖² over the training rows
    n_rows: int
    n_constant: int


def input_statistics(store: ActivationStore) -> InputStatistics:
    """Training rows' per-dimension mean and std and mean squared norm.

    Reads every row once, so it is also the finiteness check of the whole file (a bad row is
    reported wherever it is, train or held-out).
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
    variance = sq_dev / n
    mean_squared_norm = float((variance + mean**2).sum())
    std = np.sqrt(variance)
    constant = std <= CONSTANT_DIM_REL_STD * max(float(std.max()), np.finfo(np.float32).tiny)
    std[constant] = 1.0
    return InputStatistics(
        torch.from_numpy(mean), torch.from_numpy(std), mean_squared_norm, n, int(constant.sum())
    )


def input_normalisation(kind: str, stats: InputStatistics) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(shift, divisor, description)`` with ``x_n = (x − shift) / divisor`` (float64 vectors)."""
    d = len(stats.mean)
    if kind == "per_dimension":
        return (
            stats.mean.clone(),
            stats.std.clone(),
            (
                "per-dimension z-scoring with the training tokens' mean and std, folded into "
                "W_enc, b_enc, W_dec and b_dec"
            ),
        )
    if kind == "scalar":
        scale = math.sqrt(d / stats.mean_squared_norm) if stats.mean_squared_norm > 0 else 1.0
        return (
            torch.zeros(d, dtype=torch.float64),
            torch.full((d,), 1.0 / scale, dtype=torch.float64),
            (
                f"inputs multiplied by s = sqrt(d_in / E|x|^2) = {scale:.8g} over the training tokens "
                "(so that E|s x|^2 = d_in), folded into W_enc, b_enc, W_dec and b_dec"
            ),
        )
    raise ValueError(f"unknown input normalisation {kind!r}")


# --- the shuffle ---------------------------------------------------------------------------------


def shuffle_groups(
    store: ActivationStore, split_value: int, buffer_rows: int, seed: int, epoch: int
) -> list[list[tuple[int, int, int]]]:
    """An epoch's blocks in their seeded random order, cut into groups of at least ``buffer_rows``
    rows (of ``split_value``); each group is one fill of the shuffle buffer. Reads no data."""
    blocks = store.block_counts(split_value)
    order = np.random.default_rng([_BLOCK_ORDER_STREAM, seed, epoch]).permutation(len(blocks))
    groups, current, n_current = [], [], 0
    for index in order:
        current.append(blocks[index])
        n_current += blocks[index][2]
        if n_current >= buffer_rows:
            groups.append(current)
            current, n_current = [], 0
    if current:
        groups.append(current)
    return groups


def iter_shuffled_rows(
    store: ActivationStore,
    split_value: int,
    batch_size: int,
    buffer_rows: int,
    seed: int,
    epoch: int = 0,
    start: int = 0,
) -> Iterator[np.ndarray]:
    """One epoch of ``split_value`` rows in a seeded global shuffle, as batches, from row ``start``
    of the epoch's order on (a multiple of ``batch_size``).

    The epoch's order: blocks (whole HDF5 chunks) in a random order, grouped into fills of about
    ``buffer_rows`` rows (:func:`shuffle_groups`); the rows of each fill are permuted, and the
    fills concatenated form the epoch's stream, cut into batches (only the epoch's last batch may
    be short). Block order and each fill's permutation come from generators seeded with
    ``(seed, epoch)`` and ``(seed, epoch, fill)``, so batch ``i`` of an epoch can be produced
    without the batches before it: resuming reads from the fill holding row ``start`` on.
    Memory: one fill, one block being read and about two batches (the tail carried to the next
    fill and the batch the caller holds): each fill is built in one preallocated array, and the
    previous one is released before the next is read.
    """
    if start % batch_size:
        raise ValueError(f"start={start} is not a multiple of batch_size={batch_size}")
    groups = shuffle_groups(store, split_value, buffer_rows, seed, epoch)
    tail = np.empty((0, store.d), dtype=np.float32)
    group_start = 0
    for index, group in enumerate(groups):
        n_rows = sum(n for _, _, n in group)
        group_stop = group_start + n_rows
        if group_stop <= start:
            group_start = group_stop
            continue
        skip = max(0, start - group_start)  # rows of this fill's permuted order already trained on
        permutation = np.random.default_rng([_GROUP_PERMUTATION_STREAM, seed, epoch, index]).permutation(
            n_rows
        )
        # The stream of this fill is tail + fill[permutation[skip:]]: fill row r goes to position
        # len(tail) + inverse[r] − skip. Each block read is scattered straight to its rows' places
        # in one preallocated buffer, so a refill holds one fill (plus one block) at a time.
        inverse = np.empty(n_rows, dtype=np.int64)
        inverse[permutation] = np.arange(n_rows, dtype=np.int64)
        del permutation
        n_tail = len(tail)
        buffer = np.empty((n_tail + n_rows - skip, store.d), dtype=np.float32)
        buffer[:n_tail] = tail
        del tail
        fill_row = 0
        for a, b, _ in group:
            rows = store.read(a, b, split_value)
            places = inverse[fill_row : fill_row + len(rows)] + (n_tail - skip)
            fill_row += len(rows)
            if skip:
                kept = places >= n_tail
                rows, places = rows[kept], places[kept]
            buffer[places] = rows
            del rows, places
        del inverse
        n_full = len(buffer) // batch_size * batch_size
        for i in range(0, n_full, batch_size):
            # The last batch of a fill is a copy, so that the caller holding it while the next
            # fill is read does not keep this whole buffer alive.
            yield buffer[i : i + batch_size] if i + batch_size < n_full else buffer[i : i + batch_size].copy()
        tail = buffer[n_full:].copy()
        del buffer
        group_start = group_stop
    if len(tail):
        yield tail


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


# --- schedule --------------------------------------------------------------------------------------


def count_steps(n_train: int, batch_size: int, total_tokens: int) -> int:
    """Optimiser steps of a run: each epoch is ceil(n_train / batch) batches, the last one cut
    at ``total_tokens``."""
    full_epochs, rest = divmod(total_tokens, n_train)
    return full_epochs * math.ceil(n_train / batch_size) + math.ceil(rest / batch_size)


def learning_rate(
    step: int, total_steps: int, lr: float, warmup_fraction: float, decay_fraction: float
) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of ``total_steps``.

    With W = round(warmup_fraction · T) and D = round(decay_fraction · T)::

        lr · (step + 1) / W          for step < W               linear warm-up
        lr · (T − step) / D          for step ≥ T − D           linear decay, reaching lr/D at the last step
        lr                           otherwise
    """
    warmup = round(warmup_fraction * total_steps)
    decay = round(decay_fraction * total_steps)
    factor = 1.0
    if step < warmup:
        factor = (step + 1) / warmup
    if step >= total_steps - decay and decay > 0:
        factor = min(factor, (total_steps - step) / decay)
    return lr * factor


def resolve_dead_tokens(dead_tokens: int | None, total_tokens: int, batch_size: int) -> int:
    if dead_tokens is not None:
        return dead_tokens
    return min(DEAD_TOKENS_MAX, max(batch_size, int(total_tokens * DEAD_TOKENS_FRACTION)))


# --- optimiser and allocator -----------------------------------------------------------------


def make_optimizer(params, lr: float) -> torch.optim.Adam:
    """Adam with ``fused=True`` where torch has a fused kernel for every parameter's device and
    dtype (CPU and CUDA floating point, torch >= 2.4), plain Adam otherwise.

    The fused kernel does the whole update in one pass per parameter: about 4 ms a step instead
    of 13–18 ms at 512→4096 on 2 CPU cores (bench/README.md). Its results differ from the foreach
    path's in the last bits, but it is deterministic, so a run resumed from a checkpoint (which
    records ``fused`` in the optimiser's param groups) still ends with bit-identical weights.
    """
    params = list(params)
    try:
        from torch.optim.optimizer import _device_dtype_check_for_fused

        for p in params:
            _device_dtype_check_for_fused(p)
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (ImportError, RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_INT_MAX = 2**31 - 1
_malloc_tuned = False


def keep_freed_memory_mapped() -> bool:
    """Tell glibc's malloc to keep freed memory instead of handing it back to the kernel
    (``M_MMAP_MAX = 0``: big blocks come from the heap, not from their own ``mmap``;
    ``M_TRIM_THRESHOLD`` = INT_MAX: the heap top is not trimmed). Once per process; Linux glibc
    only; any failure is ignored. Returns whether the settings were applied (now or before).

    Why: every [batch, d_sae] temporary of a training step is tens of MiB, above glibc's mmap
    threshold (at most 32 MiB), so by default each one is a fresh ``mmap`` whose pages fault in
    on first touch and are ``munmap``-ed on free. bench/README.md measured 12.9 M minor page
    faults in a 3.8 min benchmark and +17–43 % tokens/s once glibc keeps the memory (with the
    equivalent ``MALLOC_MMAP_MAX_`` / ``MALLOC_TRIM_THRESHOLD_`` environment variables). The cost:
    freed memory stays resident (for the whole process, which may be a larger pipeline), so peak
    memory grows: 1.13 → 1.42 GiB in bench/README.md's 1.5 GiB-capped run, with
    :func:`release_free_memory` before each evaluation. ``MUSINTERP_MALLOPT=0`` in the
    environment skips this, e.g. under a tight memory cap. (``mallopt`` takes a C int, so the
    trim threshold is INT_MAX; ``M_MMAP_THRESHOLD`` is not used because glibc caps it at 32 MiB.)
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    if os.environ.get("MUSINTERP_MALLOPT", "1") == "0":  # opt-out, e.g. under a tight memory cap
        return False
    try:
        import ctypes
        import platform
        import sys

        if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
            return False
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1 and ok
        _malloc_tuned = ok
    except Exception:  # noqa: BLE001 - an allocator hint must never stop training
        return False
    return _malloc_tuned


def release_free_memory() -> None:
    """With :func:`keep_freed_memory_mapped` in force, hand the heap's free pages back to the
    kernel (glibc ``malloc_trim(0)``) before a phase whose temporaries differ from a training
    step's (the evaluations): otherwise they stack on top of the step's kept memory, which took a
    1.5 GiB-capped run over its cap (bench/README.md, section 3). Any failure is ignored."""
    if not _malloc_tuned:
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:  # noqa: BLE001
        pass


# --- evaluation, log, checkpoints ----------------------------------------------------------------


@torch.no_grad()
def evaluate(sae: torch.nn.Module, row_blocks, shift: torch.Tensor, divisor: torch.Tensor) -> SAEMetrics:
    """Held-out metrics of ``sae`` (which reads ``(x − shift) / divisor``) on raw activations."""
    device = shift.device
    release_free_memory()
    acc = MetricsAccumulator(sae.cfg.d_in, sae.cfg.d_sae)
    was_training = sae.training
    sae.eval()
    for rows in row_blocks:
        for i in range(0, len(rows), EVAL_BATCH_ROWS):
            x = torch.from_numpy(rows[i : i + EVAL_BATCH_ROWS]).to(device)
            x_hat_n, z = sae((x - shift) / divisor)
            acc.update(x, x_hat_n * divisor + shift, z)
    sae.train(was_training)
    return acc.result()


class _TrainingLog:
    """``training_log.tsv``: one row per step; held-out columns filled at evaluation steps.

    Opened for a fresh run (header written) or to resume (cut back to ``resume_bytes``, the size
    it had when the checkpoint was written)."""

    def __init__(self, path: Path, part_names: list[str], resume_bytes: int | None = None):
        self.columns = [
            "step", "tokens_seen", "lr", "loss", *part_names, "dead_latents", "heldout_fvu", "heldout_l0",
        ]  # fmt: skip
        header = "\t".join(self.columns) + "\n"
        if resume_bytes is None:
            self.file = open(path, "w")
            self.file.write(header)
        else:
            self.file = open(path, "r+")
            if self.file.readline() != header:
                self.file.close()
                raise ValueError(f"{path}: its header does not match this run's columns")
            self.file.truncate(resume_bytes)
            self.file.seek(resume_bytes)

    def write(self, row: dict[str, Any]) -> None:
        def fmt(value):
            if value is None:
                return ""
            return f"{value:.7g}" if isinstance(value, float) else str(value)

        self.file.write("\t".join(fmt(row.get(c)) for c in self.columns) + "\n")

    def flush(self) -> int:
        """Flush to disk; return the file's size."""
        self.file.flush()
        os.fsync(self.file.fileno())
        return self.file.tell()

    def close(self) -> None:
        self.file.close()


def checkpoint_dir_for(out_dir: str | os.PathLike) -> Path:
    """Where the checkpoints of a run writing ``out_dir`` go: ``{out_dir}.ckpt/`` beside it."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".ckpt")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically (a kill while writing leaves the previous one)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)


def _fingerprint(settings: dict[str, Any], identity: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for a checkpoint to be resumed."""
    kept = {k: v for k, v in settings.items() if k not in RESUMABLE_ACROSS}
    return {"format": CHECKPOINT_FORMAT, "producer": PRODUCER, "settings": kept, "acts": identity}


def _resumable_checkpoint(ckpt_dir: Path, fingerprint: dict[str, Any], device: torch.device):
    """The checkpoint in ``ckpt_dir`` if it belongs to this run, else None (stale ones removed)."""
    path = ckpt_dir / CHECKPOINT_FILE
    if not path.is_file():
        if ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)
        return None
    try:
        state = load_checkpoint(path, device)
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is discarded the same way
        log.warning("%s: unreadable checkpoint (%s); starting afresh", path, err)
        shutil.rmtree(ckpt_dir)
        return None
    if state.get("fingerprint") != fingerprint or not (ckpt_dir / LOG_FILE).is_file():
        log.warning(
            "%s was written by a run with other settings or another activation file; "
            "starting afresh and removing it",
            path,
        )
        shutil.rmtree(ckpt_dir)
        return None
    return state


# --- training ----------------------------------------------------------------------------------------


def train_sae(
    acts_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    arch: str = "relu_l1",
    width: int | None = None,
    k: int | None = None,
    l1_coeff: float | None = None,
    lr: float = 1e-3,
    batch_size: int = 2048,
    epochs: int = 2,
    seed: int = 0,
    max_tokens: int | None = None,
    eval_every: int = 500,
    device: str = "cpu",
    *,
    aux_coeff: float | None = None,
    k_aux: int | None = None,
    threshold_rate: float | None = None,
    l0_coeff: float | None = None,
    bandwidth: float | None = None,
    threshold_init: float | None = None,
    warmup_fraction: float = 0.05,
    decay_fraction: float = 0.2,
    dead_tokens: int | None = None,
    resample_every: int | None = None,
    eval_tokens: int = 65_536,
    buffer_tokens: int | None = None,
    checkpoint_every: int | None = 1000,
) -> dict[str, Any]:
    """Train an SAE on ``acts_path`` and write it to ``out_dir``; return the final metrics.

    Architecture settings left ``None`` take the defaults of the architecture's config dataclass
    (:class:`~musinterp.sae.relu_l1.ReluL1Config`, :class:`~musinterp.sae.topk.TopKConfig`,
    :class:`~musinterp.sae.batchtopk.BatchTopKConfig`, :class:`~musinterp.sae.jumprelu.JumpReLUConfig`);
    see :class:`TrainSettings` for the others. Deterministic on CPU for a given ``seed``
    (initialisation, shuffling and resampling draw only from generators seeded with it).
    ``out_dir`` appears only when everything has been written; a run killed after a checkpoint
    resumes from ``{out_dir}.ckpt/`` when started again with the same settings.
    """
    settings = TrainSettings(
        arch=arch, width=width, k=k, l1_coeff=l1_coeff, aux_coeff=aux_coeff, k_aux=k_aux,
        threshold_rate=threshold_rate, l0_coeff=l0_coeff, bandwidth=bandwidth,
        threshold_init=threshold_init, lr=lr, batch_size=batch_size, epochs=epochs, seed=seed,
        max_tokens=max_tokens, warmup_fraction=warmup_fraction, decay_fraction=decay_fraction,
        dead_tokens=dead_tokens, resample_every=resample_every, eval_every=eval_every,
        eval_tokens=eval_tokens, buffer_tokens=buffer_tokens, checkpoint_every=checkpoint_every,
        device=device,
    )  # fmt: skip
    return train_sae_with(acts_path, out_dir, settings)


def train_sae_with(
    acts_path: str | os.PathLike, out_dir: str | os.PathLike, settings: TrainSettings
) -> dict[str, Any]:
    """:func:`train_sae` with its settings in one :class:`TrainSettings`."""
    settings.check()
    acts_path, out_dir = Path(acts_path), Path(out_dir)
    arch_cls = ARCHITECTURES[settings.arch]
    keep_freed_memory_mapped()
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
        arch_cls.config_from_settings(d_in, d_sae, settings)  # refuse bad settings before any work
        batch_size = settings.batch_size
        total_tokens = settings.epochs * n_train
        if settings.max_tokens is not None:
            total_tokens = min(settings.max_tokens, total_tokens)
        total_steps = count_steps(n_train, batch_size, total_tokens)
        dead_tokens = resolve_dead_tokens(settings.dead_tokens, total_tokens, batch_size)
        resolved = {**asdict(settings), "width": d_sae, "dead_tokens": dead_tokens}
        log.info(
            "training %s SAE %d->%d on %s: %d train / %d held-out tokens, %d epochs (%d steps), batch %d, seed %d",
            settings.arch, d_in, d_sae, acts_path, n_train, n_heldout, settings.epochs, total_steps,
            batch_size, settings.seed,
        )  # fmt: skip
        stats = input_statistics(store)
        if stats.n_constant:
            log.warning(
                "%s: %d of %d dimensions are constant on the training rows", acts_path, stats.n_constant, d_in
            )
        shift, divisor, normalisation = input_normalisation(arch_cls.input_normalisation, stats)

        torch_device = torch.device(settings.device)
        shift_dev = shift.to(torch.float32).to(torch_device)
        divisor_dev = divisor.to(torch.float32).to(torch_device)
        generator = torch.Generator().manual_seed(settings.seed)
        input_mean = ((stats.mean - shift) / divisor).to(torch.float32)
        sae = arch_cls.from_settings(d_in, d_sae, settings, generator=generator, input_mean=input_mean)
        sae = sae.to(torch_device)
        optimizer = make_optimizer(sae.parameters(), settings.lr)
        eval_rows = np.concatenate(list(iter_rows(store, HELDOUT, limit=settings.eval_tokens)))
        buffer_rows = settings.buffer_tokens or max(4 * batch_size, SHUFFLE_BUFFER_BYTES // (4 * d_in))

        # Training state: everything a checkpoint holds.
        step = tokens_seen = 0
        tokens_since_fired = torch.zeros(d_sae, dtype=torch.int64, device=torch_device)
        window = {"steps": 0, "sums": {}}  # loss parts summed since the last held-out evaluation
        ckpt_dir = checkpoint_dir_for(out_dir)
        fingerprint = _fingerprint(resolved, store.identity())
        state = _resumable_checkpoint(ckpt_dir, fingerprint, torch_device)
        resumed_from = None
        if state is not None:
            sae.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"].cpu())
            tokens_since_fired = state["tokens_since_fired"].to(torch_device)
            step, tokens_seen, window = state["step"], state["tokens_seen"], state["window"]
            resumed_from = step
            log.info("resuming %s from the checkpoint at step %d in %s", out_dir, step, ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        training_log = _TrainingLog(
            ckpt_dir / LOG_FILE, list(arch_cls.loss_parts), None if state is None else state["log_bytes"]
        )
        del state

        last: dict[str, Any] = {}
        final_parts: dict[str, float] = {}
        progress = tqdm(
            total=total_tokens, initial=tokens_seen, desc=f"training SAE {out_dir.name}",
            unit="tok", unit_scale=True, mininterval=2.0,
        )  # fmt: skip
        try:
            epoch, start = divmod(tokens_seen, n_train)
            while tokens_seen < total_tokens:
                batches = iter_shuffled_rows(
                    store, TRAIN, batch_size, buffer_rows, settings.seed, epoch, start
                )
                for batch in batches:
                    batch = batch[: total_tokens - tokens_seen]
                    x = (torch.from_numpy(batch).to(torch_device) - shift_dev) / divisor_dev
                    lr_now = learning_rate(
                        step, total_steps, settings.lr, settings.warmup_fraction, settings.decay_fraction
                    )
                    for group in optimizer.param_groups:
                        group["lr"] = lr_now
                    out = sae.training_loss(x, tokens_since_fired >= dead_tokens)
                    optimizer.zero_grad(set_to_none=True)
                    out.loss.backward()
                    optimizer.step()
                    sae.after_optimizer_step()
                    step += 1
                    tokens_seen += len(batch)
                    progress.update(len(batch))
                    fired = (out.latents != 0).any(dim=0)
                    tokens_since_fired = torch.where(fired, 0, tokens_since_fired + len(batch))

                    if (
                        settings.resample_every is not None
                        and step % settings.resample_every == 0
                        and step <= total_steps // 2
                    ):
                        dead_mask = tokens_since_fired >= dead_tokens
                        n_resampled = sae.resample_dead_latents(x, dead_mask, optimizer, generator)
                        if n_resampled:
                            tokens_since_fired[dead_mask] = 0
                            log.info("step %d: resampled %d dead latents", step, n_resampled)

                    row = {
                        "step": step,
                        "tokens_seen": tokens_seen,
                        "lr": lr_now,
                        "loss": float(out.loss.detach()),
                    }
                    row.update({name: float(value) for name, value in out.parts.items()})
                    row["dead_latents"] = int((tokens_since_fired >= dead_tokens).sum())
                    if not math.isfinite(row["loss"]):
                        raise FloatingPointError(
                            f"{acts_path}: SAE training diverged at step {step} (loss {row['loss']}); try a lower lr"
                        )
                    window["steps"] += 1
                    for name in ("loss", *arch_cls.loss_parts):
                        window["sums"][name] = window["sums"].get(name, 0.0) + row[name]
                    if step % settings.eval_every == 0 or tokens_seen >= total_tokens:
                        metrics = evaluate(sae, [eval_rows], shift_dev, divisor_dev)
                        row.update(heldout_fvu=metrics.fvu, heldout_l0=metrics.l0)
                        final_parts = {name: s / window["steps"] for name, s in window["sums"].items()}
                        window = {"steps": 0, "sums": {}}
                        progress.set_postfix(
                            loss=f"{row['loss']:.4g}", fvu=f"{metrics.fvu:.3f}", l0=f"{metrics.l0:.1f}"
                        )
                        log.info(
                            "step %d/%d epoch %d tokens %d: loss %.5g, held-out FVU %.4f, L0 %.2f, %d dead",
                            step, total_steps, epoch + 1, tokens_seen, row["loss"], metrics.fvu, metrics.l0,
                            row["dead_latents"],
                        )  # fmt: skip
                    training_log.write(row)
                    last = row
                    if (
                        settings.checkpoint_every is not None
                        and step % settings.checkpoint_every == 0
                        and tokens_seen < total_tokens
                    ):
                        save_checkpoint(
                            ckpt_dir / CHECKPOINT_FILE,
                            {
                                "fingerprint": fingerprint,
                                "step": step,
                                "tokens_seen": tokens_seen,
                                "model": sae.state_dict(),
                                "optimizer": optimizer.state_dict(),
                                "generator": generator.get_state(),
                                "tokens_since_fired": tokens_since_fired,
                                "window": window,
                                "log_bytes": training_log.flush(),
                            },
                        )
                    if tokens_seen >= total_tokens:
                        break
                epoch, start = epoch + 1, 0
        except BaseException:
            training_log.close()
            progress.close()
            if (ckpt_dir / CHECKPOINT_FILE).is_file():
                log.warning(
                    "training stopped; %s holds the last checkpoint: run again with the same settings to resume",
                    ckpt_dir,
                )
            else:
                shutil.rmtree(ckpt_dir, ignore_errors=True)
            raise
        training_log.close()
        progress.close()

        final = evaluate(sae, iter_rows(store, HELDOUT), shift_dev, divisor_dev)
        seconds = time.perf_counter() - t_start
        saelens_arch, tensors, extra_cfg = sae.saelens_export()
        folded = fold_input_normalisation(
            tensors, shift, divisor, apply_b_dec_to_input=arch_cls.apply_b_dec_to_input
        )
        provenance = {
            "producer": PRODUCER,
            "trainer": "musinterp.sae.trainer.train_sae",
            "arch": settings.arch,
            "arch_config": asdict(sae.cfg),
            "acts_path": str(acts_path),
            "acts_producer": store.attrs.get("producer"),
            "family": store.attrs.get("family"),
            "input_normalisation": normalisation,
            "settings": resolved,
        }
        cfg = saelens_cfg(
            saelens_arch, d_in, d_sae,
            subject=str(store.attrs.get("subject", "")), site=str(store.attrs.get("site", "")),
            provenance=provenance, device=settings.device, **extra_cfg,
        )  # fmt: skip
        result = {
            **final.to_dict(),
            "n_train_tokens": n_train,
            "n_heldout_tokens": n_heldout,
            "tokens_seen": tokens_seen,
            "steps": step,
            "final_train_loss": last.get("loss"),
            # means over the steps since the previous held-out evaluation
            "final_train_loss_parts": final_parts,
            "resumed_from_step": resumed_from,
            "seconds": round(seconds, 3),
            "tokens_per_second": round(tokens_seen / seconds, 1) if seconds > 0 else None,
            "arch": settings.arch,
            "d_in": d_in,
            "d_sae": d_sae,
            "subject": cfg["metadata"]["subject"],
            "site": cfg["metadata"]["site"],
            "constant_dims": stats.n_constant,
            "settings": resolved,
            "arch_config": provenance["arch_config"],
            "producer": PRODUCER,
        }
        result.pop("n_tokens")  # the same as n_heldout_tokens
        with atomic_dir(out_dir) as tmp_dir:
            save_sae(tmp_dir, folded, cfg)
            shutil.copyfile(ckpt_dir / LOG_FILE, tmp_dir / LOG_FILE)
            write_json(tmp_dir / "metrics.json", result)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(ckpt_dir)
    log.info(
        "wrote %s: held-out FVU %.4f, L0 %.2f, dead %.3f, dense %.3f (%d steps, %.1f s, %.0f tok/s)",
        out_dir, final.fvu, final.l0, final.dead_fraction, final.dense_fraction, step, seconds,
        tokens_seen / max(seconds, 1e-9),
    )  # fmt: skip
    return result


def read_metrics(sae_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``metrics.json`` of an SAE directory."""
    return json.loads((Path(sae_dir) / "metrics.json").read_text())


__all__ = [
    "ARCHITECTURES",
    "ActivationStore",
    "InputStatistics",
    "TrainSettings",
    "checkpoint_dir_for",
    "count_steps",
    "evaluate",
    "input_normalisation",
    "input_statistics",
    "iter_rows",
    "iter_shuffled_rows",
    "keep_freed_memory_mapped",
    "learning_rate",
    "make_optimizer",
    "read_metrics",
    "shuffle_groups",
    "train_sae",
    "train_sae_with",
]
