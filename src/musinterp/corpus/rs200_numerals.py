"""RS200 chord symbols and keys: the Roman-numeral grammar of the ``.har`` files → (root, quality).

**Chord symbols** → (root, quality), :func:`parse_chord`: ``[b|#]numeral`` (upper case major, lower
case minor) then ``o`` (diminished), ``x`` (fully diminished seventh), ``h`` (half-diminished
seventh), ``a`` (augmented); ``d`` (dominant seventh, with 7 or an inversion of it); a figure: ``6``
``64`` (triad inversions), ``7`` ``65`` ``43`` ``42`` (seventh chord and inversions), ``9`` ``13``
(read as their seventh chord), ``11`` (sus4: the authors note their V11 is F#-C#-G#-B over F#, no
third); ``s4`` / ``s2`` (suspended); alterations ``b5 #5 b9 #9 +9 +11 …``; ``/numeral`` applied
(``V7/V``: the chord read in the major key on that degree; nests). Inversions do not change the
token. A plain ``7`` is the seventh of the major scale above the root, as the numerals read it:
``I7 IV7 bVII7 bVI7 bIII7 bII7`` → ``maj7``, ``V7 II7 III7 VI7 VII7 #IV7`` → ``7``; lower case ``7``
→ ``min7`` (the format has no minor-major seventh). Nearest qualities where the format has none:
``a`` with a seventh → ``aug``; ``7s4`` → ``sus4``; added tones (``+9`` ``+11`` ``#9`` without a
seventh, ``b9``) are dropped; ``b5`` keeps a major triad ``maj`` (a minor one becomes ``dim``),
``#5`` makes ``aug``. Anything else (e.g. ``iid6/ii``: ``d`` only marks dominant sevenths) is an
unknown symbol: the song is skipped, its manifest reason naming the symbol. A song whose first
chord comes before any key is skipped too.

Keys are written ``[G]``, ``[Bb]``, ``[F#]`` (:func:`key_pc`). :class:`RS200Error` is the error of
the whole RS200 reader (:mod:`musinterp.corpus.rs200`); its message is the manifest's reason.
"""

from __future__ import annotations

import re
from functools import lru_cache

from musinterp.corpus.formats.chords import QUALITIES

_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_NUMERALS = {"I": 0, "II": 1, "III": 2, "IV": 3, "V": 4, "VI": 5, "VII": 6}
_NUM = r"VII|VI|V|IV|III|II|I|vii|vi|v|iv|iii|ii|i"
_CHORD = re.compile(
    rf"(?P<acc>[b#]*)(?P<num>{_NUM})(?P<mark>[oxha]?)(?P<dom>d?)(?P<fig>7|9|11|13|65|43|42|64|6|)"
    r"(?P<sus>s4|s2|)(?P<alts>(?:[b#+](?:5|9|11|13))*)")
_TARGET = re.compile(rf"(?P<acc>[b#]*)(?P<num>{_NUM})")
_SEVENTH_FIGURES = ("7", "9", "13", "65", "43", "42")
_KEY = re.compile(r"(?P<letter>[A-G])(?P<acc>[b#]?)")
_LETTER_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


class RS200Error(ValueError):
    """A song cannot be read; the message is the manifest's reason."""



def _numeral_pc(acc: str, num: str) -> tuple[int, int]:
    """(letter index 0..6, pitch class above the tonic) of ``[b|#]numeral``."""
    letter = _NUMERALS[num.upper()]
    return letter, (_MAJOR[letter] + acc.count("#") - acc.count("b")) % 12


@lru_cache(maxsize=None)
def parse_chord(symbol: str) -> tuple[int, str]:
    """``(root relative to the key 0..11, quality)`` of an RS200 chord symbol: ``V7`` → ``(7, "7")``,
    ``bVII`` → ``(10, "maj")``, ``viix7/V`` → ``(6, "dim7")``; :class:`RS200Error` if unknown."""
    chord, *targets = symbol.split("/")
    m = _CHORD.fullmatch(chord)
    if m is None:
        raise RS200Error(f"unknown chord symbol {symbol!r}")
    offset = 0
    for target in targets:
        t = _TARGET.fullmatch(target)
        if t is None:
            raise RS200Error(f"unknown chord symbol {symbol!r} (applied to {target!r})")
        offset += _numeral_pc(t["acc"], t["num"])[1]
    letter, root = _numeral_pc(m["acc"], m["num"])
    upper = m["num"].isupper()
    mark, dom, fig, sus, alts = m["mark"], m["dom"], m["fig"], m["sus"], m["alts"]
    seventh = fig in _SEVENTH_FIGURES
    if dom and (mark or sus or not (seventh or fig == "11")):
        raise RS200Error(f"unknown chord symbol {symbol!r} ('d' marks a dominant seventh: d7, d65, d43, d42, d9)")
    if mark in ("o", "x", "h") and (upper or sus):
        raise RS200Error(f"unknown chord symbol {symbol!r} ({mark!r} on an upper-case numeral or with a suspension)")
    if mark == "a":
        quality = "aug"
    elif mark == "x":
        quality = "dim7"
    elif mark == "h":
        quality = "hdim7"
    elif mark == "o":
        quality = "dim7" if seventh else "dim"
    elif sus:
        quality = "sus4" if sus == "s4" else "sus2"
    elif fig == "11":
        quality = "sus4"
    elif dom:
        quality = "7"
    elif seventh and not upper:
        quality = "min7"
    elif seventh:
        quality = "maj7" if (_MAJOR[(letter + 6) % 7] - root) % 12 == 11 else "7"
    else:
        quality = "maj" if upper else "min"
    if "b5" in re.findall(r"[b#+]\d+", alts) and quality in ("maj", "min"):
        quality = "maj" if quality == "maj" else "dim"
    if "#5" in re.findall(r"[b#+]\d+", alts) and quality == "maj":
        quality = "aug"
    assert quality in QUALITIES
    return (root + offset) % 12, quality


def key_pc(name: str) -> int:
    """Pitch class of a key written ``[G]``, ``[Bb]``, ``[F#]``; :class:`RS200Error` otherwise."""
    m = _KEY.fullmatch(name)
    if m is None:
        raise RS200Error(f"unknown key or meter [{name}]")
    return (_LETTER_PC[m["letter"]] + {"": 0, "#": 1, "b": -1}[m["acc"]]) % 12
