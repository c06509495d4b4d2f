"""Activation files in HDF5 (the contract in docs/ARCHITECTURE.md and DESIGN.md): writer and reader.

One file per site. Token-level sites: ``/acts [n_tokens, d]`` (row-chunked, gzip) and
``/tokens/<column>`` arrays of length ``n_tokens``; row ``t`` of a piece is the model's state after
reading its input token ``t``. Piece-level sites: ``/acts [n_pieces, d]`` and ``/pieces/<column>``.
:class:`ActivationFile` reads both; recording lives in :mod:`musinterp.recording`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np

from .io import atomic_path

log = logging.getLogger(__name__)

ROW_CHUNK = 1024
# How /acts may be compressed. Float activations shrink little (gzip level 1: about 15 %) while
# compressing costs about 20x the write time and 15x the read time of every SAE epoch, so the
# default is none; lzf is h5py's fast filter (about 7 %, readable where h5py is).
COMPRESSION = {"none": {}, "gzip": {"compression": "gzip", "compression_opts": 1, "shuffle": True},
               "lzf": {"compression": "lzf", "shuffle": True}}
SPLITS = ("train", "heldout")
# The column group of each granularity, and the columns every file of it must have.
GROUPS = {"token": "tokens", "piece": "pieces"}
REQUIRED_COLUMNS = {"token": ("piece", "position", "token"), "piece": ("piece",)}


class SiteWriter:
    """Appends rows of one site to an HDF5 file under a temporary name; :meth:`close` publishes it."""

    def __init__(self, path: Path, d: int, columns: dict[str, np.dtype], categories: dict[str, list[str]],
                 attrs: dict, dtype=np.float32, granularity: str = "token", compression: str = "none"):
        if compression not in COMPRESSION:
            raise ValueError(f"{path}: compression must be one of {sorted(COMPRESSION)}, got {compression!r}")
        self._atomic = atomic_path(path)
        self._tmp = self._atomic.__enter__()
        self.f = h5py.File(self._tmp, "w")
        self.f.create_dataset("acts", shape=(0, d), maxshape=(None, d), dtype=dtype,
                              chunks=(ROW_CHUNK, d), **COMPRESSION[compression])
        self.group = GROUPS[granularity]
        self.columns, self.d = dict(columns), d
        group = self.f.create_group(self.group)
        for name, col_dtype in columns.items():
            ds = group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=col_dtype,
                                      chunks=(ROW_CHUNK * 16,), compression="gzip", compression_opts=1)
            if name in categories:
                ds.attrs["categories"] = json.dumps(categories[name])
        for key, value in attrs.items():
            self.f.attrs[key] = value
        self.n = 0

    def append(self, acts: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        rows = acts.shape[0]
        ds = self.f["acts"]
        ds.resize(self.n + rows, axis=0)
        ds[self.n :] = acts
        for name, values in columns.items():
            col = self.f[self.group][name]
            col.resize(self.n + rows, axis=0)
            col[self.n :] = values
        self.n += rows

    def close(self, ok: bool = True) -> None:
        self.f.close()
        if ok:
            self._atomic.__exit__(None, None, None)
        else:
            self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)


def _attr_value(value):
    """HDF5 attributes come back as bytes or numpy scalars; hand out plain Python values."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


class ActivationFile:
    """Reader for one activation file; checks the contract on open and names the file in errors."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: activation file not found")
        try:
            self.f = h5py.File(self.path, "r")
        except OSError as err:
            raise ValueError(f"{self.path}: not a readable HDF5 file ({err})") from None
        try:
            self._check()
        except BaseException:
            self.f.close()
            raise

    def _check(self) -> None:
        if "acts" not in self.f or not isinstance(self.f["acts"], h5py.Dataset):
            raise ValueError(f"{self.path}: missing dataset /acts")
        acts = self.f["acts"]
        if acts.ndim != 2 or acts.dtype.kind != "f":
            raise ValueError(f"{self.path}: /acts must be a 2-D float array, got shape {acts.shape} {acts.dtype}")
        self.n_rows, self.d = (int(n) for n in acts.shape)
        present = [g for g in GROUPS.values() if g in self.f]
        if len(present) != 1:
            raise ValueError(f"{self.path}: needs exactly one column group, /tokens (one row per token) or "
                             f"/pieces (one row per piece); found {present or 'none'}")
        self.group = present[0]
        self.granularity = next(k for k, g in GROUPS.items() if g == self.group)
        for col in REQUIRED_COLUMNS[self.granularity]:
            if f"{self.group}/{col}" not in self.f:
                raise ValueError(f"{self.path}: missing column /{self.group}/{col}")
        for name, col in self.f[self.group].items():
            if col.shape != (self.n_rows,):
                raise ValueError(f"{self.path}: /{self.group}/{name} has shape {col.shape}, expected ({self.n_rows},)")
        self.attrs = {key: _attr_value(value) for key, value in self.f.attrs.items()}
        self.vocab = json.loads(self.attrs.get("vocab", "[]"))

    @property
    def n_tokens(self) -> int:
        """Rows of the file (tokens, or pieces in a piece-level file)."""
        return self.n_rows

    def token_vocab(self):
        """The vocabulary as a :class:`musinterp.corpus.vocab.Vocab` (list or multi-field)."""
        from .corpus.vocab import Vocab

        return Vocab.from_json(self.vocab, format=self.attrs.get("format", ""))

    @property
    def acts(self) -> h5py.Dataset:
        return self.f["acts"]

    def has_column(self, name: str) -> bool:
        return f"{self.group}/{name}" in self.f

    def column(self, name: str) -> np.ndarray:
        if not self.has_column(name):
            raise ValueError(f"{self.path}: no /{self.group}/{name} column")
        return self.f[self.group][name][:]

    def column_attrs(self, name: str) -> dict:
        return {key: _attr_value(value) for key, value in self.f[self.group][name].attrs.items()}

    def categories(self, name: str) -> list[str] | None:
        raw = self.column_attrs(name).get("categories")
        return json.loads(raw) if raw is not None else None

    def columns(self) -> list[str]:
        return list(self.f[self.group].keys())

    def close(self) -> None:
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def __getattr__(name):
    # record_activations moved to musinterp.recording; keep the old import path working.
    if name == "record_activations":
        from .recording import record_activations

        return record_activations
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
