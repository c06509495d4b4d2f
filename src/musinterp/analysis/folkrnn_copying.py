"""Copying from the training data (S2): which bars and n-grams of a tune occur in training tunes.

Sturm asked whether folk-rnn copies: he searched the 23,636 training tunes for a figure of a
generated tune and found it in 217 of them. :class:`NgramIndex` answers that question for every
bar and every n-gram of a tune at once. It is built once over a corpus split (a few hundred
milliseconds for ~12k tunes and 1.5M tokens) and then answers each query with a binary search.

How it works: for each window length ``n`` (built lazily, cached) every window of ``n`` tokens
inside a tune gets a 64-bit polynomial hash (wrapping uint64 arithmetic, vectorised with numpy);
the hashes are sorted. A query hashes its tokens the same way, finds the equal hashes with
``searchsorted`` and then checks each candidate window token by token, so hash collisions can
never produce a wrong count.

"Same bar position" means the window starts at the same *token offset in its bar* as the query:
the number of body tokens since the last bar-line or repeat token (``|``, ``|:``, ``:|``, ``|1``,
...), or since the header (``M:``/``K:``/``L:`` tokens) for the first bar. A whole bar of a tune
therefore matches "at the same position" only where it starts a bar in the training tune. Token
offsets are used rather than metric onsets so that the index needs no per-tune annotation.

Copying table (:func:`copying_table`, ``copying.tsv``), one row per query:

- ``tune``: name of the analysed tune;
- ``kind``: ``bar`` (the tokens of one bar, without its bar lines) or ``ngram``;
- ``n``: number of tokens in the query;
- ``start``: index of the query's first token in the analysed tune (``<s>`` = 0);
- ``bar``: bar index of the first token (0 = before the first bar line);
- ``bar_offset``: token offset of the first token in its bar (see above); -1 on a bar line;
- ``text``: the query tokens, space separated;
- ``n_tunes``: indexed (training) tunes that contain the query anywhere;
- ``n_tunes_same_position``: those that contain it starting at the same ``bar_offset``;
- ``n_occurrences``: occurrences anywhere (a tune may contain it several times);
- ``examples``, ``examples_same_position``: up to ``n_examples`` ids of such tunes, comma separated.

Bars are maximal runs of body tokens between bar-line tokens (the first one may be a pickup);
n-grams are all windows of ``n`` consecutive body tokens (bar lines included; never ``<s>``,
``</s>`` or header tokens).
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np
import pandas as pd

from ..corpus.tokens import token_type

log = logging.getLogger(__name__)

_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier (golden-ratio constant)
BAR_TYPES = ("bar", "repeat")
RESET_TYPES = ("bar", "repeat", "meta", "special")

COPYING_COLUMNS = ["tune", "kind", "n", "start", "bar", "bar_offset", "text", "n_tunes",
                   "n_tunes_same_position", "n_occurrences", "examples", "examples_same_position"]


def bar_offsets(tokens: Sequence[str]) -> np.ndarray:
    """Token offset of each token in its bar: body tokens since the last bar-line/repeat token
    (or since the header and ``<s>``); bar lines, meta and special tokens themselves get -1."""
    offsets = np.full(len(tokens), -1, dtype=np.int32)
    count = 0
    for i, tok in enumerate(tokens):
        if token_type(tok) in RESET_TYPES:
            count = 0
            continue
        offsets[i] = count
        count += 1
    return offsets


def _hash_windows(x: np.ndarray, n: int) -> np.ndarray:
    """Polynomial hashes of all windows ``x[i:i+n]`` (``len(x) - n + 1`` of them), uint64."""
    m = len(x) - n + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * _BASE + x[j : j + m]
    return h


class NgramIndex:
    """Every window of the given tunes, searchable by content.

    ``tunes`` are token-id arrays under ``vocab`` (a corpus's body tokens, as
    :class:`~musinterp.corpus.store.Corpus` stores them); ``tune_ids`` name them in answers.
    """

    def __init__(self, tunes: Sequence[np.ndarray], tune_ids: Sequence[str], vocab: Sequence[str]):
        if len(tunes) != len(tune_ids):
            raise ValueError(f"{len(tunes)} tunes but {len(tune_ids)} tune ids")
        t0 = time.time()
        self.vocab = list(vocab)
        self.stoi = {tok: i for i, tok in enumerate(self.vocab)}
        self.tune_ids = list(tune_ids)
        lengths = np.array([len(t) for t in tunes], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.tokens = (np.concatenate(tunes).astype(np.int64) if len(tunes) else np.zeros(0, np.int64))
        # +1 so that token id 0 still changes the hash
        self._values = (self.tokens + 1).astype(np.uint64)
        self.tune_of = np.repeat(np.arange(len(tunes), dtype=np.int64), lengths)
        # token offset in bar, vectorised: position minus the last reset position (or tune start)
        reset_vocab = np.array([token_type(t) in RESET_TYPES for t in self.vocab])
        is_reset = reset_vocab[self.tokens] if len(self.tokens) else np.zeros(0, bool)
        idx = np.arange(len(self.tokens), dtype=np.int64)
        marker = np.where(is_reset, idx, -1)
        starts = self.offsets[:-1][lengths > 0]
        marker[starts] = np.maximum(marker[starts], starts - 1)
        last = np.maximum.accumulate(marker) if len(marker) else marker
        self.bar_offset = np.where(is_reset, -1, idx - last - 1).astype(np.int32)
        self._by_n: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        log.info("n-gram index over %d tunes, %d tokens (%.2f s)", len(tunes), len(self.tokens), time.time() - t0)

    @classmethod
    def from_corpus(cls, corpus, split: str | None = "train") -> "NgramIndex":
        """Index the ``split`` (``"train"``, ``"heldout"`` or None for all) of a Corpus."""
        which = range(len(corpus)) if split is None else corpus.indices(split)
        return cls([corpus.tunes[i] for i in which], [corpus.tune_ids[i] for i in which], corpus.vocab)

    def __len__(self) -> int:
        return len(self.tune_ids)

    def _windows(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Sorted hashes of all in-tune windows of length ``n`` and their start positions."""
        if n not in self._by_n:
            h = _hash_windows(self._values, n)
            starts = np.arange(len(h), dtype=np.int64)
            inside = starts + n <= self.offsets[self.tune_of[starts] + 1] if len(h) else np.zeros(0, bool)
            h, starts = h[inside], starts[inside]
            order = np.argsort(h, kind="stable")
            self._by_n[n] = (h[order], starts[order])
        return self._by_n[n]

    def find(self, query: Sequence[str]) -> np.ndarray:
        """Start positions (into the concatenated corpus) of every occurrence of ``query``."""
        if len(query) == 0:
            raise ValueError("empty query")
        if any(tok not in self.stoi for tok in query):
            return np.zeros(0, dtype=np.int64)
        q = np.array([self.stoi[tok] for tok in query], dtype=np.int64)
        hashes, starts = self._windows(len(q))
        key = _hash_windows((q + 1).astype(np.uint64), len(q))[0]
        lo, hi = np.searchsorted(hashes, key, "left"), np.searchsorted(hashes, key, "right")
        cand = starts[lo:hi]
        if len(cand):
            ok = (self.tokens[cand[:, None] + np.arange(len(q))] == q).all(axis=1)
            cand = np.sort(cand[ok])
        return cand

    def count(self, query: Sequence[str], bar_offset: int | None = None, n_examples: int = 3) -> dict:
        """How many tunes contain ``query`` anywhere and starting at token offset ``bar_offset``."""
        hits = self.find(query)
        tunes_any = np.unique(self.tune_of[hits])
        out = {"n_tunes": int(len(tunes_any)), "n_occurrences": int(len(hits)),
               "examples": [self.tune_ids[i] for i in tunes_any[:n_examples]]}
        if bar_offset is not None:
            same = np.unique(self.tune_of[hits[self.bar_offset[hits] == bar_offset]])
            out["n_tunes_same_position"] = int(len(same))
            out["examples_same_position"] = [self.tune_ids[i] for i in same[:n_examples]]
        return out


