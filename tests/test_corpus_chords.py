"""Chord token formats and the generated pop-song corpus (source popgen, study S4)."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import validator_filling_defaults
from jsonschema import ValidationError

from musinterp.cli import main as cli_main
from musinterp.corpus import build_corpus, load_corpus, read_manifest, write_corpus
from musinterp.corpus.formats import get_format
from musinterp.corpus.formats.chords import QUALITIES, ROOT_NAMES, chord_token, parse_chord, pcset_token, to_pcset
from musinterp.corpus.pop_songs import (
    COLUMNS,
    FORMS,
    LOOPS,
    SECTION_LABELS,
    SECTION_LETTERS,
    SUBSTITUTIONS,
    Loop,
    PopGenConfig,
    generate_song,
    generate_songs,
    parse_numeral,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
POPGEN_SCHEMA = SCHEMA["properties"]["corpora"]["additionalProperties"]["properties"]["popgen"]


def config(**kw):
    return PopGenConfig(**{"n_songs": 12, **kw})


# --- the formats -------------------------------------------------------------------------------

def test_annotate_a_hand_written_piece():
    fmt = get_format("chords")
    tokens = ["<s>", "C:maj", "A:min", "F#:hdim7", "Bb:7", "Eb:maj7", "G:sus4", "</s>"]
    cols = fmt.annotate(tokens)
    assert set(cols) == set(fmt.columns) == {"root", "quality", "is_special"}
    assert cols["root"].tolist() == [-1, 0, 9, 6, 10, 3, 7, -1]
    assert [QUALITIES[q] if q >= 0 else None for q in cols["quality"]] == [
        None, "maj", "min", "hdim7", "7", "maj7", "sus4", None]
    assert cols["is_special"].tolist() == [1, 0, 0, 0, 0, 0, 0, 1]
    assert all(cols[c].dtype == fmt.columns[c] for c in cols)
    assert fmt.categories == {"quality": list(QUALITIES)} and fmt.specials == ("<s>", "</s>")
    with pytest.raises(ValueError, match="not a chord token 'H:maj'"):
        fmt.annotate(["H:maj"])
    with pytest.raises(ValueError, match="not a chord token 'C:m9'"):
        fmt.annotate(["C:m9"])


def test_quality_list_and_root_names_are_fixed():
    assert QUALITIES[:11] == ("maj", "min", "dim", "aug", "sus4", "sus2", "7", "maj7", "min7", "hdim7", "dim7")
    assert ROOT_NAMES == tuple("C C# D Eb E F F# G Ab A Bb B".split())


def test_pcset_spelling_is_root_first_and_one_to_one():
    assert pcset_token(0, "maj") == "0-4-7" and pcset_token(7, "7") == "7-11-2-5"
    assert pcset_token(9, "min") == "9-0-4" and pcset_token(4, "aug") == "4-8-0"
    tokens = {pcset_token(r, q) for r in range(12) for q in QUALITIES}
    assert len(tokens) == 12 * len(QUALITIES)  # sus2/sus4 and aug/dim7 roots stay apart
    fmt = get_format("chords-pcset")
    chord_tokens = ["<s>", "C:maj", "G:7", "B:dim7", "D:sus2", "</s>"]
    pcs = [to_pcset(t) for t in chord_tokens]
    assert pcs == ["<s>", "0-4-7", "7-11-2-5", "11-2-5-8", "2-4-9", "</s>"]
    a, b = fmt.annotate(pcs), get_format("chords").annotate(chord_tokens)
    assert fmt.columns == get_format("chords").columns
    assert all(np.array_equal(a[c], b[c]) for c in b)
    with pytest.raises(ValueError, match="not a pitch-set chord token '0-7-4'"):
        fmt.annotate(["0-7-4"])


def test_chord_token_round_trip():
    for r in range(12):
        for q in QUALITIES:
            assert parse_chord(chord_token(r, q)) == (r, q)
    assert chord_token(14, "min") == "D:min"


# --- the loop table ----------------------------------------------------------------------------

def test_roman_numerals():
    assert parse_numeral("I") == (0, "maj") and parse_numeral("vi") == (9, "min")
    assert parse_numeral("V7") == (7, "7") and parse_numeral("ii7") == (2, "min7")
    assert parse_numeral("IVmaj7") == (5, "maj7") and parse_numeral("bVII") == (10, "maj")
    assert parse_numeral("viiø7") == (11, "hdim7") and parse_numeral("viio") == (11, "dim")
    assert parse_numeral("Vsus4") == (7, "sus4") and parse_numeral("III+") == (4, "aug")
    with pytest.raises(ValueError, match="'X7'"):
        parse_numeral("X7")
    for numeral, substitute in SUBSTITUTIONS.items():
        parse_numeral(numeral), parse_numeral(substitute)


def test_loop_table():
    by_period = {p: [loop for loop in LOOPS if loop.period == p] for p in (4, 8)}
    assert len(by_period[4]) >= 6 and len(by_period[8]) >= 6 and len(LOOPS) == len(by_period[4]) + len(by_period[8])
    names = {loop.name: loop for loop in LOOPS}
    assert len(names) == len(LOOPS)
    assert names["axis"].numerals == ("I", "V", "vi", "IV")
    assert names["canon"].numerals == tuple("I V vi iii IV I IV V".split())
    for loop in LOOPS:
        assert len(loop.chords) == loop.period  # every numeral parses


def test_ambiguity_flags_on_hand_picked_loops():
    flags = {loop.name: loop.ambiguous for loop in LOOPS}
    assert flags["IV-V-iii-vi-ii-V-I-I"] and flags["I-IV-V-IV"] and flags["canon"] and flags["mixolydian"]
    assert not flags["axis"] and not flags["doo-wop"] and not flags["circle-of-fifths"]
    assert Loop("x", ("I", "V", "I", "IV")).ambiguous and not Loop("y", ("I", "V", "V7", "IV")).ambiguous
    assert any(not loop.ambiguous for loop in LOOPS if loop.period == 8)


# --- the generator -----------------------------------------------------------------------------

def _expected_token(song, t, fmt="chords"):
    c = {name: int(song.columns[name][t]) for name in COLUMNS}
    numeral = LOOPS[c["loop_id"]].numerals[c["loop_position"]]
    if c["substituted"]:
        numeral = SUBSTITUTIONS[numeral]
    degree, quality = parse_numeral(numeral)
    assert c["degree"] == degree
    spell = chord_token if fmt == "chords" else pcset_token
    return spell(c["key"] + degree, quality)


@pytest.mark.parametrize("keys", ["c", "random"])
def test_columns_tell_every_token(keys):
    songs = generate_songs(config(n_songs=30, keys=keys, substitution_rate=0.2), seed=5)
    n_substituted = 0
    for song in songs:
        assert all(len(song.columns[c]) == len(song.tokens) for c in COLUMNS)
        assert all(song.columns[c].dtype == np.int32 for c in COLUMNS)
        assert [_expected_token(song, t) for t in range(len(song.tokens))] == song.tokens
        n_substituted += int(song.columns["substituted"].sum())
        assert set(song.columns["key"].tolist()) == {song.key}
        if keys == "c":
            assert song.key == 0
        # the sections: labels from the form, passes of whole periods, positions after the offset
        letters = song.form.split("-")
        assert [s.label for s in song.sections] == [SECTION_LABELS[SECTION_LETTERS[x]] for x in letters]
        for index, s in enumerate(song.sections):
            rows = slice(s.start, s.start + s.n_tokens)
            assert s.n_tokens == s.repeats * s.period and 2 <= s.repeats <= 4
            assert (song.columns["section"][rows] == index).all()
            assert (song.columns["section_label"][rows] == SECTION_LABELS.index(s.label)).all()
            assert (song.columns["period"][rows] == s.period).all() and LOOPS[s.loop_id].period == s.period
            assert (song.columns["ambiguous"][rows] == int(LOOPS[s.loop_id].ambiguous)).all()
            j = np.arange(s.n_tokens)
            assert song.columns["loop_position"][rows].tolist() == ((s.offset + j) % s.period).tolist()
            assert song.columns["loop_repeat"][rows].tolist() == (j // s.period).tolist()
        assert sum(s.n_tokens for s in song.sections) == len(song.tokens)
    assert n_substituted > 0
    offsets = {s.offset for song in songs for s in song.sections}
    assert len(offsets) > 4  # offsets are random, not always 0
    assert {s.period for song in songs for s in song.sections} == {4, 8}


def test_returning_sections_repeat_their_loop():
    songs = generate_songs(config(n_songs=40, substitution_rate=0.0), seed=1)
    n_returns = 0
    for song in songs:
        first = {}
        for s in song.sections:
            tokens = song.tokens[s.start:s.start + s.n_tokens]
            occurrence = song.columns["section_occurrence"][s.start:s.start + s.n_tokens]
            assert (occurrence == s.occurrence).all()
            # every pass of a section is the same chords (rate 0)
            assert tokens == tokens[:s.period] * s.repeats
            if s.label in first:
                n_returns += 1
                f = first[s.label]
                assert (s.loop_id, s.offset, s.occurrence) == (f.loop_id, f.offset, f.occurrence + 1)
                f_tokens = song.tokens[f.start:f.start + f.n_tokens]
                n = min(len(tokens), len(f_tokens))
                assert tokens[:n] == f_tokens[:n]
                first[s.label] = s
            else:
                assert s.occurrence == 0
                first[s.label] = s
        # each label its own loop (the table has enough of each period)
        loops = {s.label: s.loop_id for s in song.sections}
        assert len(set(loops.values())) == len(loops)
    assert n_returns > 40


def test_substitutions_change_only_substituted_tokens():
    plain = generate_songs(config(substitution_rate=0.0), seed=2)
    some = generate_songs(config(substitution_rate=0.3), seed=2)
    more = generate_songs(config(substitution_rate=0.6), seed=2)
    for a, b, c in zip(plain, some, more):
        assert [s.to_json() for s in a.sections] == [s.to_json() for s in b.sections]
        changed = np.array([x != y for x, y in zip(a.tokens, b.tokens)])
        assert np.array_equal(changed, b.columns["substituted"] == 1)
        assert not (b.columns["substituted"] > c.columns["substituted"]).any()  # a superset at a higher rate
        assert a.columns["substituted"].sum() == 0


def test_seeded_determinism():
    a, b = generate_songs(config(), seed=3), generate_songs(config(), seed=3)
    c = generate_songs(config(), seed=4)
    assert [s.tokens for s in a] == [s.tokens for s in b]
    assert all(np.array_equal(x.columns[k], y.columns[k]) for x, y in zip(a, b) for k in COLUMNS)
    assert [s.tokens for s in a] != [s.tokens for s in c]
    # a song does not depend on how many songs are drawn; config.seed wins over the run seed
    assert [s.tokens for s in generate_songs(config(n_songs=5), seed=3)] == [s.tokens for s in a[:5]]
    assert generate_song(7, config(seed=3), seed=99).tokens == a[7].tokens


def test_keys_c_versus_random_is_a_transposition():
    in_c = generate_songs(config(n_songs=40, keys="c"), seed=6)
    in_key = generate_songs(config(n_songs=40, keys="random"), seed=6)
    assert len({s.key for s in in_key}) > 6
    for a, b in zip(in_c, in_key):
        assert a.key == 0 and a.form == b.form
        for k in COLUMNS:
            if k != "key":
                assert np.array_equal(a.columns[k], b.columns[k]), k
        moved = [chord_token(parse_chord(t)[0] + b.key, parse_chord(t)[1]) for t in a.tokens]
        assert moved == b.tokens


def test_pcset_tokens_spell_the_same_songs():
    chords = generate_songs(config(keys="random"), seed=8)
    pcsets = generate_songs(config(keys="random", tokens="chords-pcset"), seed=8)
    for a, b in zip(chords, pcsets):
        assert [to_pcset(t) for t in a.tokens] == b.tokens
        assert [_expected_token(b, t, "chords-pcset") for t in range(len(b.tokens))] == b.tokens


def test_custom_forms_periods_repeats_and_zero_offsets():
    songs = generate_songs(config(forms=["V-C-V-C"], periods=[8], repeats=[3, 3], offsets="zero"), seed=0)
    for song in songs:
        assert song.form == "V-C-V-C" and len(song.tokens) == 4 * 3 * 8
        assert all(s.offset == 0 and s.period == 8 for s in song.sections)
        assert song.columns["loop_position"][:8].tolist() == list(range(8))
    assert set(FORMS) >= {"V-P-C-V-P-C-B-C"}


@pytest.mark.parametrize("settings, key", [
    ({"periods": [4, 5]}, "periods"),
    ({"periods": []}, "periods"),
    ({"forms": ["V-P-C-X"]}, "forms"),
    ({"forms": "V-C"}, "forms"),
    ({"repeats": [4, 2]}, "repeats"),
    ({"repeats": [3]}, "repeats"),
    ({"substitution_rate": 1.5}, "substitution_rate"),
    ({"keys": "minor"}, "keys"),
    ({"tokens": "roman"}, "tokens"),
    ({"offsets": "fixed"}, "offsets"),
    ({"n_songs": 0}, "n_songs"),
    ({"loops": 3}, "loops"),
])
def test_config_errors_name_the_key(settings, key):
    with pytest.raises(ValueError, match=rf"corpus 'pop': popgen\.{key}\b"):
        PopGenConfig.from_spec(settings, where="corpus 'pop'")
    with pytest.raises(ValueError, match=rf"corpus 'pop': popgen\.{key}\b"):
        build_corpus("pop", {"source": "popgen", "popgen": settings}, "unused", seed=0)


def test_unknown_section_letter_and_period_are_explained():
    with pytest.raises(ValueError, match=r"popgen\.forms 'V-X': unknown section letter 'X'.*C chorus"):
        PopGenConfig.from_spec({"forms": ["V-X"]})
    with pytest.raises(ValueError, match=r"popgen\.periods has 5, but the loop table has loops of period 4 and 8"):
        PopGenConfig.from_spec({"periods": [5]})


# --- the corpus --------------------------------------------------------------------------------

def test_schema_defaults_equal_the_config_defaults():
    props = POPGEN_SCHEMA["properties"]
    assert POPGEN_SCHEMA["additionalProperties"] is False
    assert set(props) == {f.name for f in dataclasses.fields(PopGenConfig)}
    defaults = PopGenConfig()
    for name in props:
        value = getattr(defaults, name)
        if value is None:
            assert "default" not in props[name], name
        else:
            assert props[name]["default"] == value and type(props[name]["default"]) is type(value), name
    item = SCHEMA["properties"]["corpora"]["additionalProperties"]
    assert "popgen" in item["properties"]["source"]["enum"]
    # what Snakemake's validation fills in is what the library uses
    entry = {"source": "popgen", "popgen": {"n_songs": 60}}
    validator_filling_defaults()(item).validate(entry)
    assert PopGenConfig.from_spec(entry["popgen"]) == PopGenConfig(n_songs=60)
    with pytest.raises(ValidationError):
        validator_filling_defaults()(item).validate({"source": "popgen", "popgen": {"period": [4]}})
    assert set(props["tokens"]["enum"]) == {"chords", "chords-pcset"}


def test_round_trip_through_write_corpus(tmp_path):
    songs = generate_songs(config(n_songs=6), seed=0)
    ids = [f"popgen/{s.index}" for s in songs]
    rows = [{"id": i, "source": "popgen", "status": "ok", "reason": ""} for i in ids]
    write_corpus(tmp_path, "pop", [s.tokens for s in songs], ids, rows, seed=0, heldout_fraction=0.2,
                 format="chords", token_columns={c: [s.columns[c] for s in songs] for c in COLUMNS})
    corpus = load_corpus(tmp_path)
    assert corpus.format == "chords" and corpus.token_vocab.format == "chords"
    assert [corpus.tune_tokens(i) for i in range(len(corpus))] == [s.tokens for s in songs]
    assert set(corpus.token_columns) == set(COLUMNS)
    for i, song in enumerate(songs):
        assert all(np.array_equal(corpus.token_columns[c][i], song.columns[c]) for c in COLUMNS)


def test_build_corpus_source_popgen(tmp_path):
    spec = {"source": "popgen", "popgen": {"n_songs": 20, "keys": "random", "substitution_rate": 0.2}}
    counts = build_corpus("pop", spec, tmp_path / "pop", seed=11, heldout_fraction=0.1)
    assert counts["n_items"] == counts["n_ok"] == 20 and counts["n_skipped"] == 0 and counts["format"] == "chords"
    rows = read_manifest(tmp_path / "pop")
    assert [r["id"] for r in rows] == [f"popgen/{i}" for i in range(20)] and {r["status"] for r in rows} == {"ok"}
    corpus = load_corpus(tmp_path / "pop")
    assert corpus.attrs["format"] == "chords" and corpus.tune_ids == [r["id"] for r in rows]
    assert corpus.vocab[:2] == ["<s>", "</s>"] and corpus.vocab[2:] == sorted(corpus.vocab[2:])
    occurring = {t for i in range(len(corpus)) for t in corpus.tune_tokens(i)}
    assert set(corpus.vocab[2:]) == occurring
    expected = generate_songs(PopGenConfig(**spec["popgen"]), seed=11)  # the run seed seeds the songs
    assert [corpus.tune_tokens(i) for i in range(20)] == [s.tokens for s in expected]
    assert all(np.array_equal(corpus.token_columns[c][i], s.columns[c]) for i, s in enumerate(expected) for c in COLUMNS)

    doc = json.loads((tmp_path / "pop" / "songs.json").read_text())
    assert doc["config"]["seed"] == 11 and doc["config"]["n_songs"] == 20 and doc["columns"] == list(COLUMNS)
    assert [loop["name"] for loop in doc["loops"]] == [loop.name for loop in LOOPS]
    assert len(doc["songs"]) == 20
    for entry, song in zip(doc["songs"], expected):
        assert entry["id"] == f"popgen/{song.index}" and entry["form"] == song.form and entry["key"] == song.key
        assert [(s["label"], s["loop_id"], s["period"], s["offset"], s["ambiguous"]) for s in entry["sections"]] == [
            (s.label, s.loop_id, s.period, s.offset, s.ambiguous) for s in song.sections]

    # the pcset spelling: another format, the same columns
    spec["popgen"]["tokens"] = "chords-pcset"
    build_corpus("pop", spec, tmp_path / "pcs", seed=11, heldout_fraction=0.1)
    pcs = load_corpus(tmp_path / "pcs")
    assert pcs.format == "chords-pcset"
    assert pcs.tune_tokens(3) == [to_pcset(t) for t in corpus.tune_tokens(3)]


def test_defaults_when_popgen_key_is_absent(tmp_path):
    counts = build_corpus("pop", {"source": "popgen", "popgen": {"n_songs": 3}}, tmp_path / "a", seed=0)
    doc = json.loads((tmp_path / "a" / "songs.json").read_text())
    assert doc["config"] == {**dataclasses.asdict(PopGenConfig()), "n_songs": 3, "seed": 0}
    assert counts["n_ok"] == 3


def test_cli_builds_popgen(tmp_path, capsys):
    cli_main(["corpus", "build", "--name", "pop", "--source", "popgen", "--n-songs", "4", "--periods", "4",
              "--keys", "random", "--seed", "2", "--out", str(tmp_path / "cli")])
    counts = json.loads(capsys.readouterr().out)
    assert counts["n_ok"] == 4
    corpus = load_corpus(tmp_path / "cli")
    assert set(np.concatenate(corpus.token_columns["period"]).tolist()) == {4}
