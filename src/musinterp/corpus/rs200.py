"""The Rolling Stone 200 rock corpus (de Clercq & Temperley, v2.1, CC BY 4.0) as songs of chord tokens.

Source: the harmonic analyses ``rs200_harmony/*.har`` of the public repository danigb/rock-corpus at
commit :data:`musinterp.corpus.rs200_blobs.COMMIT`, downloaded file by file and verified by git blob
id (:mod:`musinterp.corpus.rs200_blobs`). 200 songs, each analysed by two annotators (``_dt``,
``_tdc``). Credit: Trevor de Clercq and David Temperley, "A corpus analysis of rock harmony",
Popular Music 30/1 (2011).

**Modules.** The Roman-numeral grammar (chord symbol → root, quality; keys) is
:mod:`musinterp.corpus.rs200_numerals`; the ``.har`` reader and expander (rules, bars, keys, how
sections are found) is :mod:`musinterp.corpus.rs200_har`; this module turns expanded songs into
tokens and per-token columns and builds the corpus (download, manifest, ``songs.json``).

**Sections** (as found by :mod:`musinterp.corpus.rs200_har`: a rule the song line plays, grouping
rules looked through, chords in the song line an unnamed ``(S)`` run). Per token:

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
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from musinterp.config import check_keys
from musinterp.corpus.formats.chords import ROOT_NAMES, chord_token, pcset_token
from musinterp.corpus.rs200_blobs import BLOBS, COMMIT, FOLDERS, REPOSITORY
from musinterp.corpus.rs200_har import Song, parse_har
from musinterp.corpus.rs200_numerals import RS200Error, parse_chord
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

# Every section name the pinned files play (151; both annotators; sections found as in rs200_har),
# sorted; code = index. 0 is the unnamed section: chords written in the song line or in a grouping rule.
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


def section_kind(name: str) -> str:
    """The :data:`SECTION_KINDS` entry of a section name (``Vr2`` → verse, ``Fadeout`` → outro)."""
    for pattern, kind in _KIND_RULES:
        if re.fullmatch(pattern, name):
            return kind
    return "other"


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
        check_keys(cls, spec, where, "rs200")
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
