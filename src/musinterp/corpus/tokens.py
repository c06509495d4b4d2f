"""The folk-rnn v2 token grammar: what each token is, and what it means musically.

A tune is a list of whitespace-free tokens such as ``<s> M:4/4 K:Cmaj |: G 2 A > B (3 c d e | ... </s>``.
Pitches are ABC notes (``^F``, ``=B,``, ``c'``), durations are multiples of the unit note length L
(``2``, ``/2``, ``3/2``; L is 1/8 unless an ``[L:...]`` token says otherwise), and broken rhythm may
be fused with the duration before it (``2>``). :func:`annotate_tune` turns a tune into per-token
musical columns (bar, metric position, MIDI pitch, duration) for the activation files.
"""

from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache
from typing import Mapping

import numpy as np

TOKEN_TYPES = ["special", "meta", "pitch", "rest", "duration", "bar", "repeat", "tuplet", "broken", "chord", "other"]
TOKEN_TYPE_CODES = {name: code for code, name in enumerate(TOKEN_TYPES)}

SPECIAL_TOKENS = ("<s>", "</s>")

_META = re.compile(r"^(\[[A-Za-z]:[^\]]*\]|[A-Za-z]:\S+)$")
_PITCH = re.compile(r"^(\^\^|\^|__|_|=)?([A-Ga-g])([,']*)$")
_REST = re.compile(r"^[zx]$")
_DURATION = re.compile(r"^(\d+|\d*/+\d*)$")
_BAR = re.compile(r"^(\||\|\||\|\]|\[\|)$")
# Repeat marks and variant endings: bar-line characters with a colon or an ending number.
_REPEAT = re.compile(r"^(?=.*[:\d])[|:\[\]]*[|:\[][|:\[\]]*\d*$")
_TUPLET = re.compile(r"^\((\d+)(?::(\d*))?(?::(\d*))?$")
_BROKEN = re.compile(r"^(\d+|\d*/+\d*)?(>{1,3}|<{1,3})$")

ACCIDENTAL_ALTER = {"^^": 2, "^": 1, "=": 0, "_": -1, "__": -2}
LETTER_SEMITONE = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
# Broken rhythm multiplies the note before the marker and the note after it.
BROKEN_FACTORS = {
    ">": (Fraction(3, 2), Fraction(1, 2)),
    "<": (Fraction(1, 2), Fraction(3, 2)),
    ">>": (Fraction(7, 4), Fraction(1, 4)),
    "<<": (Fraction(1, 4), Fraction(7, 4)),
    ">>>": (Fraction(15, 8), Fraction(1, 8)),
    "<<<": (Fraction(1, 8), Fraction(15, 8)),
}


@lru_cache(maxsize=4096)
def token_type(tok: str) -> str:
    """The grammatical class of one token, one of :data:`TOKEN_TYPES`."""
    if tok in SPECIAL_TOKENS:
        return "special"
    if _META.match(tok):
        return "meta"
    if _PITCH.match(tok):
        return "pitch"
    if _REST.match(tok):
        return "rest"
    if _DURATION.match(tok):
        return "duration"
    if _BAR.match(tok):
        return "bar"
    if _REPEAT.match(tok):
        return "repeat"
    if _TUPLET.match(tok):
        return "tuplet"
    if _BROKEN.match(tok):
        return "broken"
    if tok in ("[", "]"):
        return "chord"
    return "other"


# --- pitch -------------------------------------------------------------------------------------


def parse_pitch(tok: str) -> tuple[str, int | None, int]:
    """``"^f'"`` -> ``("F", 1, 6)``: letter, explicit alteration (None if none) and octave (C4 = MIDI 60)."""
    m = _PITCH.match(tok)
    if m is None:
        raise ValueError(f"not a pitch token: {tok!r}")
    acc, letter, marks = m.groups()
    octave = (5 if letter.islower() else 4) + marks.count("'") - marks.count(",")
    return letter.upper(), (ACCIDENTAL_ALTER[acc] if acc else None), octave


def midi_number(letter: str, alter: int, octave: int) -> int:
    return 12 * (octave + 1) + LETTER_SEMITONE[letter] + alter


