"""ABC tunes from music21's installed corpus -> folk-rnn v2 tokens, transposed to C.

One tune becomes ``M:6/8 K:Cmin |: G 2 c ...``: the meter, the mode on C, then the body with
pitches spelled ABC-style against the C-mode key signature, durations in units of L = 1/8,
bar/repeat marks, tuplets and broken rhythms. Titles, lyrics, chord symbols, decorations, slurs,
ties and grace notes are dropped. music21's ABC tokenizer splits the text; music21's pitch and
interval arithmetic transposes and spells. A tune that cannot be converted is returned with the
reason, never raised.
"""

from __future__ import annotations

import logging
import re
from fractions import Fraction
from pathlib import Path
from typing import Iterator

from music21 import abcFormat

from musinterp.corpus.abc_fields import (
    SUPPORTED_MODES,
    TARGET_SIGNATURES,
    SkipTune,
    duration_token,
    parse_key_field,
    parse_meter_field,
    parse_unit_field,
    source_signature,
    transpose_to_c,
)
from musinterp.corpus.store import TuneRecord
from musinterp.corpus.tokens import ACCIDENTAL_ALTER, parse_duration

log = logging.getLogger(__name__)

COLLECTIONS = ("oneills1850", "ryansMammoth", "airdsAirs", "essenFolksong", "miscFolk")
TARGET_UNIT = Fraction(1, 8)  # folk-rnn writes every duration as a multiple of an eighth note
ALTER_MARK = {2: "^^", 1: "^", 0: "=", -1: "_", -2: "__"}

_FIELD_LINE = re.compile(r"^\s*([A-Za-z+]):")
_NOTE = re.compile(r"(\^\^|\^|__|_|=)?([A-Ga-gz])([,']*)(\d*/*\d*)")
_CHORD_SYMBOLS = re.compile(r'"[^"]*"')
_INLINE_FIELD = re.compile(r"^\[([A-Za-z]):([^\]]*)\]$")
_TUPLET = re.compile(r"^\((\d+)(?::(\d*))?(?::(\d*))?$")


# --- files and tunes ----------------------------------------------------------------------------


def corpus_root() -> Path:
    """music21's installed corpus directory."""
    from music21 import corpus

    return Path(corpus.__file__).resolve().parent


def collection_files(collection: str) -> list[Path]:
    """The ABC files of one collection in music21's corpus, sorted."""
    from music21 import corpus

    root = corpus_root()
    files = sorted(
        Path(p) for p in corpus.getCorePaths(fileExtensions=("abc",))
        if Path(p).resolve().relative_to(root).parts[0] == collection
    )
    if not files:
        raise ValueError(f"music21 corpus has no ABC collection {collection!r} under {root}")
    return files


def split_abc_file(text: str) -> list[tuple[str, str]]:
    """Cut a file into ``(X number, tune text)``; a tune runs from its ``X:`` line to a blank line.

    Field lines of the file header (before the first ``X:``) are prepended to every tune.
    """
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"^X:", line)]
    if not starts:
        return [("1", text)] if text.strip() else []
    header = [line for line in lines[: starts[0]] if _FIELD_LINE.match(line)]
    tunes = []
    for start in starts:
        end = start + 1
        while end < len(lines) and lines[end].strip() and not re.match(r"^X:", lines[end]):
            end += 1
        number = lines[start][2:].split("%")[0].strip() or str(len(tunes) + 1)
        tunes.append((number, "\n".join(header + lines[start:end]) + "\n"))
    return tunes


def _prepare_music_lines(text: str) -> str:
    """Work around two quirks of music21's ABC tokenizer on music lines.

    It drops a note written with the fermata decoration (``HG2``), and reads ``B::`` as a
    metadata field; ``::`` is the same as ``:||:``.
    """
    out = []
    for line in text.splitlines():
        if not _FIELD_LINE.match(line) and not line.lstrip().startswith("%"):
            line = re.sub(r"H(?=[~.^=_A-Ga-gz])", "", line).replace("::", ":||:")
        out.append(line)
    return "\n".join(out) + "\n"


# --- the converter ------------------------------------------------------------------------------


