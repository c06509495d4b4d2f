"""The Rolling Stone 200 rock corpus (de Clercq & Temperley, v2.1, CC BY 4.0) as songs of chord tokens.

Source: the harmonic analyses ``rs200_harmony/*.har`` of the public repository danigb/rock-corpus at
commit :data:`musinterp.corpus.rs200_blobs.COMMIT`, downloaded file by file and verified by git blob
id (:mod:`musinterp.corpus.rs200_blobs`). 200 songs, each analysed by two annotators (``_dt``,
``_tdc``). Credit: Trevor de Clercq and David Temperley, "A corpus analysis of rock harmony",
Popular Music 30/1 (2011).

**What is read.** The ``.har`` files, with a parser written here (not the expanded
``harmony_exp/*.txt``, which has lost the section names, nor music21's ``clercqTemperley``, which
keeps section names only as lyrics and reads the chord symbols with music21's own figure rules).
The parser's bar expansion is checked against the authors' expanded files in the tests: every bar,
chord slot and key agrees, in all 399 files it reads (of 400; one has an unknown symbol).

The notation: one rule per line, ``Name: content  % comment``; ``S:`` is the song. Content is bars
ended by ``|``; a bar holds equal chord slots (a Roman numeral, ``R`` = rest / no chord, ``.`` =
the previous chord continues); an empty bar continues the previous chord; ``|*N`` plays the bar
before it N times; ``$Name*N`` plays rule Name N times; ``[G]`` sets the key (tonic; all numerals
are read against its major scale, minor-mode songs write ``i bIII bVI bVII``), ``[4/4]``, ``[12/8]``,
``[0]`` (free time) set the meter. A key or meter set inside a rule holds to the end of that rule
(the authors' expansion restores the outer key afterwards).

**Sections.** A section is a rule that the song line ``S`` plays (``$Vr``, ``$Ch*2``: each
repetition is one occurrence). Rules named like ``Zz``, ``Zz2``, ``Z1`` only group sections (the
``_tdc`` annotator writes ``S: $In $Zz*2 ...`` with ``Zz: $Vr $Ch``), so they are looked through and
their parts are the sections. Chords written in the song line itself (or in a grouping rule) form
an unnamed section (label ``(S)``, occurrence −1) per uninterrupted run. Per token:

| column | meaning |
|---|---|
| ``section`` | index of the section occurrence in the song's form (0, 1, …) |
| ``section_label`` | code of the rule name as written, into :data:`SECTION_LABELS` (0 = ``(S)``) |
| ``section_occurrence`` | 0 the first time that name plays in the song, 1 the next, …; −1 unnamed |
| ``section_kind`` | code into :data:`SECTION_KINDS` (the ``popgen`` labels + ``other``), from the name (:func:`section_kind`) |
| ``key`` | tonic pitch class (C = 0) of the key in force at the chord (modulations change it) |
| ``degree`` | the chord root relative to that key, 0..11 (as in ``popgen``) |
| ``bar`` | index of the bar the chord starts in (all bars, rests included) |

**Tokens** (format ``chords``, :mod:`musinterp.corpus.formats.chords`): ``<root>:<quality>`` spelled
as if the song were in C (``keys: c``; ``keys: original`` spells them in the key in force).
``unit: change`` (default): one token per chord change: a chord that repeats (``.``, empty bars,
``|*N``, or the same chord written again, also across bar lines and section boundaries) is one
token; rests are silent (no token, and the chords before and after a rest collapse when equal); a
modulation starts a new token even when the relative chord stays (``C:maj`` in G, then ``C:maj`` in
E). A token belongs to the section where its chord starts, so an occurrence whose first chord
continues from the section before begins at its first change (``$A*22`` with ``A: I | |`` is one
token). ``restart_sections: true`` instead starts every section occurrence with a token (the chord
sounding then), so all occurrences of a section have the same tokens, at the price of repeated
tokens at boundaries. Bar slots are not kept as tokens because a slot is not a unit of time (a bar
of one chord is one slot, a bar of four is four) and held chords would turn most of a song into
copies of the previous token, which hides the repeats of progressions that in-context learning is
about; ``unit: slot`` keeps one token per written slot for those who want it, and the ``bar``
column tells bars apart in either unit.

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
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path

from musinterp.corpus.formats.chords import QUALITIES, ROOT_NAMES, chord_token, pcset_token
from musinterp.corpus.rs200_blobs import BLOBS, COMMIT, FOLDERS, REPOSITORY
from musinterp.corpus.store import TuneRecord

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = f"https://raw.githubusercontent.com/{REPOSITORY}/{COMMIT}"
ANNOTATORS = ("dt", "tdc")
# layout -> kind -> folder under base_url: "repo" as in the repository, "mirror" as in data/rs200/
LAYOUTS = {"repo": dict(FOLDERS), "mirror": {"harmony": "harmony", "harmony_exp": "harmony_exp"}}
TOKEN_FORMATS = {"chords": chord_token, "chords-pcset": pcset_token}
COLUMNS = ("section", "section_label", "section_occurrence", "section_kind", "key", "degree", "bar")

# Codes of section_kind: the popgen section labels first, in their order, then "other".
SECTION_KINDS = ("intro", "verse", "pre-chorus", "chorus", "bridge", "outro", "other")
_KIND_RULES = (  # (pattern on the rule name, kind); the first match wins; no match: other
    (r"(In|Intro|IP)\d*", "intro"),
    (r"(Pc|Pch|Pre|Prec|PrP)\d*", "pre-chorus"),
    (r"(Vr|V|VP|Vinst|Vfinal|Vend|Vrend|Vrsolo)[0-9A-Za-z]*", "verse"),
    (r"(Ch|CP|Rf|Ref|Re)[0-9A-Za-z]*", "chorus"),
    (r"(Br|BBr|BrP|Md)\d*", "bridge"),
    (r"(Ou|Out|Fadeout|Co|Coda|Tg|Ext|Ex)\d*", "outro"),
)
# Rules that only group sections (looked through when finding the sections of the song line).
GROUPING_RULE = re.compile(r"Zz?\d*")

# Every section name the pinned files play (151; both annotators; sections found as described
# above), sorted; code = index. 0 is the unnamed section: chords written in the song line or in a grouping rule.
SECTION_LABELS = (
    "(S)",
    "A", "B", "B2", "BP", "BP2", "BP3", "Bk", "Bk2", "Bk3", "Bl", "Bld1", "Bld2", "Bld3", "Bo", "Br", "Br1",
    "Br2", "Br3", "Br4", "Br5", "BrP", "Break", "Brk", "C", "CP", "Cad1", "Cad2", "Cad3", "Ch", "Ch1", "Ch1a",
    "Ch1b", "Ch2", "Ch2b", "Ch3", "Ch3a", "Ch4", "Ch5", "ChX", "Chb", "Chend1", "Chend2", "Chend3", "Chext",
    "Chf", "Co", "Coda", "D", "D1", "D2", "D3", "Dr", "E", "Ex", "Ext", "F", "Fadeout", "Go", "IP", "In", "In1",
    "In2", "Inst", "Inst1", "Inst2", "Instr", "Intro", "Li", "Link", "Ln", "Ln1", "Ln2", "Ln3", "Ln4", "Md",
    "Ou", "Ou1", "Ou2", "P1", "P2", "P3", "Part1", "Part2", "PartI", "PartII", "Pc", "Pc1", "Pc2", "Pc3", "Pch",
    "Pre", "Prec", "Pt1", "Pt2", "Pt3", "Pt4", "Pt4a", "Rap", "Re", "Re2", "Rf", "Rf1", "Rf2", "Rf3", "Rfb",
    "So", "So1", "So2", "Solo", "St", "Ta", "Ta1", "Ta2", "Tg", "Tg1", "Tg2", "Tr", "Tr1", "Tr2", "V1", "V2",
    "V3", "VP", "VP2", "Vend1", "Vend2", "Vend3", "Vfinal", "Vinst", "Vr", "Vr1", "Vr11", "Vr1a", "Vr2", "Vr21",
    "Vr3", "Vr31", "Vr4", "Vr41", "Vr5", "Vr6", "VrB", "Vra", "Vrb1", "Vrb2", "Vrb3", "Vrend1", "Vrend2", "Vrf",
    "Vrsolo", "X"
)
_LABEL_CODE = {name: i for i, name in enumerate(SECTION_LABELS)}

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
_ATOM = re.compile(r"\|\*(?P<bar_reps>\d+)|(?P<bar>\|)|\$(?P<ref>[A-Za-z0-9_]+)(?:\*(?P<ref_reps>\d+))?"
                   r"|\[(?P<bracket>[^\]\s]*)\]|(?P<slot>[^\s|\[\]$]+)|(?P<space>\s+)|(?P<bad>.)")
_MAX_DEPTH = 20


class RS200Error(ValueError):
    """A song cannot be read; the message is the manifest's reason."""


