"""Activation rows for training: the store, its train/held-out split, and the seeded global shuffle.

An activation file needs only the minimal contract (DESIGN.md, "Data flow and file contracts"):
``/acts [n, d]`` float and the columns ``piece``, ``position``, ``token`` of length ``n``, read
through :class:`musinterp.activations.ActivationFile` (which checks them; attributes such as
``site``, ``subject`` or ``d`` are optional). The split of rows into training (0) and
held-out (1) rows is the file's ``split`` column when it has one; otherwise the store draws one by
piece, so that every row of a piece is on the same side:

    P = the sorted distinct values of the piece column, M = |P|
    N = min(M − 1, max(1, round(heldout_fraction · M)))
    held-out pieces = np.random.default_rng([SPLIT_STREAM, seed]).permutation(P)[:N]

and logs "no /tokens/split in FILE: held out N of M pieces (seed S)".

Rows are read a *block* at a time: whole HDF5 chunks, about :data:`BLOCK_BYTES` per read. The
shuffle (:func:`iter_shuffled_rows`) visits an epoch's blocks in a seeded random order, fills a
bounded buffer with them, permutes each fill's rows and cuts the stream into batches; the order
of an epoch is a function of (seed, epoch) alone, so a run can resume at any batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from musinterp.activations import ActivationFile

log = logging.getLogger(__name__)

TRAIN, HELDOUT = 0, 1  # values of the split column
BLOCK_BYTES = 4 << 20  # rows read at once: whole HDF5 chunks, about this many bytes
DEFAULT_CHUNK_ROWS = 1024  # block unit of an unchunked /acts
HELDOUT_FRACTION = 0.1  # share of pieces held out when the file has no split column

# Distinct first words of the seed sequences (numpy SeedSequence entropy) of the random parts.
_BLOCK_ORDER_STREAM, _GROUP_PERMUTATION_STREAM = 0x5AE0B10C, 0x5AE06209
SPLIT_STREAM = 0x5AE05917


class ActivationStore(ActivationFile):
    """An activation file opened for training: non-empty, with a train/held-out ``split`` per row.

    ``split`` is the file's ``split`` column, or a split of the pieces drawn with ``split_seed``
    holding out ``heldout_fraction`` of them (module docstring); :attr:`split_info` says which.
    Reads whole HDF5 chunks at a time (``block_rows``); every block read is checked for NaN/inf,
    and an error names the file and the first bad row.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        block_bytes: int | None = None,
        *,
        split_seed: int = 0,
        heldout_fraction: float = HELDOUT_FRACTION,
    ):
        super().__init__(path)
        try:
            self._check_for_training(BLOCK_BYTES if block_bytes is None else block_bytes)
            self.split, self.split_info = self._load_split(split_seed, heldout_fraction)
        except BaseException:
            self.close()
            raise

    def _check_for_training(self, block_bytes: int) -> None:
        acts = self.acts
        if acts.ndim != 2 or acts.dtype.kind != "f":
            raise ValueError(f"{self.path}: /acts must be a 2-D float array, got shape {acts.shape} {acts.dtype}")
        if self.n_rows == 0 or self.d == 0:
            raise ValueError(f"{self.path}: /acts is empty (shape {acts.shape}); nothing to train on")
        declared = self.attrs.get("d")
        if declared is not None and int(declared) != self.d:
            raise ValueError(f"{self.path}: attribute d={declared} but /acts has {self.d} columns")
        # The reader checks the columns the contract requires; the split by piece needs this one.
        if not self.has_column("piece"):
            raise ValueError(f"{self.path}: missing column /tokens/piece (the split is by piece)")
        chunk_rows = acts.chunks[0] if acts.chunks else DEFAULT_CHUNK_ROWS
        chunks_per_block = max(1, block_bytes // (chunk_rows * self.d * acts.dtype.itemsize))
        self.block_rows = chunk_rows * chunks_per_block

    def _checked_column(self, name: str) -> np.ndarray:
        values = self.column(name)
        if values.shape != (self.n_rows,):
            raise ValueError(
                f"{self.path}: /tokens/{name} has shape {values.shape}, expected ({self.n_rows},) "
                "(one value per row of /acts)"
            )
        return values

    def _load_split(self, seed: int, heldout_fraction: float) -> tuple[np.ndarray, dict[str, Any]]:
        if self.has_column("split"):
            split = self._checked_column("split")
            unknown = ~np.isin(split, (TRAIN, HELDOUT))
            if unknown.any():
                row = int(np.argmax(unknown))
                raise ValueError(
                    f"{self.path}: /tokens/split row {row} is {split[row]}, expected 0 (train) or 1 (held-out)"
                )
            return split, {"source": "file"}
        if not 0 < heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction!r}")
        piece = self._checked_column("piece")
        pieces = np.unique(piece)
        if len(pieces) < 2:
            raise ValueError(
                f"{self.path}: no /tokens/split and only {len(pieces)} distinct piece; held-out "
                "metrics need pieces on both sides, so give the file a /tokens/split or more pieces"
            )
        n_heldout = min(len(pieces) - 1, max(1, round(heldout_fraction * len(pieces))))
        heldout = np.sort(np.random.default_rng([SPLIT_STREAM, seed]).permutation(pieces)[:n_heldout])
        log.info(
            "no /tokens/split in %s: held out %d of %d pieces (seed %d)", self.path, n_heldout, len(pieces), seed
        )
        split = np.isin(piece, heldout).astype(np.uint8)
        info = {
            "source": "drawn",
            "seed": seed,
            "heldout_fraction": heldout_fraction,
            "n_pieces": len(pieces),
            "heldout_pieces": heldout.tolist(),
        }
        return split, info

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
