"""ABC header fields (M:, L:, K:) and transposition to C.

Parses the meter, unit note length and key fields of an ABC tune, gives the source key's
signature and the interval that moves its tonic to C (music21's key, pitch and interval
arithmetic), and turns ABC length suffixes into folk-rnn duration tokens. A field that cannot be
converted raises :class:`SkipTune` with the reason.
"""

from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache

from music21 import interval, key, pitch

from musinterp.corpus.tokens import format_duration, parse_duration

SUPPORTED_MODES = {"major": "maj", "minor": "min", "dorian": "dor", "mixolydian": "mix"}
# C-mode key signatures of the output (letter -> alteration).
TARGET_SIGNATURES = {
    "maj": {},
    "min": {"B": -1, "E": -1, "A": -1},
    "dor": {"B": -1, "E": -1},
    "mix": {"B": -1},
}
_MODE_WORDS = {"": "major", "maj": "major", "ion": "major", "m": "minor", "min": "minor", "aeo": "minor",
               "dor": "dorian", "mix": "mixolydian", "phr": "phrygian", "lyd": "lydian", "loc": "locrian"}


class SkipTune(Exception):
    """Raised inside the converter with the reason a tune is skipped."""


def parse_meter_field(data: str) -> str:
    """``6/8`` -> ``"6/8"``, ``C`` -> ``"4/4"``, ``C|`` -> ``"2/2"``; SkipTune otherwise."""
    data = data.strip()
    if data == "C":
        return "4/4"
    if data == "C|":
        return "2/2"
    if data.lower() == "none" or not data:
        raise SkipTune("free meter (M:none)")
    m = re.match(r"^(\d+)\s*/\s*(\d+)$", data)
    if not m:
        raise SkipTune(f"unsupported meter {data!r}")
    return f"{int(m.group(1))}/{int(m.group(2))}"


def parse_unit_field(data: str) -> Fraction:
    m = re.match(r"^\s*(\d+)\s*/\s*(\d+)\s*$", data)
    if not m or int(m.group(1)) == 0 or int(m.group(2)) == 0:
        raise SkipTune(f"unreadable unit note length L:{data}")
    return Fraction(int(m.group(1)), int(m.group(2)))


def parse_key_field(data: str) -> tuple[str, str]:
    """``"E Minor"`` -> ``("E", "minor")``; an empty field or ``none`` is C major."""
    data = data.strip()
    if data.lower() in ("", "none"):
        return "C", "major"
    m = re.match(r"^([A-G])([#b]?)\s*([A-Za-z]*)(.*)$", data)
    if not m:
        raise SkipTune(f"unrecognised key K:{data}")
    letter, accidental, mode_word, rest = m.groups()
    mode_word = mode_word.lower()
    mode = _MODE_WORDS.get(mode_word if mode_word in ("", "m") else mode_word[:3])
    if mode is None:
        # "K:G clef=bass" has no mode word but a clef; anything else is not a key we know.
        if "=" in mode_word + rest and not re.search(r"[_^=][A-Ga-g]", mode_word + rest):
            mode = "major"
        else:
            raise SkipTune(f"unrecognised key K:{data}")
    if re.search(r"(^|\s)[_^=][A-Ga-g]", rest):
        raise SkipTune(f"key with explicit accidentals not supported (K:{data})")
    if mode not in SUPPORTED_MODES:
        raise SkipTune(f"mode {mode} not supported")
    return letter + accidental, mode


@lru_cache(maxsize=None)
def source_signature(tonic: str, mode: str) -> dict[str, int]:
    """Key signature of the source key as letter -> alteration (music21's ``Key``)."""
    return {p.step: int(p.alter) for p in key.Key(tonic.replace("b", "-"), mode).alteredPitches}


@lru_cache(maxsize=None)
def transposition_to_c(tonic: str) -> interval.Interval:
    """The interval that moves ``tonic`` to C by the fewest semitones (a tritone goes down)."""
    start = pitch.Pitch(tonic.replace("b", "-") + "4")
    down = interval.Interval(noteStart=start, noteEnd=pitch.Pitch("C4"))
    up = interval.Interval(noteStart=start, noteEnd=pitch.Pitch("C5"))
    return up if abs(up.semitones) < abs(down.semitones) else down


@lru_cache(maxsize=None)
def transpose_to_c(tonic: str, step: str, alter: int, octave: int) -> tuple[str, int, int]:
    """Move a pitch (step, alteration, octave) by the interval that takes ``tonic`` to C.

    The interval is diatonic, so scale degrees keep their letters (in G major F# becomes B);
    a double sharp or flat that results is respelled.
    """
    source = pitch.Pitch(step + {2: "##", 1: "#", 0: "", -1: "-", -2: "--"}[alter] + str(octave))
    target = source.transpose(transposition_to_c(tonic))
    if target.accidental is not None and abs(target.accidental.alter) > 1:
        target = target.simplifyEnharmonic(mostCommon=True)
    alter_out = int(target.accidental.alter) if target.accidental is not None else 0
    return target.step, alter_out, target.octave


@lru_cache(maxsize=None)
def duration_token(length: str, scale: Fraction) -> str:
    """Duration token of an ABC length suffix (``"3/2"``) times ``scale`` (unit change, chord length)."""
    written = parse_duration(length) if length else Fraction(1)
    return format_duration(written * scale)