# ------------------------------------------------------------------ chord symbols

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


def section_kind(name: str) -> str:
    """The :data:`SECTION_KINDS` entry of a section name (``Vr2`` → verse, ``Fadeout`` → outro)."""
    for pattern, kind in _KIND_RULES:
        if re.fullmatch(pattern, name):
            return kind
    return "other"


# ------------------------------------------------------------------ the .har files

@dataclass
class Slot:
    """One chord slot of the expanded song."""

    symbol: str  # chord symbol as written (held slots repeat the chord they continue), or "R"
    key: int | None  # tonic pitch class in force
    bar: int
    section: int  # index into Song.sections
    held: bool  # written "." or an empty bar / continued


@dataclass
class SectionPlay:
    name: str  # "(S)" for the unnamed run
    occurrence: int  # -1 for unnamed
    first_slot: int
    n_slots: int = 0


@dataclass
class Song:
    title: str
    slots: list[Slot]
    sections: list[SectionPlay]
    bars: list[list[int]]  # slot indices of each bar

    def bar_chords(self) -> list[list[tuple[int | None, str]]]:
        """Per bar, the (key, chord symbol or R) of each slot, held chords resolved."""
        return [[(self.slots[i].key, self.slots[i].symbol) for i in bar] for bar in self.bars]


