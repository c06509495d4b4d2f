"""Corpus files: ``tokens.h5`` + ``vocab.json`` + ``manifest.tsv`` (see docs/ARCHITECTURE.md).

Every tune is stored as token ids; ``/offsets`` cuts the concatenated ``/tokens`` into tunes and
``/split`` marks each tune train (0) or held out (1) by a seeded shuffle. The three files are
written to temporary names and renamed together only when all of them are complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np

from musinterp import PRODUCER
from musinterp.io import atomic_path

log = logging.getLogger(__name__)

FORMAT = "folkrnn-v2"  # the default format of corpora built here
SPECIALS = ("<s>", "</s>")
SPLITS = {"train": 0, "heldout": 1}
MANIFEST_COLUMNS = ("id", "source", "status", "reason", "n_tokens")


class CorpusFileError(ValueError):
    """A corpus file is missing or does not follow the contract."""


@dataclass
class TuneRecord:
    """One source item after conversion: its tokens, or the reason it was skipped."""

    id: str
    source: str
    tokens: list[str] | None
    reason: str = ""

    @property
    def status(self) -> str:
        return "ok" if self.tokens is not None else "skipped"

    def manifest_row(self) -> dict:
        return {"id": self.id, "source": self.source, "status": self.status, "reason": self.reason,
                "n_tokens": len(self.tokens) if self.tokens is not None else 0}


@dataclass
class Corpus:
    name: str
    vocab: list[str]
    tunes: list[np.ndarray]  # int32 token ids, one array per tune
    tune_ids: list[str]
    split: np.ndarray  # uint8 per tune: 0 train, 1 heldout
    attrs: dict = field(default_factory=dict)
    format: str = FORMAT
    # per-token annotations that the tokens alone do not carry (e.g. a generated song's loop and
    # section): name -> one int32 array per tune, aligned with that tune's tokens
    token_columns: dict[str, list[np.ndarray]] = field(default_factory=dict)

    @cached_property
    def token_vocab(self):
        """The vocabulary as a :class:`musinterp.corpus.vocab.Vocab` of the corpus's format."""
        from musinterp.corpus.formats import get_format

        return get_format(self.format).vocab(self.vocab)

    @cached_property
    def stoi(self) -> dict[str, int]:
        return {tok: i for i, tok in enumerate(self.vocab)}

    def tune_tokens(self, i: int) -> list[str]:
        return [self.vocab[t] for t in self.tunes[i]]

    def indices(self, split: str) -> np.ndarray:
        """Tune indices of the ``"train"`` or ``"heldout"`` split."""
        if split not in SPLITS:
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        return np.flatnonzero(self.split == SPLITS[split])

    def __len__(self) -> int:
        return len(self.tunes)

    @property
    def n_tokens(self) -> int:
        return int(sum(len(t) for t in self.tunes))


def make_vocab(tune_token_lists: Iterable[Sequence[str]]) -> list[str]:
    """``<s>``, ``</s>``, then every other token that occurs, sorted."""
    seen = {tok for tokens in tune_token_lists for tok in tokens}
    return list(SPECIALS) + sorted(seen - set(SPECIALS))


def split_tunes(n_tunes: int, seed: int, heldout_fraction: float) -> np.ndarray:
    """uint8 per tune, 1 for held out; at least one held-out and one train tune when n >= 2."""
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    split = np.zeros(n_tunes, dtype=np.uint8)
    if n_tunes < 2:
        return split
    n_heldout = min(max(1, round(n_tunes * heldout_fraction)), n_tunes - 1)
    order = np.random.default_rng(seed).permutation(n_tunes)
    split[order[:n_heldout]] = 1
    return split


def _clean_field(value) -> str:
    # A tab or newline inside a field would break the TSV.
    return " ".join(str(value).split())