class _TuneConverter:
    """Walks music21's ABC tokens of one tune and emits folk-rnn tokens."""

    def __init__(self) -> None:
        self.meter: str | None = None
        self.unit: Fraction | None = None
        self.tonic: str | None = None
        self.mode: str | None = None
        self.voices: set[str] = set()
        self.body: list[str] = []
        self.notes_seen = 0
        self.in_grace = False
        self.bar_cluster: list[str] = []
        self.source_bar_accidentals: dict[tuple[str, int], int] = {}
        self.target_bar_accidentals: dict[tuple[str, int], int] = {}

    # fields ----------------------------------------------------------------------------------

    def field(self, tag: str, data: str) -> None:
        if tag == "M":
            meter = parse_meter_field(data)
            if self.notes_seen and meter != self.meter:
                raise SkipTune("meter change mid-tune")
            self.meter = meter
        elif tag == "L":
            self.unit = parse_unit_field(data)
        elif tag == "K":
            tonic, mode = parse_key_field(data)
            if self.notes_seen and (tonic, mode) != (self.tonic, self.mode):
                raise SkipTune("key change mid-tune")
            self.set_key(tonic, mode)
        elif tag == "V":
            self.voices.add(data.split()[0] if data.split() else "")
            if len(self.voices) > 1:
                raise SkipTune("multiple voices (V:) not supported")

    def set_key(self, tonic: str, mode: str) -> None:
        self.tonic, self.mode = tonic, mode
        self.source_signature = source_signature(tonic, mode)
        self.target_signature = TARGET_SIGNATURES[SUPPORTED_MODES[mode]]

    def start_body(self) -> None:
        """Called at the first musical token: fill in ABC's defaults for missing fields."""
        if self.tonic is None:
            self.set_key("C", "major")  # a tune without K: is in C major
        if self.meter is None:
            raise SkipTune("no meter (M:) field")
        if self.unit is None:
            # ABC default: 1/16 for meters below 3/4, else 1/8.
            n, d = (int(x) for x in self.meter.split("/"))
            self.unit = Fraction(1, 16) if Fraction(n, d) < Fraction(3, 4) else Fraction(1, 8)

    # notes -----------------------------------------------------------------------------------

    def note_tokens(self, accidental: str | None, letter: str, marks: str, length: str,
                    multiplier: Fraction = Fraction(1)) -> list[str]:
        """Tokens of one ABC note (or rest): pitch with the accidental it needs, then duration."""
        duration = duration_token(length, multiplier * self.unit / TARGET_UNIT)
        if letter == "z":
            return ["z"] + ([duration] if duration else [])
        step = letter.upper()
        octave = (5 if letter.islower() else 4) + marks.count("'") - marks.count(",")
        if accidental:
            alter = ACCIDENTAL_ALTER[accidental]
            self.source_bar_accidentals[(step, octave)] = alter
        else:
            alter = self.source_bar_accidentals.get((step, octave), self.source_signature.get(step, 0))
        step, alter, octave = transpose_to_c(self.tonic, step, alter, octave)
        expected = self.target_bar_accidentals.get((step, octave), self.target_signature.get(step, 0))
        mark = ""
        if alter != expected:
            mark = ALTER_MARK[alter]
            self.target_bar_accidentals[(step, octave)] = alter
        name = step.lower() + "'" * (octave - 5) if octave >= 5 else step + "," * (4 - octave)
        self.notes_seen += 1
        return [mark + name] + ([duration] if duration else [])

    def note(self, src: str) -> None:
        m = _NOTE.search(_CHORD_SYMBOLS.sub("", src))
        if m is None:
            return  # a decoration-only token, e.g. a lone "~"
        self.body.extend(self.note_tokens(*m.groups()))

    def chord(self, src: str) -> None:
        m = re.match(r"^\[([^\]]*)\]([\d/]*)$", _CHORD_SYMBOLS.sub("", src).strip())
        if m is None:
            raise SkipTune(f"unreadable chord {src!r}")
        outer = parse_duration(m.group(2)) if m.group(2) else Fraction(1)
        notes = [g for g in _NOTE.findall(m.group(1)) if g[1] != "z"]
        if not notes:
            return
        if len(notes) == 1:
            self.body.extend(self.note_tokens(*notes[0], multiplier=outer))
            return
        self.body.append("[")
        for groups in notes:
            self.body.extend(self.note_tokens(*groups, multiplier=outer))
        self.body.append("]")

    # bars ------------------------------------------------------------------------------------

    def bar(self, src: str) -> None:
        # Accidentals last to the bar line, in the source and in the output.
        self.bar_cluster.append(src.strip())
        self.source_bar_accidentals.clear()
        self.target_bar_accidentals.clear()

    def flush_bars(self) -> None:
        """Turn a run of adjacent bar tokens (``:|`` ``[2``, ``:|`` ``|:``) into folk-rnn bar tokens."""
        if not self.bar_cluster:
            return
        marks = "".join(self.bar_cluster)
        self.bar_cluster = []
        ending = re.search(r"\d", marks)
        tokens = []
        if marks.startswith(":") or ":|" in marks:
            tokens.append(":|")
        if marks.endswith(":") or "|:" in marks:
            tokens.append("|:")
        if ending:
            tokens.append("|" + ending.group())
        self.body.extend(tokens or ["|"])

    # rhythm ----------------------------------------------------------------------------------

    def tuplet(self, src: str, meter: str) -> None:
        m = _TUPLET.match(src.strip())
        p = int(m.group(1)) if m else 0
        if not 2 <= p <= 9:
            raise SkipTune(f"unsupported tuplet {src.strip()!r}")
        numerator = int(meter.split("/")[0])
        compound = numerator % 3 == 0 and numerator > 3
        default_q = {2: 3, 3: 2, 4: 3, 6: 2, 8: 3}.get(p, 3 if compound else 2)
        q = int(m.group(2)) if m.group(2) else default_q
        r = int(m.group(3)) if m.group(3) else p
        if (q, r) != (default_q, p):
            raise SkipTune(f"unsupported tuplet {src.strip()!r}")
        self.body.append(f"({p}")

    def broken(self, src: str) -> None:
        marker = src.strip()
        if marker not in (">", "<", ">>", "<<", ">>>", "<<<"):
            raise SkipTune(f"unsupported broken rhythm {marker!r}")
        # folk-rnn fuses a note's duration with the marker after it: "A 2>" not "A 2 >".
        if len(self.body) >= 2 and re.match(r"^(\d+|\d*/\d+)$", self.body[-1]):
            self.body[-1] += marker
        else:
            self.body.append(marker)

    # the walk --------------------------------------------------------------------------------

    def convert(self, abc_text: str) -> list[str]:
        handler = abcFormat.ABCHandler()
        try:
            handler.tokenize(_prepare_music_lines(abc_text))
        except Exception as err:  # music21 raises many kinds on malformed ABC
            raise SkipTune(f"ABC parse error: {type(err).__name__}: {err}") from None

        started = False
        for token in handler.tokens:
            if isinstance(token, abcFormat.ABCMetadata):
                token.preParse()
                self.field(token.tag, token.data)
                continue
            if isinstance(token, abcFormat.ABCChord):
                inline = _INLINE_FIELD.match(_CHORD_SYMBOLS.sub("", token.src).strip())
                if inline:
                    self.field(inline.group(1), inline.group(2).split("%")[0].strip())
                    continue
            if isinstance(token, abcFormat.ABCGraceStart):
                self.in_grace = True
                continue
            if isinstance(token, abcFormat.ABCGraceStop):
                self.in_grace = False
                continue
            musical = isinstance(token, (abcFormat.ABCNote, abcFormat.ABCBar, abcFormat.ABCTuplet,
                                         abcFormat.ABCBrokenRhythmMarker))
            if not musical or self.in_grace:
                continue  # ties, slurs, decorations, grace notes
            if not started:
                self.start_body()
                started = True
            if isinstance(token, abcFormat.ABCBar):
                self.bar(token.src)
                continue
            self.flush_bars()
            if isinstance(token, abcFormat.ABCChord):
                self.chord(token.src)
            elif isinstance(token, abcFormat.ABCNote):
                self.note(token.src)
            elif isinstance(token, abcFormat.ABCTuplet):
                self.tuplet(token.src, self.meter)
            elif isinstance(token, abcFormat.ABCBrokenRhythmMarker):
                self.broken(token.src)
        self.flush_bars()

        if not self.notes_seen:
            raise SkipTune("no notes")
        return [f"M:{self.meter}", f"K:C{SUPPORTED_MODES[self.mode]}"] + self.body


