"""Token-level activations in HDF5 (the contract in docs/ARCHITECTURE.md and DESIGN.md).

One file per site: ``/acts [n_tokens, d]`` (row-chunked, gzip) and ``/tokens/<column>`` arrays
of length ``n_tokens``. Row ``t`` of a piece is the model's state after reading its input token
``t``; ``next_token`` is what the model predicts there.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from . import PRODUCER
from .io import atomic_path

log = logging.getLogger(__name__)

ROW_CHUNK = 1024
SPLITS = ("train", "heldout")


class SiteWriter:
    """Appends rows of one site to an HDF5 file under a temporary name; :meth:`close` publishes it."""

    def __init__(self, path: Path, d: int, columns: dict[str, np.dtype], categories: dict[str, list[str]],
                 attrs: dict, dtype=np.float32):
        self._atomic = atomic_path(path)
        self._tmp = self._atomic.__enter__()
        self.f = h5py.File(self._tmp, "w")
        self.f.create_dataset("acts", shape=(0, d), maxshape=(None, d), dtype=dtype,
                              chunks=(ROW_CHUNK, d), compression="gzip", compression_opts=1, shuffle=True)
        group = self.f.create_group("tokens")
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
            col = self.f["tokens"][name]
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

    REQUIRED_COLUMNS = ("piece", "position", "token")

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
        self.n_tokens, self.d = (int(n) for n in acts.shape)
        for col in self.REQUIRED_COLUMNS:
            if f"tokens/{col}" not in self.f:
                raise ValueError(f"{self.path}: missing column /tokens/{col}")
        for name, col in self.f["tokens"].items():
            if col.shape != (self.n_tokens,):
                raise ValueError(f"{self.path}: /tokens/{name} has shape {col.shape}, expected ({self.n_tokens},)")
        self.attrs = {key: _attr_value(value) for key, value in self.f.attrs.items()}
        self.vocab: list[str] = json.loads(self.attrs.get("vocab", "[]"))

    @property
    def acts(self) -> h5py.Dataset:
        return self.f["acts"]

    @property
    def n_rows(self) -> int:
        return self.n_tokens

    def has_column(self, name: str) -> bool:
        return f"tokens/{name}" in self.f

    def column(self, name: str) -> np.ndarray:
        if not self.has_column(name):
            raise ValueError(f"{self.path}: no /tokens/{name} column")
        return self.f["tokens"][name][:]

    def column_attrs(self, name: str) -> dict:
        return {key: _attr_value(value) for key, value in self.f["tokens"][name].attrs.items()}

    def categories(self, name: str) -> list[str] | None:
        raw = self.column_attrs(name).get("categories")
        return json.loads(raw) if raw is not None else None

    def columns(self) -> list[str]:
        return list(self.f["tokens"].keys())

    def close(self) -> None:
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def record_activations(
    model_dir: str | Path,
    corpus_dir: str | Path,
    out_dir: str | Path,
    subject: str,
    sites: list[str] | None = None,
    max_tunes: dict[str, int] | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> dict:
    """Run a model over corpus tunes and write ``{out_dir}/{site}.h5`` for every site.

    ``max_tunes`` caps the tunes taken from each split (a seeded random subset); a tune with a
    token the model does not know is skipped and counted. Tunes run through the model
    ``batch_size`` at a time (right-padded; padding rows are never written).
    """
    from .corpus.store import load_corpus
    from .corpus.tokens import TOKEN_TYPES, annotate_tune
    from .models import load

    t0 = time.time()
    model, meta = load(model_dir)
    corpus = load_corpus(corpus_dir)
    vocab = meta["vocab"]
    stoi = {t: i for i, t in enumerate(vocab)}
    all_sites = model.sites()
    sites = list(all_sites if not sites else sites)
    unknown = sorted(set(sites) - set(all_sites))
    if unknown:
        raise ValueError(f"unknown sites {unknown} for {model.family}; available: {all_sites}")

    rng = np.random.default_rng(seed)
    chosen: list[tuple[int, int]] = []  # (piece, split code)
    split_json = {}
    for code, split in enumerate(SPLITS):
        idx = corpus.indices(split)
        cap = (max_tunes or {}).get(split)
        if cap is not None and len(idx) > cap:
            idx = np.sort(rng.choice(idx, cap, replace=False))
        chosen += [(int(i), code) for i in idx]
        split_json[split] = [int(i) for i in idx]

    columns = {"piece": np.int32, "position": np.int32, "token": np.int32, "next_token": np.int32,
               "split": np.uint8, "token_type": np.int8, "bar": np.int32, "position_in_bar": np.int32,
               "metric_position": np.float32, "pitch": np.int16, "duration": np.float32}
    categories = {"token_type": list(TOKEN_TYPES), "split": list(SPLITS)}
    out_dir = Path(out_dir)
    dims = {}
    writers: dict[str, SiteWriter] = {}
    skipped, n_rows = 0, 0
    batches = [chosen[i : i + batch_size] for i in range(0, len(chosen), batch_size)]
    try:
        for batch in tqdm(batches, desc=f"{subject} activations", unit="batch", mininterval=10):
            names = [["<s>"] + corpus.tune_tokens(piece) for piece, _ in batch]
            known = [all(tok in stoi for tok in tune) for tune in names]
            skipped += known.count(False)
            batch = [b for b, ok in zip(batch, known) if ok]
            names = [n for n, ok in zip(names, known) if ok]
            if not batch:
                continue
            lengths = [len(n) for n in names]
            ids = torch.full((len(batch), max(lengths)), stoi["</s>"], dtype=torch.long)
            for row, tune in enumerate(names):
                ids[row, : len(tune)] = torch.tensor([stoi[t] for t in tune])
            states = model.run_batch_with_states(ids, sites)
            cols: dict[str, list[np.ndarray]] = {name: [] for name in columns}
            for row, ((piece, split_code), tune) in enumerate(zip(batch, names)):
                n = len(tune)
                tune_ids = ids[row, :n].numpy()
                for name, values in {
                    "piece": np.full(n, piece), "position": np.arange(n), "token": tune_ids,
                    "next_token": np.r_[tune_ids[1:], stoi["</s>"]], "split": np.full(n, split_code),
                    **annotate_tune(tune),
                }.items():
                    cols[name].append(np.asarray(values, dtype=columns[name]))
            block_columns = {name: np.concatenate(parts) for name, parts in cols.items()}
            for site in sites:
                acts = np.concatenate([states[site][row, :n].numpy() for row, n in enumerate(lengths)])
                if site not in writers:
                    attrs = {"subject": subject, "site": site, "d": acts.shape[1], "family": model.family,
                             "vocab": json.dumps(vocab), "split": json.dumps(split_json), "producer": PRODUCER,
                             "model_dir": str(model_dir), "corpus_dir": str(corpus_dir)}
                    writers[site] = SiteWriter(out_dir / f"{site}.h5", acts.shape[1], columns, categories, attrs)
                    dims[site] = acts.shape[1]
                writers[site].append(acts, block_columns)
            n_rows += sum(lengths)
    except BaseException:
        for w in writers.values():
            w.close(ok=False)
        raise
    if not writers:
        raise ValueError(f"{corpus_dir}: no tune could be run through {model_dir} (all {skipped} skipped)")
    for site, w in writers.items():
        w.f.attrs["n_skipped_tunes"] = skipped
        w.close()
    seconds = time.time() - t0
    log.info("%s: %d tunes, %d tokens, %d skipped, %d sites in %.1f s",
             subject, len(chosen) - skipped, n_rows, skipped, len(sites), seconds)
    return {"tunes": len(chosen) - skipped, "tokens": n_rows, "skipped": skipped, "sites": dims, "seconds": seconds}
