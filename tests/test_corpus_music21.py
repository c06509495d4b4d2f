"""ABC -> folk-rnn tokens: real tunes from music21's corpus transposed by hand, and ABC features."""

import textwrap
from pathlib import Path

import pytest

from musinterp.corpus import music21_abc
from musinterp.corpus.abc_fields import SkipTune, source_signature, transposition_to_c
from musinterp.corpus.music21_abc import convert_abc_file, convert_abc_tune, convert_collection, corpus_root
from musinterp.corpus.tokens import key_alterations, token_type


def ryans(filename: str) -> list[str]:
    records = convert_abc_file(corpus_root() / "ryansMammoth" / filename, f"ryansMammoth/{filename}")
    assert len(records) == 1 and records[0].status == "ok", records
    return records[0].tokens


def abc(text: str) -> str:
    return textwrap.dedent(text).strip() + "\n"


# --- real tunes, transposed by hand ---------------------------------------------------------------


def test_g_major_reel_goes_up_a_fourth():
    # K:G, M:C|:  vdefd cAA2 | BGG2 cAA2 | defd cAAc | BGAF G2G2 | ...  ABAG EAB=c | ...
    # G->c up a fourth: d->g e->a f#->b c->f A->d B->e G->c F#->B E->A; `=c` -> f needs no mark.
    tokens = ryans("AllTheWayToGalwayReel.abc")
    part_a = "g a b g f d d 2 | e c c 2 f d d 2 | g a b g f d d f | e c d B c 2 c 2 |".split()
    part_b = "d e d c A d e f | c d c B A B c 2 | d e d c B d f 2 | e c d B c 2 c 2 |".split()
    assert tokens[:2] == ["M:2/2", "K:Cmaj"]
    # The fourth line starts BGAG instead of ABAG.
    assert tokens[2:] == part_a * 2 + part_b + "e c d c".split() + part_b[4:]
    assert not any(t.startswith(("=", "^", "_")) for t in tokens)


def test_a_dorian_jig_goes_up_a_minor_third():
    # K:Ador:  uG | EGG ABc | edc BcA | BGG dGG | BGd BAG | EGG ABc | def a2e | edc Bcd | ecA A2 :|
    # A->c up a minor third: G->B(flat) E->G A->c B->d c->e(flat) d->f e->g f#->a a->c'.
    tokens = ryans("OneBottleMoreJig.abc")
    first_part = ("M:6/8 K:Cdor B | G B B c d e | g f e d e c | d B B f B B | d B f d c B | "
                  "G B B c d e | f g a c' 2 g | g f e d e f | g e c c 2 :|").split()
    # |: ua | gef g2a | gef g3 | BGG dGG | Bcd BAG | EAA ABc | ...
    second_part = "|: c' | b g a b 2 c' | b g a b 3 | d B B f B B | d e f d c B | G c c c d e |".split()
    assert tokens[: len(first_part)] == first_part
    assert tokens[len(first_part): len(first_part) + len(second_part)] == second_part


def test_a_minor_jig_with_decorations_slurs_and_leading_tone():
    # K:Amin:  uE|v(A>B)A c2d|"4"edc (B2.A)|(G>"4"A)G B2c|dge dBG|\
    #          (A>B)A c2d|"4"edc Bcd|"^4""_fz"(e2.A) AB^G|(A3 "_4""^0"a2)::
    #          uB|v(c3/2d/e/f/) (g2.a)|gec gec|...
    # A->c up a minor third; ^G (the leading tone) -> B natural, written =B in C minor.
    tokens = ryans("BriskYoungLadsJig.abc")
    expected = ("M:6/8 K:Cmin G | c > d c e 2 f | g f e d 2 c | B > c B d 2 e | f b g f d B | "
                "c > d c e 2 f | g f e d e f | g 2 c c d =B | c 3 c' 2 :| |: d | "
                "e 3/2 f /2 g /2 a /2 b 2 c' | b g e b g e |").split()
    assert tokens[: len(expected)] == expected


# --- ABC features ---------------------------------------------------------------------------------


def test_abc_features_are_mapped_or_dropped():
    tune = abc("""
        X:1
        T:Features
        C:Someone
        M:4/4
        L:1/8
        K:D
        "D"~A2 (3BAG F>E D2-|D4 {g}f2 =f f|F f [DF]2 [A,D]/2 z/2 z|]
        w:some lyrics here
        """)
    # D->C down a tone. The natural on f carries to the next f in the bar (e flat, written once);
    # F (another octave) keeps its sharp; the next bar starts afresh.
    assert convert_abc_tune(tune) == (
        "M:4/4 K:Cmaj G 2 (3 A G F E > D C 2 | C 4 e 2 _e e | E e [ C 2 E 2 ] [ G, /2 C /2 ] z /2 z |"
    ).split()


def test_unit_length_endings_and_repeats():
    tune = abc("""
        X:2
        M:2/4
        L:1/16
        K:Am
        |:A2B2 c4|1 e8:|2 e4 a4||
        """)
    assert convert_abc_tune(tune) == "M:2/4 K:Cmin |: c d e 2 |1 g 4 :| |2 g 2 c' 2 |".split()


