"""Read text already in folk-rnn token format: tunes separated by blank lines, tokens by whitespace.

A tune starts with its header tokens, ``M:4/4 K:Cmaj`` (folk-rnn v2) or ``[L:1/8] [M:3/4] [K:GMaj]``
(folkwiki); the tokens are kept exactly as written. An item that is not a tune (no header, no
notes, unknown tokens) is skipped with the reason.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from tqdm.auto import tqdm

from musinterp.corpus.store import TuneRecord
from musinterp.corpus.tokens import SPECIAL_TOKENS, token_type

log = logging.getLogger(__name__)

_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")


def parse_folkrnn_tune(text: str) -> list[str]:
    """Tokens of one tune; raises ValueError with the reason it is not usable."""
    tokens = [tok for tok in text.split() if tok not in SPECIAL_TOKENS]
    if not tokens:
        raise ValueError("empty item")
    unknown = sorted({tok for tok in tokens if token_type(tok) == "other"})
    if unknown:
        raise ValueError(f"unrecognised tokens {' '.join(unknown[:5])}")
    header = []
    for tok in tokens:
        if token_type(tok) != "meta":
            break
        header.append(tok.lstrip("[")[:2])
    missing = [field for field in ("M:", "K:") if field not in header]
    if missing:
        raise ValueError(f"header lacks {' and '.join(missing)} (starts {' '.join(tokens[:3])!r})")
    if not any(token_type(tok) == "pitch" for tok in tokens):
        raise ValueError("no notes")
    return tokens


def read_folkrnn_text(path: str | os.PathLike, id_prefix: str | None = None,
                      source: str | None = None, progress: str | None = None) -> list[TuneRecord]:
    """One :class:`TuneRecord` per blank-line separated item; ids ``<id_prefix>#<n>`` from 1.

    ``progress``: a label to show a tqdm bar over the items.
    """
    path = Path(path)
    id_prefix = id_prefix or path.name
    source = source or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from None
    text = text.replace("\r\n", "\n")
    items = [b for b in _BLANK_LINE.split(text) if b.strip()]
    records = []
    for number, item in enumerate(tqdm(items, desc=progress, unit="tune", disable=progress is None), start=1):
        tune_id = f"{id_prefix}#{number}"
        try:
            records.append(TuneRecord(tune_id, source, parse_folkrnn_tune(item)))
        except ValueError as err:
            records.append(TuneRecord(tune_id, source, None, str(err)))
    n_ok = sum(r.status == "ok" for r in records)
    log.info("%s: %d items, %d tunes ok, %d skipped", path, len(records), n_ok, len(records) - n_ok)
    return records
