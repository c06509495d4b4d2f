"""The RS200 corpus source: Roman numerals → chord tokens, the .har expansion with sections, the
whole corpus, and the download by URL + git blob id (file:// on the shared data copy)."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import validator_filling_defaults
from jsonschema import ValidationError

from musinterp.corpus import build_corpus, load_corpus, read_manifest
from musinterp.corpus.formats.chords import QUALITIES
from musinterp.corpus.formats.chords import parse_chord as parse_token
from musinterp.corpus.rs200 import (
    COLUMNS,
    DEFAULT_BASE_URL,
    SECTION_KINDS,
    SECTION_LABELS,
    RS200Config,
    fetch_rs200,
    read_song,
    rs200_files,
    section_kind,
)
from musinterp.corpus.rs200_blobs import COMMIT, HARMONY, HARMONY_EXP
from musinterp.corpus.rs200_har import parse_har, read_expanded
from musinterp.corpus.rs200_numerals import RS200Error, key_pc, parse_chord
from musinterp.io import ChecksumError, git_blob_id_file

ROOT = Path(__file__).resolve().parents[1]
SHARED_RS200 = ROOT.parent / "shared" / "data" / "rs200"
SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
CORPUS_ITEM = SCHEMA["properties"]["corpora"]["additionalProperties"]


def needs_shared():
    if not (SHARED_RS200 / "harmony").is_dir():
        pytest.skip(f"{SHARED_RS200} is absent (the shared development data folder ../shared/data is not here)")


def labels(tokens_result):
    return [SECTION_LABELS[c] for c in tokens_result.columns["section_label"]]


# --- Roman numerals ----------------------------------------------------------------------------

@pytest.mark.parametrize("symbol, root, quality", [
    ("I", 0, "maj"), ("IV", 5, "maj"), ("V", 7, "maj"), ("vi", 9, "min"), ("ii", 2, "min"), ("iii", 4, "min"),
    ("i", 0, "min"), ("iv", 5, "min"), ("v", 7, "min"),
    ("bVII", 10, "maj"), ("bVI", 8, "maj"), ("bIII", 3, "maj"), ("bII", 1, "maj"), ("#IV", 6, "maj"), ("biii", 3, "min"),
    ("II", 2, "maj"), ("III", 4, "maj"), ("VI", 9, "maj"), ("VII", 11, "maj"),
    # sevenths: the major scale's seventh above the root; lower case min7; d = dominant
    ("V7", 7, "7"), ("I7", 0, "maj7"), ("IV7", 5, "maj7"), ("bVII7", 10, "maj7"), ("bVI7", 8, "maj7"),
    ("II7", 2, "7"), ("VI7", 9, "7"), ("III7", 4, "7"), ("ii7", 2, "min7"), ("vi7", 9, "min7"), ("i7", 0, "min7"),
    ("iv7", 5, "min7"), ("IVd7", 5, "7"), ("Id7", 0, "7"), ("bVIId7", 10, "7"), ("bIIId42", 3, "7"),
    # diminished, half-diminished, augmented
    ("viio", 11, "dim"), ("iio6", 2, "dim"), ("viio7", 11, "dim7"), ("viix7", 11, "dim7"), ("viix42", 11, "dim7"),
    ("viih7", 11, "hdim7"), ("iih65", 2, "hdim7"), ("iih43", 2, "hdim7"), ("Ia", 0, "aug"), ("Va7/vi", 4, "aug"),
    # inversions do not change the chord
    ("I6", 0, "maj"), ("I64", 0, "maj"), ("V6", 7, "maj"), ("vi64", 9, "min"), ("V65", 7, "7"), ("V43", 7, "7"),
    ("V42", 7, "7"), ("vi42", 9, "min7"), ("ii65", 2, "min7"),
    # applied chords
    ("V/V", 2, "maj"), ("V7/V", 2, "7"), ("V7/IV", 0, "7"), ("V/vi", 4, "maj"), ("V43/ii", 9, "7"),
    ("viix7/V", 6, "dim7"), ("viio/ii", 1, "dim"), ("iv/ii", 7, "min"), ("V/bVI", 3, "maj"), ("vi/bVII", 7, "min"),
    ("bVII/bVII", 8, "maj"), ("IV64/IV", 10, "maj"), ("V/V/V", 9, "maj"), ("iih7/V", 9, "hdim7"),
    # suspensions, 9ths, 11ths (V11 = IV/V, no third: sus4), added tones and alterations
    ("Vs4", 7, "sus4"), ("V7s4", 7, "sus4"), ("v7s4", 7, "sus4"), ("Vs4/vi", 4, "sus4"), ("V11", 7, "sus4"),
    ("ii11", 2, "sus4"), ("V9", 7, "7"), ("IV9", 5, "maj7"), ("i9", 0, "min7"), ("Id9", 0, "7"),
    ("V+11", 7, "maj"), ("bIII+9", 3, "maj"), ("I#9", 0, "maj"), ("Id7#9", 0, "7"), ("V7b9", 7, "7"),
    ("bVIb5", 8, "maj"), ("bVb5", 6, "maj"),
])
def test_roman_numeral(symbol, root, quality):
    assert parse_chord(symbol) == (root, quality)
    assert quality in QUALITIES


@pytest.mark.parametrize("symbol", ["iid6/ii", "Vd", "IVd6", "X", "I/", "V/Q", "Io", "Vh7", "viox", "H7", "7"])
def test_unknown_symbols_are_not_guessed(symbol):
    with pytest.raises(RS200Error, match="unknown chord symbol"):
        parse_chord(symbol)


def test_keys_and_section_kinds():
    assert [key_pc(k) for k in ("C", "G", "F#", "Bb", "Db", "B", "G#")] == [0, 7, 6, 10, 1, 11, 8]
    with pytest.raises(RS200Error, match=r"unknown key or meter \[H\]"):
        key_pc("H")
    assert [section_kind(n) for n in ("In", "Vr2", "VP", "Pc", "Ch1a", "Rf", "Br", "Fadeout", "Ou", "So", "BP", "A")] == [
        "intro", "verse", "verse", "pre-chorus", "chorus", "chorus", "bridge", "outro", "outro", "other", "other", "other"]
    assert SECTION_KINDS[:6] == ("intro", "verse", "pre-chorus", "chorus", "bridge", "outro")
    pop_songs = pytest.importorskip("musinterp.corpus.pop_songs")
    assert SECTION_KINDS[:6] == tuple(pop_songs.SECTION_LABELS)  # codes comparable with source popgen


# --- the .har notation -------------------------------------------------------------------------

SMALL = """% Small Song

