"""Corpus files: round trip, the split, failures that leave nothing behind, clear load errors."""

import json

import h5py
import numpy as np
import pytest

from musinterp.corpus import build_corpus, load_corpus, read_manifest, store, write_corpus
from musinterp.corpus.store import CorpusFileError, split_tunes

TUNES = [
    "M:4/4 K:Cmaj |: C D E F G 2 G 2 :|".split(),
    "M:6/8 K:Cmin G | c 2 d e > f g |".split(),
    "M:3/4 K:Cdor c 3/2 d /2 e 2 | (3 f g a b 2 |".split(),
    "M:4/4 K:Cmix [ C E ] z _B, |1 c 4 :| |2 c 4 |".split(),
]
IDS = ["t#1", "t#2", "t#3", "t#4"]


def manifest(ids=IDS, skipped=(("t#5", "mode phrygian not supported"),)):
    rows = [{"id": i, "source": "test.abc", "status": "ok", "reason": ""} for i in ids]
    rows += [{"id": i, "source": "test.abc", "status": "skipped", "reason": r} for i, r in skipped]
    return rows


def test_round_trip(tmp_path):
    written = write_corpus(tmp_path / "c", "tiny", TUNES, IDS, manifest(), seed=3, heldout_fraction=0.25)
    corpus = load_corpus(tmp_path / "c")
    assert corpus.name == "tiny" and corpus.tune_ids == IDS
    assert corpus.vocab[:2] == ["<s>", "</s>"] and corpus.vocab[2:] == sorted(corpus.vocab[2:])
    assert [corpus.tune_tokens(i) for i in range(len(corpus))] == TUNES
    assert all(t.dtype == np.int32 for t in corpus.tunes)
    assert corpus.stoi["|"] == corpus.vocab.index("|")
    np.testing.assert_array_equal(corpus.split, written.split)
    assert corpus.attrs["n_tunes"] == 4 and corpus.attrs["n_tokens"] == sum(map(len, TUNES))
    assert corpus.attrs["seed"] == 3 and corpus.attrs["format"] == "folkrnn-v2"
    assert corpus.attrs["producer"].startswith("musinterp ")

    with h5py.File(tmp_path / "c" / "tokens.h5") as f:
        assert f["tokens"].dtype == np.int32 and f["offsets"].dtype == np.int64
        assert f["split"].dtype == np.uint8
        assert list(f["offsets"][()]) == [0] + np.cumsum([len(t) for t in TUNES]).tolist()
    assert json.loads((tmp_path / "c" / "vocab.json").read_text())["format"] == "folkrnn-v2"

    rows = read_manifest(tmp_path / "c")
    assert [(r["id"], r["status"], r["reason"], r["n_tokens"]) for r in rows] == [
        (i, "ok", "", len(t)) for i, t in zip(IDS, TUNES)] + [("t#5", "skipped", "mode phrygian not supported", 0)]
    header = (tmp_path / "c" / "manifest.tsv").read_text().splitlines()[0]
    assert header == "id\tsource\tstatus\treason\tn_tokens"


def test_split_is_seeded_and_keeps_a_heldout_tune():
    a, b, c = split_tunes(100, 1, 0.1), split_tunes(100, 1, 0.1), split_tunes(100, 2, 0.1)
    assert a.dtype == np.uint8 and a.sum() == 10
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert split_tunes(2, 0, 0.0).tolist().count(1) == 1  # at least one held out...
    assert split_tunes(3, 0, 0.99).tolist().count(0) == 1  # ...and at least one for training
    assert split_tunes(1, 0, 0.5).tolist() == [0]


def test_indices_by_split(tmp_path):
    corpus = write_corpus(tmp_path, "tiny", TUNES, IDS, manifest(), seed=0, heldout_fraction=0.5)
    train, heldout = corpus.indices("train"), corpus.indices("heldout")
    assert sorted(train.tolist() + heldout.tolist()) == [0, 1, 2, 3] and len(heldout) == 2
    with pytest.raises(ValueError, match="split"):
        corpus.indices("test")


def test_given_vocabulary_is_used_and_checked(tmp_path):
    vocab = ["<s>", "</s>"] + sorted({t for tune in TUNES for t in tune}, reverse=True) + ["unused"]
    corpus = write_corpus(tmp_path / "a", "tiny", TUNES, IDS, manifest(), 0, 0.25, vocab=vocab)
    assert load_corpus(tmp_path / "a").vocab == vocab and corpus.tune_tokens(0) == TUNES[0]
    with pytest.raises(ValueError, match=r"tiny.*not in the vocabulary.*'\(3'"):
        write_corpus(tmp_path / "b", "tiny", TUNES, IDS, manifest(), 0, 0.25, vocab=vocab[:-1][:10])
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


def test_no_usable_tune_names_the_corpus(tmp_path):
    rows = manifest(ids=[], skipped=[("x#1", "no notes"), ("x#2", "no notes")])
    with pytest.raises(ValueError, match=r"corpus 'empty' has no usable tune.*no notes"):
        write_corpus(tmp_path / "e", "empty", [], [], rows, seed=0, heldout_fraction=0.1)
    assert not (tmp_path / "e").exists() or not any((tmp_path / "e").iterdir())