def write_corpus(
    out_dir: str | os.PathLike,
    name: str,
    tune_token_lists: Sequence[Sequence[str]],
    tune_ids: Sequence[str],
    manifest_rows: Sequence[dict],
    seed: int,
    heldout_fraction: float,
    vocab: Sequence[str] | None = None,
    format: str = FORMAT,
    token_columns: dict[str, Sequence[Sequence[int]]] | None = None,
) -> Corpus:
    """Write ``tokens.h5``, ``vocab.json`` and ``manifest.tsv`` into ``out_dir``; return the Corpus.

    ``manifest_rows`` has one dict per source item (keys id, source, status, reason and
    optionally n_tokens); every written tune must appear there with status ``ok``. With
    ``vocab`` given, every token must be in it. ``format`` names the token format
    (:mod:`musinterp.corpus.formats`). ``token_columns`` (name -> one integer sequence per tune,
    as long as the tune) are stored as ``/columns/<name>`` beside ``/tokens``.
    """
    from musinterp.corpus.formats import get_format

    get_format(format, where=f"corpus {name!r}")
    out_dir = Path(out_dir)
    if len(tune_token_lists) != len(tune_ids):
        raise ValueError(f"corpus {name!r}: {len(tune_token_lists)} tunes but {len(tune_ids)} ids")
    if not tune_token_lists:
        reasons = Counter(r.get("reason", "") for r in manifest_rows if r.get("status") != "ok")
        raise ValueError(
            f"corpus {name!r} has no usable tune ({len(manifest_rows)} source items, "
            f"skip reasons: {dict(reasons.most_common(5))})"
        )
    duplicates = [i for i, c in Counter(tune_ids).items() if c > 1]
    if duplicates:
        raise ValueError(f"corpus {name!r}: duplicate tune ids {duplicates[:5]}")
    empty = [tid for tid, toks in zip(tune_ids, tune_token_lists) if len(toks) == 0]
    if empty:
        raise ValueError(f"corpus {name!r}: tunes without tokens {empty[:5]}")
    status_by_id = {row["id"]: row.get("status") for row in manifest_rows}
    missing = [tid for tid in tune_ids if status_by_id.get(tid) != "ok"]
    if missing:
        raise ValueError(f"corpus {name!r}: tunes without an 'ok' manifest row: {missing[:5]}")

    vocab = list(vocab) if vocab is not None else make_vocab(tune_token_lists)
    stoi = {tok: i for i, tok in enumerate(vocab)}
    unknown = sorted({tok for toks in tune_token_lists for tok in toks} - stoi.keys())
    if unknown:
        raise ValueError(f"corpus {name!r}: {len(unknown)} tokens not in the vocabulary, e.g. {unknown[:10]}")

    tunes = [np.array([stoi[tok] for tok in toks], dtype=np.int32) for toks in tune_token_lists]
    lengths = np.array([len(t) for t in tunes], dtype=np.int64)
    columns = {}
    for col, values in (token_columns or {}).items():
        arrays = [np.asarray(v, dtype=np.int32) for v in values]
        if len(arrays) != len(tunes) or any(a.shape != (n,) for a, n in zip(arrays, lengths)):
            raise ValueError(f"corpus {name!r}: token column {col!r} must have one value per token of every tune")
        columns[col] = arrays
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    split = split_tunes(len(tunes), seed, heldout_fraction)
    attrs = {"corpus": name, "format": format, "n_tunes": len(tunes), "n_tokens": int(offsets[-1]),
             "seed": int(seed), "heldout_fraction": float(heldout_fraction), "producer": PRODUCER}
    n_tokens_by_id = dict(zip(tune_ids, lengths.tolist()))

    # All three files become visible together, only after each is completely written.
    with contextlib.ExitStack() as stack:
        tmp_manifest = stack.enter_context(atomic_path(out_dir / "manifest.tsv"))
        tmp_vocab = stack.enter_context(atomic_path(out_dir / "vocab.json"))
        tmp_tokens = stack.enter_context(atomic_path(out_dir / "tokens.h5"))
        with h5py.File(tmp_tokens, "w") as f:
            all_tokens = np.concatenate(tunes) if tunes else np.zeros(0, dtype=np.int32)
            f.create_dataset("tokens", data=all_tokens, dtype=np.int32,
                             chunks=(min(len(all_tokens), 1 << 16),), compression="gzip")
            f.create_dataset("offsets", data=offsets, dtype=np.int64)
            f.create_dataset("tune_id", data=list(tune_ids), dtype=h5py.string_dtype("utf-8"))
            f.create_dataset("split", data=split, dtype=np.uint8)
            for col, arrays in columns.items():
                f.create_dataset(f"columns/{col}", data=np.concatenate(arrays), dtype=np.int32, compression="gzip")
            f.attrs.update(attrs)
        tmp_vocab.write_text(json.dumps({"format": format, "tokens": vocab}, indent=1) + "\n")
        with open(tmp_manifest, "w", encoding="utf-8", newline="\n") as out:
            out.write("\t".join(MANIFEST_COLUMNS) + "\n")
            for row in manifest_rows:
                n_tokens = n_tokens_by_id.get(row["id"], row.get("n_tokens", 0)) if row.get("status") == "ok" else 0
                values = [row["id"], row.get("source", ""), row.get("status", ""), row.get("reason", ""), n_tokens]
                out.write("\t".join(_clean_field(v) for v in values) + "\n")

    n_skipped = sum(1 for r in manifest_rows if r.get("status") != "ok")
    log.info("wrote corpus %s to %s: %d tunes (%d held out), %d tokens, vocab %d; %d items skipped",
             name, out_dir, len(tunes), int(split.sum()), int(offsets[-1]), len(vocab), n_skipped)
    return Corpus(name=name, vocab=vocab, tunes=tunes, tune_ids=list(tune_ids), split=split, attrs=attrs,
                  format=format, token_columns=columns)


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: corpus file is missing (build the corpus first)")
    return path