def tune_queries(tokens: Sequence[str], ns: Sequence[int]) -> list[dict]:
    """The bars and n-grams of one tune (token strings, may start with ``<s>``): dicts with kind,
    n, start, bar, bar_offset, tokens. Windows never include ``<s>``, ``</s>`` or header tokens."""
    kinds = [token_type(t) for t in tokens]
    offs = bar_offsets(tokens)
    body = [i for i, k in enumerate(kinds) if k not in ("special", "meta")]
    bar_of = np.zeros(len(tokens), dtype=np.int32)
    b, after_bar = 0, False
    for i, k in enumerate(kinds):
        if k in BAR_TYPES:
            after_bar = True
        elif k not in ("special", "meta") and after_bar:
            b, after_bar = b + 1, False
        bar_of[i] = b
    queries = []
    # bars: maximal runs of consecutive body tokens that are not bar lines
    runs: list[list[int]] = []
    previous = None
    for i in body:
        if kinds[i] in BAR_TYPES:
            previous = None
            continue
        if previous is None or i != previous + 1:
            runs.append([])
        runs[-1].append(i)
        previous = i
    for run in runs:
        queries.append({"kind": "bar", "n": len(run), "start": run[0], "bar": int(bar_of[run[0]]),
                        "bar_offset": int(offs[run[0]]), "tokens": [tokens[j] for j in run]})
    # n-grams: windows of consecutive body tokens (bar lines included)
    body_set = set(body)
    for n in ns:
        for s in range(len(tokens) - n + 1):
            window = range(s, s + n)
            if all(j in body_set for j in window):
                queries.append({"kind": "ngram", "n": n, "start": s, "bar": int(bar_of[s]),
                                "bar_offset": int(offs[s]), "tokens": [tokens[j] for j in window]})
    return queries


def copying_table(index: NgramIndex, tokens: Sequence[str], ns: Sequence[int] = (4, 5, 6, 7, 8),
                  n_examples: int = 3, tune: str = "") -> pd.DataFrame:
    """Count, for every bar and every n-gram (``n`` in ``ns``) of ``tokens``, the indexed tunes
    containing it anywhere and at the same bar position (columns in the module docstring)."""
    t0 = time.time()
    rows = []
    for q in tune_queries(tokens, ns):
        # a query that starts on a bar line has offset -1, as every bar line in the index does
        c = index.count(q["tokens"], bar_offset=q["bar_offset"], n_examples=n_examples)
        rows.append({"tune": tune, "kind": q["kind"], "n": q["n"], "start": q["start"], "bar": q["bar"],
                     "bar_offset": q["bar_offset"], "text": " ".join(q["tokens"]), "n_tunes": c["n_tunes"],
                     "n_tunes_same_position": c["n_tunes_same_position"], "n_occurrences": c["n_occurrences"],
                     "examples": ",".join(c["examples"]),
                     "examples_same_position": ",".join(c["examples_same_position"])})
    table = pd.DataFrame(rows, columns=COPYING_COLUMNS)
    log.info("copying %s: %d queries against %d tunes (%.2f s)", tune or "tune", len(table), len(index),
             time.time() - t0)
    return table