def pitch_to_midi(
    tok: str,
    key_alterations: Mapping[str, int] | None = None,
    bar_alterations: Mapping[tuple[str, int], int] | None = None,
) -> int:
    """MIDI number of a pitch token: ``C,`` 48, ``C`` 60, ``c`` 72, ``c'`` 84.

    An explicit accidental wins; otherwise an accidental met earlier in the bar on the same
    letter and octave (``bar_alterations``), otherwise the key signature (``key_alterations``).
    """
    letter, alter, octave = parse_pitch(tok)
    if alter is None:
        alter = (bar_alterations or {}).get((letter, octave), (key_alterations or {}).get(letter, 0))
    return midi_number(letter, alter, octave)


# --- keys ---------------------------------------------------------------------------------------

# Number of sharps of the major key on each natural tonic; a sharp or flat on the tonic adds ±7.
_MAJOR_SHARPS = {"C": 0, "G": 1, "D": 2, "A": 3, "E": 4, "B": 5, "F": -1}
# Sharps of a mode relative to the major key on the same tonic (A dorian = A major - 2 = G major).
MODE_SHARP_SHIFT = {"maj": 0, "ion": 0, "min": -3, "aeo": -3, "m": -3, "dor": -2, "mix": -1,
                    "lyd": 1, "phr": -4, "loc": -5}
_SHARP_ORDER = "FCGDAEB"
_KEY_FIELD = re.compile(r"^\[?K:\s*([A-Ga-g])([#b]?)\s*([A-Za-z]*)")


def key_sharps(tonic: str, mode: str) -> int:
    """Sharps (negative: flats) in the signature of ``tonic`` (``"F#"``, ``"Bb"``) in ``mode``."""
    mode_key = mode.lower()[:3] or "maj"
    if mode_key not in MODE_SHARP_SHIFT:
        raise ValueError(f"unknown mode {mode!r}")
    sharps = _MAJOR_SHARPS[tonic[0].upper()] + 7 * {"": 0, "#": 1, "b": -1}[tonic[1:]]
    return sharps + MODE_SHARP_SHIFT[mode_key]


def key_alterations_from_sharps(sharps: int) -> dict[str, int]:
    """``2`` -> ``{"F": 1, "C": 1}``; ``-3`` -> ``{"B": -1, "E": -1, "A": -1}``."""
    alterations: dict[str, int] = {}
    order = _SHARP_ORDER if sharps >= 0 else _SHARP_ORDER[::-1]
    step = 1 if sharps >= 0 else -1
    for i in range(abs(sharps)):
        letter = order[i % 7]
        alterations[letter] = alterations.get(letter, 0) + step
    return alterations


def key_alterations(key_token: str) -> dict[str, int]:
    """Key signature of a key token (``K:Cmin``, ``[K:GMaj]``, ``[K:F#Min]``) as letter -> alteration.

    ``K:Cmaj`` has none, ``K:Cmin`` B♭ E♭ A♭, ``K:Cdor`` B♭ E♭, ``K:Cmix`` B♭.
    """
    m = _KEY_FIELD.match(key_token)
    if m is None:
        raise ValueError(f"not a key token: {key_token!r}")
    letter, accidental, mode = m.groups()
    return key_alterations_from_sharps(key_sharps(letter.upper() + accidental, mode))


# --- durations ----------------------------------------------------------------------------------


def parse_duration(tok: str) -> Fraction:
    """Length in units of L: ``2`` -> 2, ``/2`` -> 1/2, ``3/2`` -> 3/2, ``/`` -> 1/2, ``//`` -> 1/4."""
    if not _DURATION.match(tok):
        raise ValueError(f"not a duration token: {tok!r}")
    if "/" not in tok:
        return Fraction(int(tok))
    numerator, _, rest = tok.partition("/")
    slashes = 1 + len(rest) - len(rest.lstrip("/"))
    denominator = rest.lstrip("/")
    top = int(numerator) if numerator else 1
    if denominator:
        return Fraction(top, int(denominator) * 2 ** (slashes - 1))
    return Fraction(top, 2**slashes)


def format_duration(length: Fraction) -> str:
    """Inverse of :func:`parse_duration` in folk-rnn spelling; ``""`` for a length of 1."""
    if length <= 0:
        raise ValueError(f"duration must be positive, got {length}")
    if length == 1:
        return ""
    if length.denominator == 1:
        return str(length.numerator)
    if length.numerator == 1:
        return f"/{length.denominator}"
    return f"{length.numerator}/{length.denominator}"


def split_broken(tok: str) -> tuple[str, str]:
    """``"2>"`` -> ``("2", ">")``; ``">"`` -> ``("", ">")``."""
    m = _BROKEN.match(tok)
    if m is None:
        raise ValueError(f"not a broken-rhythm token: {tok!r}")
    return m.group(1) or "", m.group(2)