def read_rules(text: str) -> tuple[str, dict[str, str]]:
    """``(title, {rule name: content})`` of a ``.har`` text; comments removed."""
    title, rules = "", {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not title and line.strip().startswith("%"):
            title = line.strip().lstrip("%").strip()
        line = line.split("%", 1)[0].strip()
        if not line:
            continue
        name, sep, content = line.partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_]+", name.strip()):
            raise RS200Error(f"line {number}: not a rule 'Name: content'")
        rules[name.strip()] = content
    if "S" not in rules:
        raise RS200Error("no song line 'S:'")
    return title, rules


class _Expander:
    def __init__(self, rules: dict[str, str]):
        self.rules = rules
        self.slots: list[Slot] = []
        self.sections: list[SectionPlay] = []
        self.bars: list[list[int]] = []
        self.key: int | None = None
        self.key_at_bar_start: int | None = None
        self.section: int | None = None  # current section index
        self.unnamed_open = False
        self.occurrences: Counter = Counter()
        self.open_bar: list[str] = []  # slot atoms (and key changes as ("key", pc)) of the bar being written

    def _start_section(self, name: str) -> None:
        occurrence = -1 if name == "(S)" else self.occurrences[name]
        if name != "(S)":
            self.occurrences[name] += 1
        self.sections.append(SectionPlay(name, occurrence, len(self.slots)))
        self.section = len(self.sections) - 1

    def _close_bar(self, reps: int = 1) -> None:
        atoms, self.open_bar = self.open_bar, []
        for _ in range(reps):
            self._write_bar(atoms)

    def _write_bar(self, atoms: list) -> None:
        bar: list[int] = []
        key = self.key_at_bar_start
        if not any(not isinstance(a, tuple) for a in atoms):  # empty bar: the chord continues
            atoms = list(atoms) + ["."]
        for atom in atoms:
            if isinstance(atom, tuple):
                key = atom[1]
                continue
            held = atom == "."
            if held:
                if not self.slots:
                    raise RS200Error("a bar continues a chord before the first chord")
                symbol = self.slots[-1].symbol
            else:
                symbol = atom
            if symbol != "R":
                if key is None:
                    raise RS200Error(f"chord {symbol!r} before any key")
                parse_chord(symbol)
            self.slots.append(Slot(symbol, key, len(self.bars), self.section, held))
            self.sections[self.section].n_slots += 1
            bar.append(len(self.slots) - 1)
        self.bars.append(bar)

    def expand(self, name: str, depth: int, top: bool) -> None:
        if depth > _MAX_DEPTH:
            raise RS200Error(f"rule {name!r} nests deeper than {_MAX_DEPTH} (a cycle?)")
        if name not in self.rules:
            raise RS200Error(f"undefined rule ${name}")
        saved_key = self.key
        for m in _ATOM.finditer(self.rules[name]):
            kind = m.lastgroup
            if kind == "space":
                continue
            if kind == "bad":
                raise RS200Error(f"rule {name}: cannot read {m.group()!r}")
            if top and kind in ("slot", "bar", "bar_reps") and not self.unnamed_open:
                # chords written in the song line (or a grouping rule): an unnamed section
                self._start_section("(S)")
                self.unnamed_open = True
            if kind == "slot":
                if not self.open_bar:
                    self.key_at_bar_start = self.key
                self.open_bar.append(m["slot"])
            elif kind == "bracket":
                content = m["bracket"]
                if re.fullmatch(r"\d+/\d+|0", content):
                    continue  # meter: durations are not kept
                pc = key_pc(content)
                self.key = pc
                if self.open_bar:
                    self.open_bar.append(("key", pc))
            elif kind in ("bar", "bar_reps"):
                if not self.open_bar:
                    self.key_at_bar_start = self.key
                self._close_bar(int(m["bar_reps"]) if kind == "bar_reps" else 1)
            else:  # a rule reference
                if self.open_bar:
                    self._close_bar()
                ref, reps = m["ref"], int(m["ref_reps"] or 1)
                for _ in range(reps):
                    if top and GROUPING_RULE.fullmatch(ref):
                        self.expand(ref, depth + 1, top=True)
                    elif top:
                        self.unnamed_open = False
                        self._start_section(ref)
                        self.expand(ref, depth + 1, top=False)
                    else:
                        self.expand(ref, depth + 1, top=False)
                if top:
                    self.unnamed_open = False
        if self.open_bar:  # content after the last bar line
            self._close_bar()
        self.key = saved_key