def test_inconsistent_inputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="duplicate tune ids"):
        write_corpus(tmp_path, "d", TUNES[:2], ["a", "a"], manifest(["a"]), 0, 0.5)
    with pytest.raises(ValueError, match="without an 'ok' manifest row"):
        write_corpus(tmp_path, "d", TUNES[:2], ["a", "b"], manifest(["a"]), 0, 0.5)


def test_a_failure_while_writing_leaves_no_files(tmp_path, monkeypatch):
    out = tmp_path / "corpus"

    def fail(value):
        raise RuntimeError("disk full")

    # tokens.h5 and vocab.json are written before the manifest fails.
    monkeypatch.setattr(store, "_clean_field", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        write_corpus(out, "tiny", TUNES, IDS, manifest(), seed=0, heldout_fraction=0.25)
    assert list(out.iterdir()) == []


def test_a_failure_keeps_the_previous_complete_corpus(tmp_path, monkeypatch):
    out = tmp_path / "corpus"
    write_corpus(out, "tiny", TUNES, IDS, manifest(), seed=0, heldout_fraction=0.25)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fail(value):
        raise OSError("io error")

    monkeypatch.setattr(store, "_clean_field", fail)
    with pytest.raises(OSError, match="io error"):
        write_corpus(out, "tiny", TUNES[:2], IDS[:2], manifest(IDS[:2]), seed=0, heldout_fraction=0.25)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_load_errors_name_the_file(tmp_path):
    write_corpus(tmp_path / "c", "tiny", TUNES, IDS, manifest(), seed=0, heldout_fraction=0.25)
    (tmp_path / "c" / "tokens.h5").rename(tmp_path / "c" / "moved.h5")
    with pytest.raises(FileNotFoundError, match=r"c/tokens\.h5.*missing"):
        load_corpus(tmp_path / "c")
    (tmp_path / "c" / "tokens.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(CorpusFileError, match=r"tokens\.h5: not a readable HDF5"):
        load_corpus(tmp_path / "c")
    (tmp_path / "c" / "moved.h5").rename(tmp_path / "c" / "tokens.h5")
    (tmp_path / "c" / "vocab.json").write_text('{"format": "folkrnn-v2", "tokens": ["<s>"')
    with pytest.raises(CorpusFileError, match=r"vocab\.json: not valid JSON"):
        load_corpus(tmp_path / "c")
    (tmp_path / "c" / "vocab.json").write_text('{"format": "folkrnn-v2", "tokens": ["<s>", "</s>"]}')
    with pytest.raises(CorpusFileError, match=r"tokens\.h5: token ids outside the vocabulary"):
        load_corpus(tmp_path / "c")
    (tmp_path / "c" / "manifest.tsv").write_text("id\tstatus\n")
    with pytest.raises(CorpusFileError, match=r"manifest\.tsv: header"):
        read_manifest(tmp_path / "c")


def test_build_from_a_local_folkrnn_file(tmp_path):
    text = "\n".join(" ".join(t) for t in TUNES[:2]) + "\n\n" + " ".join(TUNES[2]) + "\n\n\n"
    text += "this is not a tune\n\n" + " ".join(TUNES[3]) + "\n"
    path = tmp_path / "tunes.txt"
    path.write_text(text.replace(" K:Cmaj", "\nK:Cmaj"))  # header tokens on their own line, as folk-rnn
    counts = build_corpus("local", {"source": "local", "path": str(path), "format": "folkrnn"},
                          tmp_path / "out", seed=0, heldout_fraction=0.3)
    assert counts["n_items"] == 4 and counts["n_ok"] == 3 and counts["n_skipped"] == 1
    assert counts["n_train"] + counts["n_heldout"] == 3 and counts["n_heldout"] >= 1
    assert list(counts["skip_reasons"]) == ["unrecognised tokens is not this tune"]
    corpus = load_corpus(tmp_path / "out")
    # The first two tunes were not separated by a blank line, so they are one item.
    assert corpus.tune_tokens(0) == TUNES[0] + TUNES[1]
    assert corpus.tune_ids == ["tunes.txt#1", "tunes.txt#2", "tunes.txt#4"]


def test_build_from_music21(tmp_path):
    spec = {"source": "music21", "collections": ["ryansMammoth", "airdsAirs"], "max_tunes_per_collection": 12}
    counts = build_corpus("m21", spec, tmp_path / "m21", seed=1, heldout_fraction=0.1)
    assert counts["n_items"] == 24 and counts["n_ok"] >= 21
    rows = read_manifest(tmp_path / "m21")
    assert len(rows) == 24 and {r["id"].split("/")[0] for r in rows} == {"ryansMammoth", "airdsAirs"}
    corpus = load_corpus(tmp_path / "m21")
    assert len(corpus) == counts["n_ok"] and corpus.n_tokens == counts["n_tokens"]
    assert all(corpus.tune_tokens(i)[1].startswith("K:C") for i in range(len(corpus)))


def test_build_rejects_bad_specs(tmp_path):
    with pytest.raises(ValueError, match=r"corpus 'x': unknown source 'ftp'"):
        build_corpus("x", {"source": "ftp"}, tmp_path, 0, 0.1)
    with pytest.raises(ValueError, match=r"corpus 'x': source music21 needs a list 'collections'"):
        build_corpus("x", {"source": "music21"}, tmp_path, 0, 0.1)
    with pytest.raises(FileNotFoundError, match=r"corpus 'x': .*nope\.txt does not exist"):
        build_corpus("x", {"source": "local", "path": str(tmp_path / "nope.txt")}, tmp_path, 0, 0.1)