def parse_meter(tok: str) -> Fraction | None:
    """Bar length in whole notes of ``M:6/8`` / ``[M:3/4]`` (``M:C`` 1, ``M:C|`` 1); None if free."""
    body = tok.strip("[]").partition(":")[2].strip()
    if body == "C" or body == "C|":
        return Fraction(1)
    m = re.match(r"^(\d+)/(\d+)$", body)
    return Fraction(int(m.group(1)), int(m.group(2))) if m else None


def _meter_numerator(tok: str) -> int | None:
    body = tok.strip("[]").partition(":")[2].strip()
    if body in ("C", "C|"):
        return 4 if body == "C" else 2
    m = re.match(r"^(\d+)/", body)
    return int(m.group(1)) if m else None


def parse_unit(tok: str) -> Fraction | None:
    """The unit note length of ``[L:1/16]`` as a fraction of a whole note; None if unreadable."""
    m = re.match(r"^(\d+)/(\d+)$", tok.strip("[]").partition(":")[2].strip())
    return Fraction(int(m.group(1)), int(m.group(2))) if m else None


def tuplet_ratio(tok: str, meter_numerator: int | None = None) -> tuple[int, int, int]:
    """``(p:q:r`` -> (p, q, r): p notes in the time of q, for the next r notes (ABC defaults)."""
    m = _TUPLET.match(tok)
    if m is None:
        raise ValueError(f"not a tuplet token: {tok!r}")
    p = int(m.group(1))
    compound = meter_numerator is not None and meter_numerator % 3 == 0 and meter_numerator > 3
    default_q = {2: 3, 3: 2, 4: 3, 6: 2, 8: 3}.get(p, 3 if compound else 2)
    q = int(m.group(2)) if m.group(2) else default_q
    r = int(m.group(3)) if m.group(3) else p
    return p, q, r


# --- annotation ---------------------------------------------------------------------------------


