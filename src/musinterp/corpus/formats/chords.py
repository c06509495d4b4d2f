"""Chord-symbol token formats (study S4, the ``chordlm`` family).

Two spellings of the same chords; both annotate every token with the same columns.

``chords``: one token ``"<root>:<quality>"`` per chord, e.g. ``C:maj``, ``A:min``, ``G:7``,
``F#:hdim7``. Roots are the pitch-class names :data:`ROOT_NAMES` (0 = C … 11 = B, one spelling
each: ``C C# D Eb E F F# G Ab A Bb B``); qualities are :data:`QUALITIES`.

``chords-pcset``: the chord's pitch classes in root position, as numbers 0..11 (C = 0) joined by
``-``: the root first, then the chord tones upward from it (intervals :data:`INTERVALS`), e.g.
``C:maj`` → ``0-4-7``, ``G:7`` → ``7-11-2-5``, ``A:min`` → ``9-0-4``. The order is kept (not
sorted) so the root stays readable: a sorted set would confuse ``C:sus2`` (0-2-7) with ``G:sus4``
(7-0-2) and the four roots of an augmented triad or a diminished seventh. Every (root, quality)
has its own token, so the two formats are one-to-one.

Special tokens ``<s>`` and ``</s>`` frame a song. :func:`annotate` gives per token

| column | dtype | meaning |
|---|---|---|
| ``root`` | int8 | pitch class of the chord root 0..11; −1 for specials |
| ``quality`` | int8 | code into :data:`QUALITIES` (``categories`` attribute); −1 for specials |
| ``is_special`` | int8 | 1 for ``<s>`` / ``</s>``, else 0 |

New qualities go at the end of :data:`QUALITIES`, so existing codes keep their meaning.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from . import TokenFormat

SPECIALS = ("<s>", "</s>")
ROOT_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# quality -> intervals above the root (semitones), root first
INTERVALS: dict[str, tuple[int, ...]] = {
    "maj": (0, 4, 7),
    "min": (0, 3, 7),
    "dim": (0, 3, 6),
    "aug": (0, 4, 8),
    "sus4": (0, 5, 7),
    "sus2": (0, 2, 7),
    "7": (0, 4, 7, 10),
    "maj7": (0, 4, 7, 11),
    "min7": (0, 3, 7, 10),
    "hdim7": (0, 3, 6, 10),
    "dim7": (0, 3, 6, 9),
}
QUALITIES: tuple[str, ...] = tuple(INTERVALS)
COLUMNS = {"root": np.int8, "quality": np.int8, "is_special": np.int8}

_ROOT_CODE = {name: pc for pc, name in enumerate(ROOT_NAMES)}
_QUALITY_CODE = {q: i for i, q in enumerate(QUALITIES)}


def chord_token(root: int, quality: str) -> str:
    """``"<root>:<quality>"`` of a root pitch class (any integer, taken mod 12) and a quality."""
    if quality not in _QUALITY_CODE:
        raise ValueError(f"unknown chord quality {quality!r}; known: {', '.join(QUALITIES)}")
    return f"{ROOT_NAMES[int(root) % 12]}:{quality}"


def pcset_token(root: int, quality: str) -> str:
    """The ``chords-pcset`` token: pitch classes from the root upward, e.g. ``(7, "7")`` → ``7-11-2-5``."""
    if quality not in _QUALITY_CODE:
        raise ValueError(f"unknown chord quality {quality!r}; known: {', '.join(QUALITIES)}")
    return "-".join(str((int(root) + i) % 12) for i in INTERVALS[quality])


def parse_chord(token: str) -> tuple[int, str]:
    """``(root pitch class, quality)`` of a ``chords`` token."""
    root, sep, quality = str(token).partition(":")
    if not sep or root not in _ROOT_CODE or quality not in _QUALITY_CODE:
        raise ValueError(f"not a chord token {token!r} (expected <root>:<quality>, roots {' '.join(ROOT_NAMES)}, "
                         f"qualities {' '.join(QUALITIES)})")
    return _ROOT_CODE[root], quality


_PCSET_TO_CHORD = {pcset_token(r, q): (r, q) for r in range(12) for q in QUALITIES}


def parse_pcset(token: str) -> tuple[int, str]:
    """``(root pitch class, quality)`` of a ``chords-pcset`` token."""
    try:
        return _PCSET_TO_CHORD[str(token)]
    except KeyError:
        raise ValueError(f"not a pitch-set chord token {token!r} (expected root-first pitch classes such as "
                         "0-4-7 of one of the qualities " + " ".join(QUALITIES) + ")") from None


def to_pcset(token: str) -> str:
    """A ``chords`` token (or special) in the ``chords-pcset`` spelling."""
    return token if token in SPECIALS else pcset_token(*parse_chord(token))


def _annotator(parse):
    def annotate(tokens: Sequence[str]) -> dict[str, np.ndarray]:
        n = len(tokens)
        root = np.full(n, -1, dtype=np.int8)
        quality = np.full(n, -1, dtype=np.int8)
        special = np.zeros(n, dtype=np.int8)
        for i, token in enumerate(tokens):
            if token in SPECIALS:
                special[i] = 1
                continue
            r, q = parse(token)
            root[i], quality[i] = r, _QUALITY_CODE[q]
        return {"root": root, "quality": quality, "is_special": special}

    annotate.__doc__ = ("Per-token columns ``root``, ``quality`` (code into QUALITIES), ``is_special`` "
                        "of one piece (specials allowed anywhere); an unknown token is a ValueError.")
    return annotate


annotate = _annotator(parse_chord)
annotate_pcset = _annotator(parse_pcset)

FORMAT = TokenFormat(
    name="chords",
    specials=SPECIALS,
    columns=dict(COLUMNS),
    categories={"quality": list(QUALITIES)},
    annotate=annotate,
    description="chord symbols <root>:<quality> (roots C C# D Eb E F F# G Ab A Bb B; qualities "
                + " ".join(QUALITIES) + "), <s> </s>",
)

PCSET_FORMAT = TokenFormat(
    name="chords-pcset",
    specials=SPECIALS,
    columns=dict(COLUMNS),
    categories={"quality": list(QUALITIES)},
    annotate=annotate_pcset,
    description="root-position chord pitch classes, root first (C:maj = 0-4-7, G:7 = 7-11-2-5), <s> </s>",
)