def convert_abc_tune(abc_text: str) -> list[str]:
    """Tokens of one ABC tune (text from ``X:`` on); raises :class:`SkipTune` with the reason."""
    return _TuneConverter().convert(abc_text)


def convert_abc_file(path: str | Path, id_prefix: str, source: str | None = None) -> list[TuneRecord]:
    """One :class:`TuneRecord` per tune in an ABC file; ids are ``<id_prefix>#<X number>``."""
    path = Path(path)
    source = source or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return [TuneRecord(f"{id_prefix}#?", source, None, f"unreadable file: {err}")]
    records = []
    seen: dict[str, int] = {}
    for number, tune_text in split_abc_file(text):
        seen[number] = seen.get(number, 0) + 1
        tune_id = f"{id_prefix}#{number}" + (f"-{seen[number]}" if seen[number] > 1 else "")
        try:
            records.append(TuneRecord(tune_id, source, convert_abc_tune(tune_text)))
        except SkipTune as skip:
            records.append(TuneRecord(tune_id, source, None, str(skip)))
        except Exception as err:  # a bug or an ABC oddity in one tune must not stop the corpus
            log.debug("tune %s failed", tune_id, exc_info=True)
            records.append(TuneRecord(tune_id, source, None, f"conversion error: {type(err).__name__}: {err}"))
    return records


def convert_collection(collection: str, max_tunes: int | None = None, progress=None) -> Iterator[TuneRecord]:
    """Yield a record per tune of one collection of music21's corpus (at most ``max_tunes``).

    ``progress`` (optional) is called with each file's path after it is converted.
    """
    root = corpus_root()
    n = 0
    for path in collection_files(collection):
        relative = path.resolve().relative_to(root)
        for record in convert_abc_file(path, relative.as_posix(), source=f"music21/corpus/{relative.as_posix()}"):
            if max_tunes is not None and n >= max_tunes:
                return
            n += 1
            yield record
        if progress is not None:
            progress(path)
