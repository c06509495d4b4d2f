"""A vocabulary: token strings by id, one list or one list per field of a multi-field token.

Single-field formats (folk-rnn ABC, chord symbols) map each token string to one id. Multi-field
formats (MMT events ``(type, beat, position, pitch, duration, instrument)``) map a token, a tuple
of strings, to one id per field: pieces are then ``[n_tokens, n_fields]`` arrays. Corpora, models
and activation files store the vocabulary as JSON: a list, or ``{"fields": {name: [tokens]}}``.
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import Iterable, Sequence

import numpy as np


class Vocab:
    def __init__(self, tokens: Sequence[str] | None = None, *, fields: dict[str, Sequence[str]] | None = None,
                 format: str = "", specials: Sequence[str] = ()):
        if (tokens is None) == (fields is None):
            raise ValueError("a Vocab has either tokens or fields")
        self.format = format
        self.specials = tuple(specials)
        self.fields = None if fields is None else {name: [str(t) for t in toks] for name, toks in fields.items()}
        self.tokens = None if tokens is None else [str(t) for t in tokens]
        for name, toks in self._lists().items():
            repeated = sorted({t for t in toks if toks.count(t) > 1})
            if repeated:
                raise ValueError(f"vocabulary{'' if name is None else ' field ' + name}: repeated tokens {repeated[:5]}")

    def _lists(self) -> dict[str | None, list[str]]:
        return {None: self.tokens} if self.fields is None else dict(self.fields)

    @property
    def multi_field(self) -> bool:
        return self.fields is not None

    @cached_property
    def _stoi(self) -> dict[str | None, dict[str, int]]:
        return {name: {t: i for i, t in enumerate(toks)} for name, toks in self._lists().items()}

    # A single-field vocabulary behaves like the list of its tokens.
    def __len__(self) -> int:
        return len(self._single())

    def __iter__(self):
        return iter(self._single())

    def __getitem__(self, i):
        return self._single()[i]

    def __eq__(self, other) -> bool:
        if isinstance(other, Vocab):
            return self.to_json() == other.to_json()
        return not self.multi_field and list(other) == self.tokens

    def _single(self) -> list[str]:
        if self.fields is not None:
            raise TypeError(f"vocabulary of format {self.format!r} has fields {list(self.fields)}; index a field")
        return self.tokens

    def index(self, token: str) -> int:
        return self._stoi[None][token]

    @property
    def sizes(self) -> list[int]:
        return [len(toks) for toks in self._lists().values()]

    def unknown(self, tokens: Iterable) -> list:
        """Tokens of a piece the vocabulary lacks (a multi-field token is unknown if any field is)."""
        if self.fields is None:
            return [t for t in tokens if t not in self._stoi[None]]
        maps = list(self._stoi.values())
        return [t for t in tokens if len(t) != len(maps) or any(v not in m for v, m in zip(t, maps))]

    def encode(self, tokens: Sequence, where: str = "piece") -> np.ndarray:
        """int32 ids ``[n]`` (or ``[n, fields]``); an unknown token is an error naming it and ``where``."""
        missing = self.unknown(tokens)
        if missing:
            raise ValueError(f"{where}: tokens not in the vocabulary: {sorted(set(map(str, missing)))[:10]}")
        if self.fields is None:
            return np.array([self._stoi[None][t] for t in tokens], dtype=np.int32)
        maps = list(self._stoi.values())
        return np.array([[m[v] for v, m in zip(t, maps)] for t in tokens], dtype=np.int32).reshape(-1, len(maps))

    def decode(self, ids) -> list:
        """Token strings (tuples of strings for multi-field tokens)."""
        ids = np.asarray(ids)
        if self.fields is None:
            return [self.tokens[i] for i in ids.reshape(-1)]
        lists = list(self.fields.values())
        return [tuple(lists[f][v] for f, v in enumerate(row)) for row in ids.reshape(-1, len(lists))]

    def label(self, token) -> str:
        """One token as display text (fields joined by ``/``)."""
        return "/".join(token) if isinstance(token, tuple) else str(token)

    def to_json(self):
        return list(self.tokens) if self.fields is None else {"fields": self.fields}

    @classmethod
    def from_json(cls, value, format: str = "", specials: Sequence[str] = ()) -> "Vocab":
        """From the JSON value (list, or ``{"fields": ...}``) or its string."""
        if isinstance(value, (str, bytes)):
            value = json.loads(value)
        if isinstance(value, Vocab):
            return value
        if isinstance(value, dict) and isinstance(value.get("fields"), dict):
            return cls(fields=value["fields"], format=format, specials=specials)
        if isinstance(value, list):
            return cls(value, format=format, specials=specials)
        raise ValueError(f"a vocabulary must be a list of tokens or {{'fields': ...}}, got {type(value).__name__}")