def parse_har(text: str) -> Song:
    """Expand a ``.har`` analysis into chord slots, bars and section occurrences."""
    title, rules = read_rules(text)
    expander = _Expander(rules)
    expander.expand("S", 0, top=True)
    if not any(s.symbol != "R" for s in expander.slots):
        raise RS200Error("no chord")
    return Song(title, expander.slots, expander.sections, expander.bars)


def read_expanded(text: str) -> list[list[tuple[int | None, str]]]:
    """Per bar, the (key, chord symbol or R) of each slot of an expanded ``harmony_exp/*.txt`` line
    (``.`` and empty bars resolved to the chord they continue); warning lines are ignored."""
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("Warning")]
    if len(lines) != 1:
        raise RS200Error(f"expected one line of bars, got {len(lines)}")
    bars, bar, key, last = [], [], None, None
    for atom in lines[0].split():
        if atom == "|":
            if not bar:
                bar = [(key, last)]
            bars.append(bar)
            bar = []
        elif atom.startswith("["):
            if not re.fullmatch(r"\[(\d+/\d+|0)\]", atom):
                key = key_pc(atom[1:-1])
        else:
            last = last if atom == "." else atom
            bar.append((key, last))
    if bar:
        bars.append(bar)
    return bars


# ------------------------------------------------------------------ songs -> tokens

