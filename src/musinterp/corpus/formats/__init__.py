"""Token formats: one module per format, each declaring how its tokens are annotated.

A format names the special tokens of its pieces and supplies the musical columns that
activation files carry for every token (``columns`` with their dtypes, ``categories`` for coded
columns, ``annotate(tokens) -> {column: array}`` for one framed piece as the model reads it).
Corpora (``tokens.h5``, ``vocab.json``) and activation files record the format's name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class TokenFormat:
    name: str
    specials: tuple[str, ...]
    columns: dict[str, type]
    annotate: Callable[[Sequence], dict[str, np.ndarray]]
    categories: dict[str, list[str]] = field(default_factory=dict)
    description: str = ""

    def vocab(self, json_value):
        from ..vocab import Vocab

        return Vocab.from_json(json_value, format=self.name, specials=self.specials)


# name -> module that defines FORMAT (imported when first asked for)
_MODULES = {"folkrnn-v2": "musinterp.corpus.formats.folkrnn_abc",
            "chords": "musinterp.corpus.formats.chords", "chords-pcset": "musinterp.corpus.formats.chords_pcset"}
_EXTRA: dict[str, TokenFormat] = {}


def register_format(fmt: TokenFormat) -> TokenFormat:
    _EXTRA[fmt.name] = fmt
    return fmt


def known_formats() -> list[str]:
    return sorted({*_MODULES, *_EXTRA})


def get_format(name: str, where: str = "") -> TokenFormat:
    if name in _EXTRA:
        return _EXTRA[name]
    if name not in _MODULES:
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}unknown token format {name!r}; known: {known_formats()}")
    return importlib.import_module(_MODULES[name]).FORMAT