VP: I | IV V |
Vr: $VP*2 vi | |
Ch: [D] I | . V7 | R |
Zz: $Vr $Ch
S: [G] $Zz*2 IV | I |
"""


def test_expansion_sections_and_key_scope():
    song = parse_har(SMALL)
    assert song.title == "Small Song"
    bars = song.bar_chords()
    G, D = 7, 2
    assert bars[:6] == [[(G, "I")], [(G, "IV"), (G, "V")], [(G, "I")], [(G, "IV"), (G, "V")], [(G, "vi")], [(G, "vi")]]
    assert bars[6:9] == [[(D, "I")], [(D, "I"), (D, "V7")], [(D, "R")]]
    assert bars[-2:] == [[(G, "IV")], [(G, "I")]]  # the key set in Ch ends with Ch
    assert len(bars) == 2 * 9 + 2
    # Zz only groups: its parts are the sections; chords in the song line are the unnamed section
    assert [(p.name, p.occurrence) for p in song.sections] == [("Vr", 0), ("Ch", 0), ("Vr", 1), ("Ch", 1), ("(S)", -1)]


def test_tokens_one_per_change_with_columns():
    record, result = read_song(SMALL, "small_dt", "x")
    assert record.status == "ok"
    # Vr: I IV V I IV V vi (vi held over the empty bar); Ch in D: I (held by ".") V7, rest silent
    verse = "C:maj F:maj G:maj C:maj F:maj G:maj A:min".split()
    chorus = "C:maj G:7".split()
    assert result.tokens == verse + chorus + verse + chorus + ["F:maj", "C:maj"]
    assert labels(result) == ["Vr"] * 7 + ["Ch"] * 2 + ["Vr"] * 7 + ["Ch"] * 2 + ["(S)"] * 2
    cols = result.columns
    assert set(cols) == set(COLUMNS)
    assert cols["section"] == [0] * 7 + [1] * 2 + [2] * 7 + [3] * 2 + [4] * 2
    assert cols["section_occurrence"] == [0] * 9 + [1] * 9 + [-1] * 2
    assert [SECTION_KINDS[k] for k in cols["section_kind"][:9]] == ["verse"] * 7 + ["chorus"] * 2
    assert cols["key"] == [7] * 7 + [2] * 2 + [7] * 7 + [2] * 2 + [7, 7]
    assert cols["degree"] == [0, 5, 7, 0, 5, 7, 9, 0, 7] * 2 + [5, 0]
    assert cols["bar"][:9] == [0, 1, 1, 2, 3, 3, 4, 6, 7]
    # in the song's keys instead of C
    _, original = read_song(SMALL, "small_dt", "x", RS200Config(keys="original"))
    assert original.tokens[:9] == "G:maj C:maj D:maj G:maj C:maj D:maj E:min D:maj A:7".split()
    assert original.columns == cols
    # one token per slot: held chords repeat, rests stay silent
    _, slots = read_song(SMALL, "small_dt", "x", RS200Config(unit="slot"))
    assert slots.tokens[:10] == "C:maj F:maj G:maj C:maj F:maj G:maj A:min A:min C:maj C:maj".split()


def test_collapse_across_sections_and_restart_option():
    text = "A: I | | IV |\nB: IV | I |\nS: [C] $A $B*2 R | I |\n"
    _, result = read_song(text, "t", "x")
    # A: I IV; B: (IV continues) I; B again: IV I; after the rest I continues: no token
    assert result.tokens == "C:maj F:maj C:maj F:maj C:maj".split()
    assert labels(result) == ["A", "A", "B", "B", "B"]
    assert result.columns["section_occurrence"] == [0, 0, 0, 1, 1]
    _, restarted = read_song(text, "t", "x", RS200Config(restart_sections=True))
    assert restarted.tokens == "C:maj F:maj F:maj C:maj F:maj C:maj C:maj".split()
    assert restarted.columns["section"] == [0, 0, 1, 1, 2, 2, 3]


def test_songs_that_cannot_be_read_are_skipped_with_the_reason():
    cases = {
        "A: I | V |\nS: $A [C] $A\n": "chord 'I' before any key",
        "S: [C] I | iid6/ii | V |\n": "unknown chord symbol 'iid6/ii'",
        "S: [C] I | $Nope |\n": "undefined rule $Nope",
        "Vr: I |\n": "no song line 'S:'",
        "S: [C] R | R |\n": "no chord",
        "S: [C] I | [Q] V |\n": r"unknown key or meter [Q]",
    }
    for text, reason in cases.items():
        record, result = read_song(text, "bad_dt", "src")
        assert record.status == "skipped" and result is None
        assert reason in record.reason, (text, record.reason)


def test_config_is_checked():
    assert RS200Config.from_spec(None) == RS200Config()
    with pytest.raises(ValueError, match=r"rs200\.anotator is not a setting \(known: annotator"):
        RS200Config.from_spec({"anotator": "dt"})
    with pytest.raises(ValueError, match="rs200.annotator must be one of dt, tdc, both"):
        RS200Config.from_spec({"annotator": "tc"})


def test_schema_defaults_equal_the_config_defaults():
    schema = CORPUS_ITEM["properties"]["rs200"]
    assert "rs200" in CORPUS_ITEM["properties"]["source"]["enum"] and schema["additionalProperties"] is False
    props = schema["properties"]
    assert set(props) == {f.name for f in dataclasses.fields(RS200Config)}
    defaults = RS200Config()
    for name, prop in props.items():
        assert prop["default"] == getattr(defaults, name), name
        if "enum" in prop:
            assert prop["default"] in prop["enum"]
    assert props["base_url"]["default"] == DEFAULT_BASE_URL and COMMIT in DEFAULT_BASE_URL
    entry = {"source": "rs200", "rs200": {"annotator": "both"}}
    validator_filling_defaults()(CORPUS_ITEM).validate(entry)
    assert RS200Config.from_spec(entry["rs200"]) == RS200Config(annotator="both")
    with pytest.raises(ValidationError):
        validator_filling_defaults()(CORPUS_ITEM).validate({"source": "rs200", "rs200": {"annotator": "x"}})


def test_file_table():
    assert len(HARMONY) == len(HARMONY_EXP) == 400
    assert len(rs200_files("dt")) == len(rs200_files("tdc")) == 200 and len(rs200_files("both")) == 400
    assert all(n.endswith("_dt.har") for n, _ in rs200_files("dt"))
    assert rs200_files("dt")[0] == ("1999_dt.har", "4a9179e8db7b0e69cb745875c2b4f6128f1f10b9")


# --- the real corpus (../shared/data/rs200) ----------------------------------------------------

def test_shared_copy_is_the_pinned_one():
    needs_shared()
    for kind, table in (("harmony", HARMONY), ("harmony_exp", HARMONY_EXP)):
        for name, blob in table.items():
            assert git_blob_id_file(SHARED_RS200 / kind / name) == blob, name


def test_every_song_expands_to_the_authors_expansion():
    """Bars, chord slots and keys of each .har file equal its harmony_exp/*.txt line."""
    needs_shared()
    n = 0
    for path in sorted((SHARED_RS200 / "harmony").glob("*.har")):
        expanded = read_expanded((SHARED_RS200 / "harmony_exp" / f"{path.stem}.txt").read_text())
        try:
            song = parse_har(path.read_text())
        except RS200Error as err:
            assert path.stem == "tears_in_heaven_tdc" and "iid6/ii" in str(err)
            continue
        assert song.bar_chords() == expanded, path.name
        n += 1
    assert n == 399


def read_shared(stem, **config):
    return read_song((SHARED_RS200 / "harmony" / f"{stem}.har").read_text(), stem, "x", RS200Config(**config))


def test_hand_checked_songs():
    needs_shared()
    # 1999 (dt), in F: In = R | R |*6 $InP*4 $BP*2, InP = I64 V11 |..., BP = I bVII | ... | I bVII I . |
    record, song = read_shared("1999_dt")
    assert song.song.title == "1999" and song.song.bar_chords()[:8] == [[(5, "R")]] * 7 + [[(5, "I64"), (5, "V11")]]
    assert song.tokens[:18] == ["C:maj", "G:sus4"] * 8 + ["C:maj", "Bb:maj"]
    assert song.columns["bar"][:3] == [7, 7, 8] and set(song.columns["key"]) == {5}
    assert labels(song)[0] == "In" and song.columns["section_occurrence"][0] == 0
    # A Change Is Gonna Come (tdc), in Bb: In: I V6 vi I64 | ii65 V43/ii ii vi6 bVIId7 . VId7 . | V |
    _, change = read_shared("a_change_is_gonna_come_tdc")
    assert change.tokens[:11] == "C:maj G:maj A:min C:maj D:min7 A:7 D:min A:min Bb:7 A:7 G:maj".split()
    assert set(change.columns["key"]) == {10}
    assert [s["name"] for s in change.sections] == ["In", "Vr", "Vr", "Vr", "Br", "Vr", "(S)"]
    # A Day in the Life (dt): G, the bridge in E ([E] V |*23 I | ...), back to G for the verse
    _, day = read_shared("a_day_in_the_life_dt")
    names = labels(day)
    bridge = names.index("Br1")
    assert day.tokens[:4] == "C:maj E:min A:min F:maj".split() and day.columns["key"][0] == 7
    assert day.tokens[bridge:bridge + 3] == "G:maj C:maj Bb:maj".split()
    assert day.columns["key"][bridge] == 4 and day.columns["bar"][bridge] - day.columns["bar"][bridge - 1] >= 1
    after = names.index("Vra", bridge)
    assert day.columns["key"][after] == 7 and day.tokens[after] == "C:maj"
    assert day.columns["section_occurrence"][after] == 3
    # the tdc analysis groups sections in Z1 Z2 Z3: looked through
    _, day_tdc = read_shared("a_day_in_the_life_tdc")
    assert [s["name"] for s in day_tdc.sections][:5] == ["In1", "Vr1", "Vr2", "Vr2", "Tr1"]


def test_whole_corpus_counts():
    needs_shared()
    counts = {}
    for annotator in ("dt", "tdc"):
        records = [read_shared(n[:-4])[0] for n, _ in rs200_files(annotator)]
        results = [read_shared(n[:-4])[1] for n, _ in rs200_files(annotator)]
        ok = [r for r in results if r is not None]
        counts[annotator] = (len(ok), sum(len(r.tokens) for r in ok),
                             sorted(r.reason for r in records if r.status != "ok"))
        every_name = {p.name for r in ok for p in r.song.sections}
        assert every_name <= set(SECTION_LABELS)
        assert all(parse_token(t) for r in ok for t in r.tokens)
    assert counts["dt"] == (200, 18419, [])
    assert counts["tdc"] == (199, 18682, ["unknown chord symbol 'iid6/ii' ('d' marks a dominant seventh: "
                                          "d7, d65, d43, d42, d9)"])


# --- the download source -----------------------------------------------------------------------

def mirror_of(tmp_path, annotator="dt"):
    """A copy of the shared files for one annotator in the 'mirror' layout."""
    mirror = tmp_path / "mirror"
    (mirror / "harmony").mkdir(parents=True)
    for name, _ in rs200_files(annotator):
        shutil.copyfile(SHARED_RS200 / "harmony" / name, mirror / "harmony" / name)
    return mirror


def spec(base, **kw):
    return {"source": "rs200", "rs200": {"base_url": Path(base).as_uri(), "layout": "mirror", **kw}}


def test_build_through_file_urls(tmp_path):
    needs_shared()
    downloads = tmp_path / "downloads"
    counts = build_corpus("rs200", spec(SHARED_RS200, annotator="both"), tmp_path / "corpus", seed=0,
                          heldout_fraction=0.1, download_dir=downloads)
    assert counts["n_items"] == 400 and counts["n_ok"] == 399 and counts["n_skipped"] == 1
    assert counts["n_tokens"] == 18419 + 18682 and counts["format"] == "chords"
    assert len(list((downloads / "rs200" / "harmony").iterdir())) == 400
    rows = read_manifest(tmp_path / "corpus")
    assert len(rows) == 400 and rows[0]["id"] == "1999_dt" and rows[1]["id"] == "1999_tdc"
    assert rows[0]["source"] == (SHARED_RS200 / "harmony" / "1999_dt.har").as_uri()
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert [r["id"] for r in skipped] == ["tears_in_heaven_tdc"] and "iid6/ii" in skipped[0]["reason"]
    corpus = load_corpus(tmp_path / "corpus")
    assert corpus.format == "chords" and len(corpus) == 399 and set(corpus.token_columns) == set(COLUMNS)
    _, song = read_shared("1999_dt")
    assert corpus.tune_tokens(0) == song.tokens
    assert all(np.array_equal(corpus.token_columns[c][0], song.columns[c]) for c in COLUMNS)
    songs = json.loads((tmp_path / "corpus" / "songs.json").read_text())
    assert songs["section_labels"] == list(SECTION_LABELS) and songs["songs"][0]["title"] == "1999"
    assert songs["songs"][0]["keys"] == ["F"] and songs["songs"][0]["sections"][0]["name"] == "In"


def test_download_verifies_reuses_and_refuses(tmp_path):
    needs_shared()
    mirror = mirror_of(tmp_path)
    downloads = tmp_path / "downloads"
    config = RS200Config.from_spec(spec(mirror)["rs200"])
    fetched = fetch_rs200(config, downloads)
    assert len(fetched) == 200 and fetched[0][1] == (mirror / "harmony" / "1999_dt.har").as_uri()
    # the verified files are found in place: the mirror is no longer needed
    shutil.rmtree(mirror)
    counts = build_corpus("rs200", spec(mirror), tmp_path / "corpus", 0, 0.1, download_dir=downloads)
    assert counts["n_ok"] == 200 and counts["n_tokens"] == 18419

    # a file placed by hand that is not the published one is refused, naming both blob ids
    placed = downloads / "rs200" / "harmony" / "1999_dt.har"
    placed.write_text(placed.read_text().replace("bVII", "IV", 1))
    with pytest.raises(ChecksumError) as err:
        build_corpus("rs200", spec(mirror), tmp_path / "corpus2", 0, 0.1, download_dir=downloads)
    assert HARMONY["1999_dt.har"] in str(err.value) and git_blob_id_file(placed) in str(err.value)
    assert not (tmp_path / "corpus2").exists()

    # a corrupted file at the URL is refused and leaves nothing behind
    mirror = mirror_of(tmp_path / "again")
    bad = mirror / "harmony" / "a_day_in_the_life_dt.har"
    bad.write_bytes(bad.read_bytes() + b"% one more line\n")
    fresh = tmp_path / "fresh"
    with pytest.raises(ChecksumError, match="git_blob checksum mismatch") as err:
        build_corpus("rs200", spec(mirror), tmp_path / "corpus3", 0, 0.1, download_dir=fresh)
    assert HARMONY["a_day_in_the_life_dt.har"] in str(err.value)
    assert not (fresh / "rs200" / "harmony" / "a_day_in_the_life_dt.har").exists()
    assert not (tmp_path / "corpus3").exists()


def test_offline_without_the_file_says_where_to_put_it(tmp_path):
    with pytest.raises(OSError, match=r"put the file at .*rs200/harmony/1999_dt\.har by hand") as err:
        fetch_rs200(RS200Config(base_url=(tmp_path / "nowhere").as_uri()), tmp_path / "downloads")
    assert "4a9179e8db7b0e69cb745875c2b4f6128f1f10b9" in str(err.value)
    assert DEFAULT_BASE_URL == f"https://raw.githubusercontent.com/danigb/rock-corpus/{COMMIT}"
