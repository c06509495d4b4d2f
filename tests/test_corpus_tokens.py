"""The folk-rnn token grammar and annotate_tune, checked by hand and on real tunes."""

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from musinterp.corpus.folkrnn_text import read_folkrnn_text
from musinterp.corpus.tokens import (
    TOKEN_TYPES,
    annotate_tune,
    format_duration,
    key_alterations,
    parse_duration,
    pitch_to_midi,
    split_broken,
    token_type,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared development data folder ../shared/data is not here)")
    return path


def test_token_types_by_hand():
    expected = {
        "<s>": "special", "</s>": "special",
        "M:4/4": "meta", "K:Cmaj": "meta", "[L:1/8]": "meta", "[M:3/4]": "meta", "[K:GMaj]": "meta",
        "^F": "pitch", "=B,": "pitch", "c'": "pitch", "_e'": "pitch", "C,": "pitch", "d,": "pitch",
        "z": "rest",
        "2": "duration", "/2": "duration", "3/2": "duration", "/4": "duration", "3/4": "duration",
        "12": "duration", "2/4": "duration",
        "|": "bar", "||": "bar", "|]": "bar",
        "|:": "repeat", ":|": "repeat", "|1": "repeat", "|2": "repeat", "::": "repeat",
        "(3": "tuplet", "(2": "tuplet", "(9": "tuplet",
        ">": "broken", "<": "broken", "2>": "broken", "/2<": "broken", "4>": "broken", ">>": "broken",
        "[": "chord", "]": "chord",
        "hello": "other", "H": "other", "%": "other",
    }
    assert {tok: token_type(tok) for tok in expected} == expected


def test_every_folkrnn_v2_vocabulary_token_has_a_type():
    vocab = json.loads(shared("folkrnn_v2_vocab.json").read_text()).values()
    assert len(vocab) == 137
    assert [tok for tok in vocab if token_type(tok) == "other"] == []
    counts = {kind: sum(token_type(tok) == kind for tok in vocab) for kind in TOKEN_TYPES}
    # 7 meters + 4 modes; 2 specials; 2 chord brackets; z; `|`; `|:` `:|` `|1` `|2`.
    assert counts["meta"] == 11 and counts["special"] == 2 and counts["chord"] == 2
    assert counts["rest"] == 1 and counts["bar"] == 1 and counts["repeat"] == 4


def test_pitch_to_midi_octaves_and_accidentals():
    assert [pitch_to_midi(t) for t in ["C,", "C", "c", "c'", "B,", "b'"]] == [48, 60, 72, 84, 59, 95]
    assert pitch_to_midi("^F") == 66 and pitch_to_midi("_B,") == 58 and pitch_to_midi("=b") == 83
    cmin = key_alterations("K:Cmin")
    assert pitch_to_midi("B", cmin) == 70 and pitch_to_midi("=B", cmin) == 71
    assert pitch_to_midi("B", cmin, {("B", 4): 0}) == 71  # a natural earlier in the bar
    assert pitch_to_midi("b", cmin, {("B", 4): 0}) == 82  # ...only in its own octave


def test_key_signatures():
    assert key_alterations("K:Cmaj") == {}
    assert key_alterations("K:Cmin") == {"B": -1, "E": -1, "A": -1}
    assert key_alterations("K:Cdor") == {"B": -1, "E": -1}
    assert key_alterations("K:Cmix") == {"B": -1}
    assert key_alterations("[K:GMaj]") == {"F": 1}
    assert key_alterations("[K:DMin]") == {"B": -1}
    assert key_alterations("[K:ADor]") == {"F": 1}
    assert key_alterations("[K:F#Min]") == {"F": 1, "C": 1, "G": 1}
    assert key_alterations("[K:BbLyd]") == {"B": -1}


def test_durations():
    assert [parse_duration(t) for t in ["2", "/2", "3/2", "/4", "3/4", "12", "/", "//", "3/"]] == [
        2, Fraction(1, 2), Fraction(3, 2), Fraction(1, 4), Fraction(3, 4), 12, Fraction(1, 2),
        Fraction(1, 4), Fraction(3, 2)]
    assert [format_duration(Fraction(x)) for x in ["1", "2", "1/2", "3/2", "1/4", "3/4", "12"]] == [
        "", "2", "/2", "3/2", "/4", "3/4", "12"]
    assert split_broken("2>") == ("2", ">") and split_broken("/2<") == ("/2", "<") and split_broken(">") == ("", ">")


@given(st.integers(1, 64), st.sampled_from([1, 2, 4, 8, 16]))
def test_duration_spelling_round_trips(numerator, denominator):
    length = Fraction(numerator, denominator)
    spelled = format_duration(length)
    assert (parse_duration(spelled) if spelled else Fraction(1)) == length