def load_corpus(corpus_dir: str | os.PathLike) -> Corpus:
    """Read a corpus directory written by :func:`write_corpus`."""
    corpus_dir = Path(corpus_dir)
    vocab_path = _require(corpus_dir / "vocab.json")
    tokens_path = _require(corpus_dir / "tokens.h5")
    try:
        vocab_doc = json.loads(vocab_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorpusFileError(f"{vocab_path}: not valid JSON ({err})") from None
    if not isinstance(vocab_doc, dict) or not isinstance(vocab_doc.get("tokens"), list):
        raise CorpusFileError(f"{vocab_path}: expected an object with a 'tokens' list")
    from musinterp.corpus.formats import known_formats

    fmt = vocab_doc.get("format")
    if fmt not in known_formats():
        raise CorpusFileError(f"{vocab_path}: format is {fmt!r}, expected one of {known_formats()}")
    vocab = [str(t) for t in vocab_doc["tokens"]]

    try:
        with h5py.File(tokens_path, "r") as f:
            missing = [k for k in ("tokens", "offsets", "tune_id", "split") if k not in f]
            if missing:
                raise CorpusFileError(f"{tokens_path}: missing datasets {missing}")
            tokens = f["tokens"][()]
            offsets = f["offsets"][()]
            tune_ids = [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in f["tune_id"][()]]
            split = f["split"][()].astype(np.uint8)
            attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
            raw_columns = {name: ds[()] for name, ds in f["columns"].items()} if "columns" in f else {}
    except OSError as err:
        raise CorpusFileError(f"{tokens_path}: not a readable HDF5 file ({err})") from None

    n_tunes = len(tune_ids)
    if offsets.ndim != 1 or len(offsets) != n_tunes + 1 or len(split) != n_tunes:
        raise CorpusFileError(
            f"{tokens_path}: inconsistent lengths (offsets {len(offsets)}, tune_id {n_tunes}, split {len(split)})")
    if offsets[0] != 0 or offsets[-1] != len(tokens) or np.any(np.diff(offsets) < 0):
        raise CorpusFileError(f"{tokens_path}: offsets do not partition the {len(tokens)} tokens")
    if len(tokens) and (tokens.min() < 0 or tokens.max() >= len(vocab)):
        raise CorpusFileError(f"{tokens_path}: token ids outside the vocabulary of {len(vocab)} ({vocab_path})")
    tunes = [tokens[offsets[i]:offsets[i + 1]].astype(np.int32) for i in range(n_tunes)]
    bad = [name for name, values in raw_columns.items() if values.shape != tokens.shape]
    if bad:
        raise CorpusFileError(f"{tokens_path}: /columns/{bad[0]} is not one value per token ({len(tokens)})")
    columns = {name: [values[offsets[i]:offsets[i + 1]] for i in range(n_tunes)] for name, values in raw_columns.items()}
    name = str(attrs.get("corpus", corpus_dir.name))
    if attrs.get("format", fmt) != fmt:
        raise CorpusFileError(f"{tokens_path}: format {attrs['format']!r} differs from {fmt!r} in {vocab_path}")
    return Corpus(name=name, vocab=vocab, tunes=tunes, tune_ids=tune_ids, split=split, attrs=attrs, format=fmt,
                  token_columns=columns)


def read_manifest(corpus_dir: str | os.PathLike) -> list[dict]:
    """Rows of ``manifest.tsv`` as dicts (``n_tokens`` as int)."""
    path = _require(Path(corpus_dir) / "manifest.tsv")
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or tuple(lines[0].split("\t")) != MANIFEST_COLUMNS:
        raise CorpusFileError(f"{path}: header must be {' '.join(MANIFEST_COLUMNS)}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        values = line.split("\t")
        if len(values) != len(MANIFEST_COLUMNS):
            raise CorpusFileError(f"{path}:{number}: expected {len(MANIFEST_COLUMNS)} columns, got {len(values)}")
        row = dict(zip(MANIFEST_COLUMNS, values))
        row["n_tokens"] = int(row["n_tokens"] or 0)
        rows.append(row)
    return rows