def test_double_repeat_cut_time_and_fused_broken_rhythm():
    tune = abc("""
        X:3
        M:C|
        L:1/8
        K:Gmix
        G2 B>c d2>e f2::g4 f2 d2|]
        """)
    assert convert_abc_tune(tune) == "M:2/2 K:Cmix c 2 e > f g 2> a b 2 :| |: c' 4 b 2 g 2 |".split()


def test_missing_key_field_means_c_major():
    assert convert_abc_tune("X:4\nM:3/4\nL:1/8\nCDE|c2z2e2|\n") == "M:3/4 K:Cmaj C D E | c 2 z 2 e 2 |".split()


def test_transposition_takes_the_smaller_step_and_a_tritone_goes_down():
    assert {t: transposition_to_c(t).semitones for t in ["C", "D", "E", "F", "F#", "G", "A", "Bb", "B"]} == {
        "C": 0, "D": -2, "E": -4, "F": -5, "F#": -6, "G": 5, "A": 3, "Bb": 2, "B": 1}


@pytest.mark.parametrize("tonic", ["C", "G", "D", "A", "E", "B", "F#", "F", "Bb", "Eb", "Ab"])
@pytest.mark.parametrize("mode,word", [("major", "Maj"), ("minor", "Min"), ("dorian", "Dor"), ("mixolydian", "Mix")])
def test_music21_key_signatures_agree_with_the_token_grammar(tonic, mode, word):
    assert source_signature(tonic, mode) == key_alterations(f"[K:{tonic}{word}]")


@pytest.mark.parametrize("body,reason", [
    ("K:Ephr\nEFGA|", "mode phrygian not supported"),
    ("K:F Lydian\nFGAB|", "mode lydian not supported"),
    ("K:G\nGABc|[K:D]defg|", "key change mid-tune"),
    ("K:G\nGABc|\nM:3/4\nGAB|", "meter change mid-tune"),
    ("K:G\n", "no notes"),
    ("K:Hp\nABcd|", "unrecognised key K:Hp"),
    ("K:G\nV:1\nGABc|\nV:2\nDEFG|", "multiple voices (V:) not supported"),
])
def test_skipped_tunes_carry_reasons(body, reason):
    with pytest.raises(SkipTune, match=reason.replace("(", r"\(").replace(")", r"\)")):
        convert_abc_tune(f"X:1\nT:Skip me\nM:4/4\nL:1/8\n{body}\n")


def test_free_meter_is_skipped():
    with pytest.raises(SkipTune, match=r"free meter"):
        convert_abc_tune("X:1\nM:none\nL:1/8\nK:G\nGABc|\n")


def test_a_file_yields_one_record_per_tune_and_never_raises(tmp_path, monkeypatch):
    path = tmp_path / "book.abc"
    path.write_text(abc("""
        % a book
        X:7
        M:2/4
        L:1/8
        K:G
        GABc|d4|

        X:8
        M:2/4
        L:1/8
        K:Bphr
        B2c2|

        X:7
        M:2/4
        L:1/8
        K:D
        DEFG|A4|
        """))
    records = convert_abc_file(path, "test/book.abc")
    assert [(r.id, r.status, r.reason) for r in records] == [
        ("test/book.abc#7", "ok", ""),
        ("test/book.abc#8", "skipped", "mode phrygian not supported"),
        ("test/book.abc#7-2", "ok", ""),
    ]
    assert records[2].tokens == "M:2/4 K:Cmaj C D E F | G 4 |".split()

    def broken(text):
        raise RuntimeError("converter bug")

    monkeypatch.setattr(music21_abc, "convert_abc_tune", broken)
    records = convert_abc_file(path, "test/book.abc")
    assert [r.status for r in records] == ["skipped"] * 3
    assert records[0].reason == "conversion error: RuntimeError: converter bug"


def test_real_collection_sample_converts():
    records = list(convert_collection("oneills1850", max_tunes=150))
    assert len(records) == 150 and len({r.id for r in records}) == 150
    assert all(r.id.startswith("oneills1850/") and "#" in r.id for r in records)
    assert all(r.source.startswith("music21/corpus/oneills1850/") for r in records)
    ok = [r for r in records if r.status == "ok"]
    assert len(ok) >= 0.9 * len(records)
    assert all(r.reason for r in records if r.status == "skipped")
    for r in ok:
        assert r.tokens[0].startswith("M:") and r.tokens[1] in ("K:Cmaj", "K:Cmin", "K:Cdor", "K:Cmix")
        assert not [t for t in r.tokens if token_type(t) == "other"], r.id
        assert any(token_type(t) == "pitch" for t in r.tokens)


def test_collections_are_found_in_music21():
    for name in music21_abc.COLLECTIONS:
        files = music21_abc.collection_files(name)
        assert files and all(isinstance(f, Path) and f.suffix == ".abc" for f in files)
    with pytest.raises(ValueError, match="noSuchCollection"):
        music21_abc.collection_files("noSuchCollection")