def test_annotate_tune_by_hand():
    tokens = ("<s> M:4/4 K:Cmin B, | G, C 2 > E (3 c d e =B | B b [ C 2 E ] z :| |: "
              "A 2> B </s>").split()
    a = annotate_tune(tokens)
    assert set(a) == {"token_type", "bar", "position_in_bar", "metric_position", "pitch", "duration"}
    assert all(len(col) == len(tokens) for col in a.values())
    assert a["token_type"].dtype == np.int8 and a["pitch"].dtype == np.int16
    assert [TOKEN_TYPES[c] for c in a["token_type"][:6]] == ["special", "meta", "meta", "pitch", "bar", "pitch"]
    rows = {i: (tok, int(a["bar"][i]), int(a["position_in_bar"][i]), float(a["metric_position"][i]),
                int(a["pitch"][i]), float(a["duration"][i])) for i, tok in enumerate(tokens)}
    expected = [
        ("<s>", 0, 0, 0.0, -1, 0.0),
        ("M:4/4", 0, 0, 0.0, -1, 0.0),
        ("K:Cmin", 0, 0, 0.0, -1, 0.0),
        ("B,", 0, 0, 7.0, 58, 1.0),      # anacrusis: one eighth before the first bar line; B flat
        ("|", 0, 1, 8.0, -1, 0.0),
        ("G,", 1, 0, 0.0, 55, 1.0),
        ("C", 1, 1, 1.0, 60, 3.0),       # C 2 > E: the 2 is lengthened to 3 ...
        ("2", 1, 2, 1.0, -1, 0.0),
        (">", 1, 3, 4.0, -1, 0.0),
        ("E", 1, 4, 4.0, 63, 0.5),       # ... and E halved; E flat in C minor
        ("(3", 1, 5, 4.5, -1, 0.0),
        ("c", 1, 6, 4.5, 72, 2 / 3),     # three eighths in the time of two
        ("d", 1, 7, 4.5 + 2 / 3, 74, 2 / 3),
        ("e", 1, 8, 4.5 + 4 / 3, 75, 2 / 3),
        ("=B", 1, 9, 6.5, 71, 1.0),      # explicit natural ...
        ("|", 1, 10, 7.5, -1, 0.0),
        ("B", 2, 0, 0.0, 70, 1.0),       # ... ends at the bar line: B flat again
        ("b", 2, 1, 1.0, 82, 1.0),
        ("[", 2, 2, 2.0, -1, 0.0),
        ("C", 2, 3, 2.0, 60, 2.0),       # a chord lasts as long as its first note
        ("2", 2, 4, 2.0, -1, 0.0),
        ("E", 2, 5, 2.0, 63, 1.0),
        ("]", 2, 6, 2.0, -1, 0.0),
        ("z", 2, 7, 4.0, -1, 1.0),
        (":|", 2, 8, 5.0, -1, 0.0),
        ("|:", 2, 0, 5.0, -1, 0.0),      # `:| |:` is one bar line
        ("A", 3, 0, 0.0, 68, 3.0),       # fused "2>": A 2 lengthened to 3, A flat
        ("2>", 3, 1, 3.0, -1, 0.0),
        ("B", 3, 2, 3.0, 70, 0.5),
        ("</s>", 3, 0, 0.0, -1, 0.0),
    ]
    for i, row in enumerate(expected):
        got = rows[i]
        assert got[:3] == row[:3] and got[4] == row[4], (i, got, row)
        assert got[3] == pytest.approx(row[3], abs=1e-5) and got[5] == pytest.approx(row[5], abs=1e-5), (i, got, row)


def test_bar_accidentals_are_per_octave_and_reset_at_repeats():
    a = annotate_tune("K:Cmaj ^f f F | f ^F :| F".split())
    assert a["pitch"].tolist() == [-1, 78, 78, 65, -1, 77, 66, -1, 65]


def test_blog_tune_has_eight_eighths_per_bar():
    """Sturm's C-major reel: every full bar is 8 notes long, and 9 tokens with its bar line."""
    tune = read_folkrnn_text(shared("folkrnn_samples/v2_blog_tune.txt"))[0]
    tokens = ["<s>"] + tune.tokens + ["</s>"]
    a = annotate_tune(tokens)
    bar_lines = [i for i, t in enumerate(tokens) if token_type(t) in ("bar", "repeat")]
    assert a["metric_position"][bar_lines[0]] == 8.0  # the pickup ends on the first bar line
    assert a["bar"][bar_lines[0]] == 0 and a["bar"][bar_lines[0] + 1] == 1
    full = [i for i in bar_lines if a["metric_position"][i] == 8.0]
    nine_tokens = [i for i in full if a["position_in_bar"][i] == 8]
    assert len(full) == 15 and len(nine_tokens) == 13  # counted by hand


def test_annotate_folkwiki_tunes_bars_add_up():
    """On real folkwiki tunes (L:1/16 and 1/8, chords, triplets, broken rhythm) most bars are full."""
    tunes = read_folkrnn_text(shared("folkwiki/9_nov_folkwiki.txt"))[:300]
    full = total = 0
    for tune in tunes:
        a = annotate_tune(tune.tokens)
        meter = Fraction(tune.tokens[1][3:-1])
        unit = Fraction(tune.tokens[0][3:-1])
        kinds = [token_type(t) for t in tune.tokens]
        for i, kind in enumerate(kinds):
            if kind in ("bar", "repeat") and kinds[i - 1] not in ("bar", "repeat") and a["bar"][i] > 0:
                total += 1
                full += abs(a["metric_position"][i] - float(meter / unit)) < 1e-4
        pitches = [pitch_to_midi(t) for t in tune.tokens if token_type(t) == "pitch"]
        assert min(pitches) >= 36 and max(pitches) <= 100
    assert total > 3000 and full / total > 0.9


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(
    ["<s>", "</s>", "M:4/4", "M:6/8", "K:Cmin", "[L:1/16]", "C", "^c", "_B,", "z", "2", "/2", "3/2",
     "|", "|:", ":|", "|1", "(3", "(2", ">", "<", "2>", "[", "]", "junk"]), max_size=60))
def test_annotate_is_total_and_consistent(tokens):
    a = annotate_tune(tokens)
    kinds = [TOKEN_TYPES[c] for c in a["token_type"]]
    assert all(len(col) == len(tokens) for col in a.values())
    assert all((p >= 0) == (k == "pitch") for p, k in zip(a["pitch"], kinds))
    assert all((d > 0) == (k in ("pitch", "rest")) for d, k in zip(a["duration"], kinds))
    assert np.all(np.diff(a["bar"]) >= 0) and np.all(a["metric_position"] >= 0)