def annotate_tune(tokens: list[str]) -> dict[str, np.ndarray]:
    """Per-token musical columns of one tune (see docs/ARCHITECTURE.md, "Token annotation").

    - ``token_type`` int8 code into :data:`TOKEN_TYPES`;
    - ``bar``: bar index; a bar line (or a run of adjacent bar/repeat tokens such as ``:| |:``)
      belongs to the bar it closes, so tokens before the first bar line are bar 0;
    - ``position_in_bar``: body tokens since the last bar/repeat token (0 for the first token
      after it; special and meta tokens are 0 and are not counted);
    - ``metric_position``: onset in units of L from the start of the bar. Notes take their
      sounding length: broken rhythm (``A > B``: A ×3/2, B ×1/2) and tuplets (``(3``: three in
      the time of two) apply; a chord lasts as long as its first note. Duration tokens and ``]``
      carry the onset of their note/chord, bar lines the time at which they stand, other tokens
      the time of the next onset. An incomplete first bar (anacrusis) is aligned to end on the
      bar line when the meter is known;
    - ``pitch``: MIDI number with key signature and bar accidentals applied, −1 for non-pitches;
    - ``duration``: sounding length in units of L for pitch and rest tokens, 0 otherwise.
    """
    n = len(tokens)
    kinds = [token_type(tok) for tok in tokens]
    columns = {
        "token_type": np.array([TOKEN_TYPE_CODES[k] for k in kinds], dtype=np.int8),
        "bar": np.zeros(n, dtype=np.int32),
        "position_in_bar": np.zeros(n, dtype=np.int32),
        "metric_position": np.zeros(n, dtype=np.float32),
        "pitch": np.full(n, -1, dtype=np.int16),
        "duration": np.zeros(n, dtype=np.float32),
    }
    onset = [Fraction(0)] * n  # exact metric positions; converted to float32 at the end
    length = [Fraction(0)] * n

    key_alter: dict[str, int] = {}
    bar_alter: dict[tuple[str, int], int] = {}
    meter: Fraction | None = None
    meter_numerator: int | None = None
    unit = Fraction(1, 8)

    bar_index, position, cursor = 0, 0, Fraction(0)
    after_bar_line = False  # a bar line was the last body token: the next body token opens a bar
    first_bar_line_at: int | None = None

    # The current event (note, rest or chord): its onset, written length, rhythm factor and notes.
    event_start = Fraction(0)
    event_written = Fraction(1)
    event_factor = Fraction(1)
    event_notes: list[tuple[int, Fraction]] = []  # (token index, written length of that note)
    in_chord = False
    tuplet_left, tuplet_factor = 0, Fraction(1)
    broken_next = Fraction(1)  # factor the next event takes from a broken-rhythm marker

    def settle_event() -> None:
        """Recompute the current event's note lengths and the cursor after a change."""
        nonlocal cursor
        for idx, written in event_notes:
            length[idx] = written * event_factor
        cursor = event_start + event_written * event_factor

    def open_event() -> None:
        nonlocal event_start, event_written, event_factor, event_notes, tuplet_left, broken_next
        event_start, event_written, event_notes = cursor, Fraction(1), []
        event_factor = broken_next
        broken_next = Fraction(1)
        if tuplet_left > 0:
            event_factor *= tuplet_factor
            tuplet_left -= 1

    for i, (tok, kind) in enumerate(zip(tokens, kinds)):
        if kind in ("special", "meta"):
            columns["bar"][i] = bar_index
            if kind == "meta":
                field = tok.strip("[")[:1]
                if field == "K":
                    try:
                        key_alter = key_alterations(tok)
                    except ValueError:
                        key_alter = {}
                elif field == "M":
                    meter = parse_meter(tok)
                    meter_numerator = _meter_numerator(tok)
                elif field == "L":
                    unit = parse_unit(tok) or unit
            continue

        if kind in ("bar", "repeat"):
            columns["bar"][i] = bar_index
            columns["position_in_bar"][i] = position
            onset[i] = cursor
            if first_bar_line_at is None:
                first_bar_line_at = i
            position, after_bar_line, in_chord = 0, True, False
            bar_alter.clear()
            continue

        if after_bar_line:
            bar_index, cursor, after_bar_line = bar_index + 1, Fraction(0), False
        columns["bar"][i] = bar_index
        columns["position_in_bar"][i] = position
        position += 1
        previous_kind = kinds[i - 1] if i > 0 else None

        if kind == "pitch":
            letter, alter, octave = parse_pitch(tok)
            if alter is None:
                alter = bar_alter.get((letter, octave), key_alter.get(letter, 0))
            else:
                bar_alter[(letter, octave)] = alter
            columns["pitch"][i] = midi_number(letter, alter, octave)
        if kind in ("pitch", "rest"):
            if not in_chord:
                open_event()
            event_notes.append((i, Fraction(1)))
            onset[i] = event_start
            settle_event()
        elif kind == "duration" or (kind == "broken" and split_broken(tok)[0]):
            written = parse_duration(tok if kind == "duration" else split_broken(tok)[0])
            onset[i] = event_start
            if previous_kind in ("pitch", "rest") and event_notes and event_notes[-1][0] == i - 1:
                event_notes[-1] = (i - 1, written)
                if not in_chord and len(event_notes) == 1:
                    event_written = written
            elif previous_kind == "chord" and tokens[i - 1] == "]":
                # A length after the chord multiplies the lengths inside it.
                event_notes = [(idx, w * written) for idx, w in event_notes]
                event_written *= written
            else:
                onset[i] = cursor  # a stray duration: nothing to lengthen
            if not in_chord:
                settle_event()
        if kind == "broken":
            left, right = BROKEN_FACTORS[split_broken(tok)[1]]
            if event_notes and not in_chord:
                event_factor *= left
                settle_event()
            broken_next = right
            onset[i] = cursor
        elif kind == "tuplet":
            p, q, r = tuplet_ratio(tok, meter_numerator)
            tuplet_left, tuplet_factor = r, Fraction(q, p)
            onset[i] = cursor
        elif kind == "chord":
            if tok == "[":
                open_event()
                in_chord = True
                onset[i] = event_start
            else:
                in_chord = False
                # A chord lasts as long as its first note.
                event_written = event_notes[0][1] if event_notes else Fraction(1)
                settle_event()
                onset[i] = event_start
        elif kind == "other":
            onset[i] = cursor

    # An incomplete first bar is an anacrusis: it ends on the first bar line.
    if meter is not None and first_bar_line_at is not None:
        bar_units = meter / unit
        pickup = onset[first_bar_line_at]
        if 0 < pickup < bar_units:
            shift = bar_units - pickup
            for i in range(n):
                if columns["bar"][i] == 0 and kinds[i] not in ("special", "meta"):
                    onset[i] += shift

    columns["metric_position"][:] = [float(x) for x in onset]
    columns["duration"][:] = [float(x) for x in length]
    return columns
