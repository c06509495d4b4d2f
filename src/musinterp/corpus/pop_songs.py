"""Generated pop songs: song forms of sections, each section repeating one common chord loop.

The offline default corpus of study S4 (induction heads on chord progressions); the real pop
harmony is RS200 (``data/rs200/``). A song is

1. a key (tonic pitch class, uniform over 12) and a song form from :data:`FORMS` (or
   ``forms`` of the config), e.g. ``V-P-C-V-P-C-B-C``; section letters :data:`SECTION_LETTERS`;
2. per section *label* of the form (verse, chorus, …), one loop of :data:`LOOPS` (a period drawn
   from ``periods``, then a loop of that period not yet used in the song where one is left) and
   one offset (the rotation the section starts at, uniform over the period; ``offsets: zero``
   starts every section at the loop's first chord). A returning label repeats its loop from the
   same offset: that is the song's structure;
3. per section *occurrence*, a number of passes through the loop drawn from ``repeats`` = [min,
   max] (inclusive), so sections and songs have varying lengths and the position in the song does
   not tell the next chord;
4. per token, with probability ``substitution_rate``, the loop's chord replaced by its
   substitute in :data:`SUBSTITUTIONS` (V→V7, I→Imaj7, IV→ii, vi→iii) where it has one;
5. chord tokens of format ``chords`` (``G:7``) or ``chords-pcset`` (``7-11-2-5``), in C
   (``keys: c``, the default: the key column is then 0) or in the song's key (``keys: random``).

Randomness: song ``n`` of seed ``s`` draws its structure from ``default_rng([s, n, 0])`` and its
substitutions from ``default_rng([s, n, 1])`` (one uniform per token, whatever the rate), so a
song does not depend on ``n_songs``, ``keys`` or ``tokens``, and the rate changes only which
tokens are substituted (a higher rate substitutes a superset).

Per-token columns (:data:`COLUMNS`, int32, aligned with the tokens): ``section`` (index of the
section in the song), ``section_label`` (code into :data:`SECTION_LABELS`: intro 0, verse 1,
pre-chorus 2, chorus 3, bridge 4, outro 5), ``section_occurrence`` (0 the first time the label
appears in the song, 1 the second, …), ``loop_id`` (index into :data:`LOOPS`), ``period``,
``loop_position`` (index of the chord in the loop's table entry, 0..period−1: the section's first
token is at ``offset``), ``loop_repeat`` (the pass through the loop within this section
occurrence, counted from the section's first token), ``ambiguous`` (1 if the loop's chord repeats
inside the loop, so one token of context does not tell the next chord), ``key`` (tonic pitch
class of the tokens), ``degree`` (the token's root relative to the key, 0..11) and
``substituted`` (1 where a substitution replaced the loop's chord). So the loop's chord of every
token is ``LOOPS[loop_id].chords[loop_position]`` transposed by ``key``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from functools import cached_property

import numpy as np

from musinterp.config import check_keys
from musinterp.corpus.formats.chords import ROOT_NAMES, chord_token, pcset_token

SECTION_LABELS = ("intro", "verse", "pre-chorus", "chorus", "bridge", "outro")
SECTION_LETTERS = {"I": 0, "V": 1, "P": 2, "C": 3, "B": 4, "O": 5}
FORMS = (
    "V-C-V-C-B-C",
    "V-P-C-V-P-C-B-C",
    "I-V-P-C-V-P-C-B-C-O",
    "I-V-C-V-C-B-C-C-O",
    "V-V-C-V-C-B-C",
    "I-V-V-C-V-C-O",
    "V-C-V-C-C",
    "I-V-P-C-V-P-C-C-O",
)
COLUMNS = ("section", "section_label", "section_occurrence", "loop_id", "period", "loop_position", "loop_repeat",
           "ambiguous", "key", "degree", "substituted")
SUBSTITUTIONS = {"V": "V7", "I": "Imaj7", "IV": "ii", "vi": "iii"}
TOKEN_FORMATS = {"chords": chord_token, "chords-pcset": pcset_token}

# Roman numerals in a major key: [b|#] numeral (upper case major, lower case minor) [o ø +] [7 maj7 sus4 sus2]
_NUMERAL = re.compile(r"^(?P<acc>[b#]?)(?P<num>VII|VI|V|IV|III|II|I|vii|vi|v|iv|iii|ii|i)(?P<mark>[oø+]?)"
                      r"(?P<ext>maj7|7|sus4|sus2|)$")
_DEGREES = {"I": 0, "II": 2, "III": 4, "IV": 5, "V": 7, "VI": 9, "VII": 11}
_QUALITY = {  # (upper case?, mark, extension) -> quality
    (True, "", ""): "maj", (True, "", "7"): "7", (True, "", "maj7"): "maj7", (True, "", "sus4"): "sus4",
    (True, "", "sus2"): "sus2", (True, "+", ""): "aug",
    (False, "", ""): "min", (False, "", "7"): "min7", (False, "o", ""): "dim", (False, "o", "7"): "dim7",
    (False, "ø", "7"): "hdim7",
}


def parse_numeral(numeral: str) -> tuple[int, str]:
    """``(degree in semitones above the tonic, quality)`` of a Roman numeral: ``V7`` → ``(7, "7")``,
    ``vi`` → ``(9, "min")``, ``bVII`` → ``(10, "maj")``, ``viiø7`` → ``(11, "hdim7")``."""
    m = _NUMERAL.match(numeral)
    quality = m and _QUALITY.get((m["num"].isupper(), m["mark"], m["ext"]))
    if not quality:
        raise ValueError(f"not a Roman numeral of this generator: {numeral!r}")
    degree = _DEGREES[m["num"].upper()] + {"": 0, "b": -1, "#": 1}[m["acc"]]
    return degree % 12, quality


@dataclass(frozen=True)
class Loop:
    """One entry of the loop table: a name and the Roman numerals of one pass."""

    name: str
    numerals: tuple[str, ...]

    @cached_property
    def chords(self) -> tuple[tuple[int, str], ...]:
        return tuple(parse_numeral(n) for n in self.numerals)

    @property
    def period(self) -> int:
        return len(self.numerals)

    @property
    def ambiguous(self) -> bool:
        """A chord occurs twice in one pass: after it, one token of context does not tell the next."""
        return len(set(self.chords)) < self.period


def _loop(name: str, numerals: str) -> Loop:
    return Loop(name, tuple(numerals.split()))


LOOPS: tuple[Loop, ...] = (
    # period 4
    _loop("axis", "I V vi IV"),
    _loop("axis-minor", "vi IV I V"),
    _loop("doo-wop", "I vi IV V"),
    _loop("I-IV-vi-V", "I IV vi V"),
    _loop("ii-V-I-vi", "ii V I vi"),
    _loop("I-IV-V-IV", "I IV V IV"),
    _loop("vi-V-IV-V", "vi V IV V"),
    _loop("I-iii-IV-V", "I iii IV V"),
    _loop("mixolydian", "I bVII IV I"),
    _loop("royal-road", "IVmaj7 V7 iii7 vi"),
    # period 8
    _loop("canon", "I V vi iii IV I IV V"),
    _loop("IV-V-iii-vi-ii-V-I-I", "IV V iii vi ii V I I"),
    _loop("I-vi-IV-V-I-vi-ii-V", "I vi IV V I vi ii V"),
    _loop("vi-IV-I-V-vi-IV-V-V", "vi IV I V vi IV V V"),
    _loop("circle-of-fifths", "Imaj7 IVmaj7 viiø7 iii7 vi7 ii7 V7 I"),
    _loop("canon-cadence", "I V vi iii IV ii Vsus4 V7"),
    _loop("jazz-pop", "Imaj7 iii7 vi7 IVmaj7 ii7 Vsus4 V7 I"),
)
PERIODS = tuple(sorted({loop.period for loop in LOOPS}))


@dataclass
class PopGenConfig:
    """Settings of the generator: the ``popgen:`` keys of a ``source: popgen`` corpus (the schema's
    defaults equal these). ``seed`` None: the run's seed; ``forms`` None: :data:`FORMS`."""

    n_songs: int = 2000
    seed: int | None = None
    forms: list[str] | None = None
    periods: list[int] = field(default_factory=lambda: [4, 8])
    repeats: list[int] = field(default_factory=lambda: [2, 4])
    substitution_rate: float = 0.1
    keys: str = "c"  # c | random
    tokens: str = "chords"  # chords | chords-pcset
    offsets: str = "random"  # random | zero

    @classmethod
    def from_spec(cls, spec: dict | None, where: str = "popgen") -> "PopGenConfig":
        """From the ``popgen:`` mapping of a corpus entry; an unknown or impossible setting is a
        ValueError naming ``popgen.<key>``."""
        spec = dict(spec or {})
        check_keys(cls, spec, where, "popgen")
        config = cls(**spec)
        config.check(where)
        return config

    def check(self, where: str = "popgen") -> None:
        def bad(key, why):
            raise ValueError(f"{where}: popgen.{key} {why}")

        if not isinstance(self.n_songs, int) or self.n_songs < 1:
            bad("n_songs", f"must be a positive integer, got {self.n_songs!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            bad("seed", f"must be an integer, got {self.seed!r}")
        if self.forms is not None:
            if isinstance(self.forms, str) or not self.forms:
                bad("forms", f"must be a non-empty list of forms such as 'V-C-V-C', got {self.forms!r}")
            for form in self.forms:
                letters = str(form).split("-")
                wrong = [x for x in letters if x not in SECTION_LETTERS]
                if wrong:
                    bad("forms", f"{form!r}: unknown section letter {wrong[0]!r} (letters "
                        + ", ".join(f"{k} {SECTION_LABELS[v]}" for k, v in SECTION_LETTERS.items()) + ")")
        if isinstance(self.periods, (str, int)) or not self.periods:
            bad("periods", f"must be a non-empty list, got {self.periods!r}")
        for period in self.periods:
            if period not in PERIODS:
                bad("periods", f"has {period!r}, but the loop table has loops of period "
                    + " and ".join(map(str, PERIODS)) + " only")
        repeats = list(self.repeats) if isinstance(self.repeats, (list, tuple)) else None
        if (repeats is None or len(repeats) != 2 or not all(isinstance(r, int) for r in repeats)
                or not 1 <= repeats[0] <= repeats[1]):
            bad("repeats", f"must be [min, max] passes per section with 1 <= min <= max, got {self.repeats!r}")
        if not isinstance(self.substitution_rate, (int, float)) or not 0 <= self.substitution_rate <= 1:
            bad("substitution_rate", f"must be in [0, 1], got {self.substitution_rate!r}")
        for key, value, allowed in (("keys", self.keys, ("c", "random")), ("tokens", self.tokens, tuple(TOKEN_FORMATS)),
                                    ("offsets", self.offsets, ("random", "zero"))):
            if value not in allowed:
                bad(key, f"must be one of {', '.join(allowed)}, got {value!r}")


@dataclass
class Section:
    label: str
    occurrence: int
    loop_id: int
    period: int
    offset: int
    repeats: int
    ambiguous: bool
    start: int  # index of the section's first token in the song
    n_tokens: int

    def to_json(self) -> dict:
        return {**asdict(self), "loop": LOOPS[self.loop_id].name}


@dataclass
class Song:
    index: int
    form: str
    key: int  # tonic pitch class of the tokens (0 with keys: c)
    tokens: list[str]
    columns: dict[str, np.ndarray]  # COLUMNS, int32, one value per token
    sections: list[Section]

    def to_json(self) -> dict:
        return {"index": self.index, "form": self.form, "key": self.key, "key_name": ROOT_NAMES[self.key],
                "n_tokens": len(self.tokens), "sections": [s.to_json() for s in self.sections]}


def generate_song(index: int, config: PopGenConfig, seed: int) -> Song:
    """Song ``index`` of the corpus that ``config`` and ``seed`` describe (``config.seed`` wins)."""
    seed = config.seed if config.seed is not None else seed
    rng = np.random.default_rng([seed, index, 0])
    substitution_rng = np.random.default_rng([seed, index, 1])
    forms = config.forms if config.forms is not None else FORMS
    drawn_key = int(rng.integers(12))
    key = drawn_key if config.keys == "random" else 0
    form = str(forms[int(rng.integers(len(forms)))])
    labels = [SECTION_LETTERS[x] for x in form.split("-")]
    spell = TOKEN_FORMATS[config.tokens]

    plan: dict[int, tuple[int, int]] = {}  # label -> (loop id, offset), in order of first appearance
    for label in labels:
        if label in plan:
            continue
        period = int(config.periods[int(rng.integers(len(config.periods)))])
        candidates = [i for i, loop in enumerate(LOOPS) if loop.period == period]
        unused = [i for i in candidates if i not in {loop_id for loop_id, _ in plan.values()}]
        loop_id = (unused or candidates)[int(rng.integers(len(unused or candidates)))]
        offset = int(rng.integers(period)) if config.offsets == "random" else 0
        plan[label] = (loop_id, offset)

    tokens: list[str] = []
    columns: dict[str, list[int]] = {name: [] for name in COLUMNS}
    sections: list[Section] = []
    seen: dict[int, int] = {}
    lo, hi = config.repeats
    for s, label in enumerate(labels):
        loop_id, offset = plan[label]
        loop = LOOPS[loop_id]
        occurrence = seen.get(label, 0)
        seen[label] = occurrence + 1
        repeats = int(rng.integers(lo, hi + 1))
        sections.append(Section(SECTION_LABELS[label], occurrence, loop_id, loop.period, offset, repeats,
                                loop.ambiguous, len(tokens), repeats * loop.period))
        for j in range(repeats * loop.period):
            position = (offset + j) % loop.period
            numeral = loop.numerals[position]
            draw = substitution_rng.random()  # one draw per token, whatever the rate
            substituted = numeral in SUBSTITUTIONS and draw < config.substitution_rate
            degree, quality = parse_numeral(SUBSTITUTIONS[numeral]) if substituted else loop.chords[position]
            tokens.append(spell(key + degree, quality))
            for name, value in (("section", s), ("section_label", label), ("section_occurrence", occurrence),
                                ("loop_id", loop_id), ("period", loop.period), ("loop_position", position),
                                ("loop_repeat", j // loop.period), ("ambiguous", int(loop.ambiguous)),
                                ("key", key), ("degree", degree), ("substituted", int(substituted))):
                columns[name].append(value)
    arrays = {name: np.asarray(values, dtype=np.int32) for name, values in columns.items()}
    return Song(index, form, key, tokens, arrays, sections)


def generate_songs(config: PopGenConfig, seed: int = 0) -> list[Song]:
    """The ``config.n_songs`` songs, in order."""
    config.check()
    return [generate_song(i, config, seed) for i in range(config.n_songs)]


def loop_table() -> list[dict]:
    """:data:`LOOPS` as JSON rows (id, name, numerals, period, ambiguous)."""
    return [{"id": i, "name": loop.name, "numerals": list(loop.numerals), "period": loop.period,
             "ambiguous": loop.ambiguous} for i, loop in enumerate(LOOPS)]


def build_popgen(name: str, spec: dict | None, out_dir, seed: int = 0, heldout_fraction: float = 0.1) -> dict:
    """Corpus source ``popgen``: write ``tokens.h5`` (format ``config.tokens``, the :data:`COLUMNS`
    as ``/columns/<name>``), ``vocab.json``, ``manifest.tsv`` (one ok row per song, id
    ``popgen/<n>``) and ``songs.json``; return the counts of :func:`musinterp.corpus.build_corpus`.

    ``songs.json`` (the settings, the loop table, per song its form, key and sections with loop
    ids, periods, offsets, repeats and ambiguity) is written after the three corpus files, with
    :func:`musinterp.io.write_json` (atomic on its own): it only restates what the columns hold.
    """
    import time
    from pathlib import Path

    from musinterp.corpus.store import write_corpus
    from musinterp.io import write_json

    started = time.perf_counter()
    config = PopGenConfig.from_spec(spec, where=f"corpus {name!r}")
    if config.seed is None:
        config.seed = int(seed)
    songs = generate_songs(config, seed)
    ids = [f"popgen/{song.index}" for song in songs]
    corpus = write_corpus(
        out_dir, name,
        tune_token_lists=[song.tokens for song in songs],
        tune_ids=ids,
        manifest_rows=[{"id": i, "source": "popgen", "status": "ok", "reason": ""} for i in ids],
        seed=seed, heldout_fraction=heldout_fraction, format=config.tokens,
        token_columns={col: [song.columns[col] for song in songs] for col in COLUMNS},
    )
    songs_path = Path(out_dir) / "songs.json"
    write_json(songs_path, {
        "generator": "musinterp.corpus.pop_songs", "config": asdict(config), "columns": list(COLUMNS),
        "section_labels": list(SECTION_LABELS), "substitutions": SUBSTITUTIONS, "loops": loop_table(),
        "songs": [{"id": i, **song.to_json()} for i, song in zip(ids, songs)],
    }, indent=None)
    return {
        "corpus": name, "source": "popgen", "n_items": len(songs), "n_ok": len(songs), "n_skipped": 0,
        "n_tokens": corpus.n_tokens, "vocab_size": len(corpus.vocab),
        "n_train": int(len(corpus.indices("train"))), "n_heldout": int(len(corpus.indices("heldout"))),
        "skip_reasons": {}, "format": config.tokens, "songs": str(songs_path),
        "seconds": round(time.perf_counter() - started, 2),
    }
