"""The RS200 ``.har`` files: rules, their expansion into chord slots, bars, keys and sections.

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
an unnamed section (``(S)``, occurrence −1) per uninterrupted run. The tokens and per-token columns
made from an expanded :class:`Song` are :mod:`musinterp.corpus.rs200`'s.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from musinterp.corpus.rs200_numerals import RS200Error, key_pc, parse_chord

# Rules that only group sections (looked through when finding the sections of the song line).
GROUPING_RULE = re.compile(r"Zz?\d*")
_ATOM = re.compile(r"\|\*(?P<bar_reps>\d+)|(?P<bar>\|)|\$(?P<ref>[A-Za-z0-9_]+)(?:\*(?P<ref_reps>\d+))?"
                   r"|\[(?P<bracket>[^\]\s]*)\]|(?P<slot>[^\s|\[\]$]+)|(?P<space>\s+)|(?P<bad>.)")
_MAX_DEPTH = 20


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