@dataclass
class RS200Config:
    """The ``rs200:`` keys of a ``source: rs200`` corpus (the schema's defaults equal these)."""

    annotator: str = "dt"  # dt | tdc | both
    base_url: str = DEFAULT_BASE_URL
    layout: str = "repo"  # repo | mirror
    unit: str = "change"  # change | slot
    keys: str = "c"  # c | original
    tokens: str = "chords"  # chords | chords-pcset
    restart_sections: bool = False  # unit change: every section occurrence starts with a token

    @classmethod
    def from_spec(cls, spec: dict | None, where: str = "rs200") -> RS200Config:
        spec = dict(spec or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(f"{where}: unknown rs200 keys {unknown} (known: {', '.join(sorted(known))})")
        config = cls(**spec)
        if not isinstance(config.restart_sections, bool):
            raise ValueError(f"{where}: rs200.restart_sections must be true or false, got {config.restart_sections!r}")
        for name, allowed in (("annotator", (*ANNOTATORS, "both")), ("layout", tuple(LAYOUTS)),
                              ("unit", ("change", "slot")), ("keys", ("c", "original")), ("tokens", tuple(TOKEN_FORMATS))):
            if getattr(config, name) not in allowed:
                raise ValueError(f"{where}: rs200.{name} must be one of {', '.join(allowed)}, got {getattr(config, name)!r}")
        return config


@dataclass
class SongTokens:
    tokens: list[str]
    columns: dict[str, list[int]]
    song: Song
    sections: list[dict] = field(default_factory=list)


def song_tokens(song: Song, unit: str = "change", keys: str = "c", tokens: str = "chords",
                restart_sections: bool = False) -> SongTokens:
    """Tokens and :data:`COLUMNS` of an expanded song (see the module docstring for the rules)."""
    spell = TOKEN_FORMATS[tokens]
    out: list[str] = []
    columns: dict[str, list[int]] = {name: [] for name in COLUMNS}
    last = None  # (root, quality, key) of the last token
    section_of_last = None
    starts: dict[int, int] = {}
    for slot in song.slots:
        if slot.symbol == "R":
            continue
        root, quality = parse_chord(slot.symbol)
        chord = (root, quality, slot.key)
        new_section = restart_sections and slot.section != section_of_last
        if unit == "change" and chord == last and not new_section:
            continue
        play = song.sections[slot.section]
        starts.setdefault(slot.section, len(out))
        out.append(spell(root + (slot.key if keys == "original" else 0), quality))
        for name, value in (("section", slot.section), ("section_label", _LABEL_CODE[play.name]),
                            ("section_occurrence", play.occurrence),
                            ("section_kind", SECTION_KINDS.index(section_kind(play.name)) if play.name != "(S)"
                             else SECTION_KINDS.index("other")),
                            ("key", slot.key), ("degree", root), ("bar", slot.bar)):
            columns[name].append(int(value))
        last, section_of_last = chord, slot.section
    sections = []
    for i, play in enumerate(song.sections):
        end = next((starts[j] for j in range(i + 1, len(song.sections)) if j in starts), len(out))
        sections.append({"index": i, "name": play.name, "label": _LABEL_CODE[play.name], "occurrence": play.occurrence,
                         "kind": section_kind(play.name) if play.name != "(S)" else "other",
                         "first_token": starts.get(i, -1), "n_tokens": end - starts[i] if i in starts else 0,
                         "n_slots": play.n_slots})
    return SongTokens(out, columns, song, sections)


def read_song(text: str, song_id: str, source: str, config: RS200Config | None = None) -> tuple[TuneRecord, SongTokens | None]:
    """One ``.har`` file → its manifest record (skipped with the reason on an unknown symbol, no
    key, an unknown section name) and its tokens."""
    config = config or RS200Config()
    try:
        song = parse_har(text)
        names = [p.name for p in song.sections if p.name not in _LABEL_CODE]
        if names:
            raise RS200Error(f"section name {names[0]!r} not in SECTION_LABELS")
        result = song_tokens(song, config.unit, config.keys, config.tokens, config.restart_sections)
    except RS200Error as err:
        return TuneRecord(song_id, source, None, str(err)), None
    return TuneRecord(song_id, source, result.tokens), result


# ------------------------------------------------------------------ files and the corpus source

def rs200_files(annotator: str = "dt", kind: str = "harmony") -> list[tuple[str, str]]:
    """``(file name, git blob id)`` of the ``kind`` files of ``annotator`` (dt, tdc or both), sorted."""
    suffixes = ANNOTATORS if annotator == "both" else (annotator,)
    return [(n, b) for n, b in sorted(BLOBS[kind].items()) if Path(n).stem.rsplit("_", 1)[-1] in suffixes]


def file_url(base_url: str, layout: str, kind: str, name: str) -> str:
    return f"{base_url.rstrip('/')}/{LAYOUTS[layout][kind]}/{name}"


def fetch_rs200(config: RS200Config, download_dir, kind: str = "harmony") -> list[tuple[Path, str]]:
    """Download (or find, verified) every needed file into ``download_dir/rs200/<kind>/``;
    ``(path, url)`` per file. A wrong file is a :class:`musinterp.io.ChecksumError`."""
    from musinterp.io import fetch

    out = []
    for name, blob in rs200_files(config.annotator, kind):
        url = file_url(config.base_url, config.layout, kind, name)
        out.append((fetch(url, Path(download_dir) / "rs200" / kind / name, blob, kind="git_blob"), url))
    return out


def build_rs200(name: str, spec: dict | None, out_dir, seed: int = 0, heldout_fraction: float = 0.1,
                download_dir=None) -> dict:
    """Corpus source ``rs200``: download and verify the ``.har`` files, write ``tokens.h5`` (the
    :data:`COLUMNS` as ``/columns/<name>``), ``vocab.json``, ``manifest.tsv`` (one row per song
    file, id = file stem such as ``1999_dt``) and ``songs.json`` (settings, label tables, per song
    its title, keys and sections); return the counts of :func:`musinterp.corpus.build_corpus`."""
    from musinterp.corpus.store import write_corpus
    from musinterp.io import write_json

    started = time.perf_counter()
    config = RS200Config.from_spec(spec, where=f"corpus {name!r}")
    files = fetch_rs200(config, download_dir or Path("resources/downloads"))
    records, results = [], []
    for path, url in files:
        record, result = read_song(path.read_text(encoding="utf-8", errors="replace"), path.stem, url, config)
        records.append(record)
        results.append(result)
    ok = [(r, s) for r, s in zip(records, results) if s is not None]
    corpus = write_corpus(
        out_dir, name,
        tune_token_lists=[s.tokens for _, s in ok], tune_ids=[r.id for r, _ in ok],
        manifest_rows=[r.manifest_row() for r in records],
        seed=seed, heldout_fraction=heldout_fraction, format=config.tokens,
        token_columns={col: [s.columns[col] for _, s in ok] for col in COLUMNS},
    )
    skip_reasons = Counter(r.reason for r in records if r.status != "ok")
    songs_path = Path(out_dir) / "songs.json"
    write_json(songs_path, {
        "source": f"github:{REPOSITORY}@{COMMIT}", "licence": "CC BY 4.0, Trevor de Clercq and David Temperley",
        "config": asdict(config), "columns": list(COLUMNS), "section_labels": list(SECTION_LABELS),
        "section_kinds": list(SECTION_KINDS),
        "songs": [{"id": r.id, "title": s.song.title,
                   "keys": [ROOT_NAMES[k] for k in dict.fromkeys(sl.key for sl in s.song.slots if sl.key is not None)],
                   "n_bars": len(s.song.bars), "n_tokens": len(s.tokens), "sections": s.sections} for r, s in ok],
    }, indent=None)
    n_slots = sum(len(s.song.slots) for _, s in ok)
    n_rests = sum(sl.symbol == "R" for _, s in ok for sl in s.song.slots)
    counts = {
        "corpus": name, "source": "rs200", "n_items": len(records), "n_ok": len(ok),
        "n_skipped": len(records) - len(ok), "n_tokens": corpus.n_tokens, "vocab_size": len(corpus.vocab),
        "n_train": int(len(corpus.indices("train"))), "n_heldout": int(len(corpus.indices("heldout"))),
        "skip_reasons": dict(skip_reasons.most_common()), "format": config.tokens,
        "n_slots": n_slots, "n_rest_slots": n_rests, "n_bars": sum(len(s.song.bars) for _, s in ok),
        "songs": str(songs_path), "seconds": round(time.perf_counter() - started, 2),
    }
    log.info("corpus %s (rs200, %s): %d songs ok, %d skipped, %d tokens", name, config.annotator,
             counts["n_ok"], counts["n_skipped"], counts["n_tokens"])
    for reason, count in skip_reasons.most_common(10):
        log.info("corpus %s: skipped %d x %s", name, count, reason)
    return counts
