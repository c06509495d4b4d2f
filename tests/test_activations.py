"""The activation HDF5 contract: shapes, columns, alignment with the model, atomic writing."""

import json

import h5py
import numpy as np
import pytest
import torch

from musinterp.activations import ActivationFile, record_activations
from musinterp.corpus.tokens import TOKEN_TYPES
from musinterp.models import load


def test_every_site_follows_contract(tiny_subject):
    tmp_path, corpus = tiny_subject
    stats = record_activations(tmp_path / "model", tmp_path / "corpus", tmp_path / "acts", subject="s")
    model, _ = load(tmp_path / "model")
    assert set(stats["sites"]) == set(model.site_names())
    n_expected = sum(len(t) + 1 for t in corpus.tunes)  # <s> + body per tune
    for site in model.site_names():
        with ActivationFile(tmp_path / "acts" / f"{site}.h5") as f:
            assert f.n_tokens == n_expected == stats["tokens"]
            assert f.d == (len(corpus.vocab) if site == "softmax" else 12)
            assert f.attrs["site"] == site and int(f.attrs["d"]) == f.d
            assert f.vocab == corpus.vocab
            assert f.categories("token_type") == list(TOKEN_TYPES)
            split = json.loads(f.attrs["split"])
            assert sorted(split["train"] + split["heldout"]) == list(range(len(corpus.tunes)))


def test_rows_align_with_model_and_tokens(tiny_subject):
    tmp_path, corpus = tiny_subject
    record_activations(tmp_path / "model", tmp_path / "corpus", tmp_path / "acts", subject="s",
                       sites=["lstm1_h", "softmax"])
    model, _ = load(tmp_path / "model")
    with ActivationFile(tmp_path / "acts" / "lstm1_h.h5") as f:
        piece, position = f.column("piece"), f.column("position")
        token, next_token = f.column("token"), f.column("next_token")
        rows = np.flatnonzero(piece == 2)
        ids = [corpus.stoi["<s>"]] + corpus.tunes[2].tolist()
        assert token[rows].tolist() == ids
        assert next_token[rows].tolist() == ids[1:] + [corpus.stoi["</s>"]]
        assert position[rows].tolist() == list(range(len(ids)))
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[0]
            expected_h = model.run_with_states(torch.tensor(ids))["lstm1_h"].numpy()
        np.testing.assert_allclose(f.acts[rows], expected_h, atol=1e-6)
        # Musical columns: the tune is TINY_TUNES[2], "M:6/8 K:Cdor G > A B c 2 d | (3 e f g c 3 |"
        types = np.array(f.categories("token_type"))[f.column("token_type")[rows]]
        assert types[:4].tolist() == ["special", "meta", "meta", "pitch"]
        pitch = f.column("pitch")[rows]
        assert pitch[3] == 67 and pitch[types != "pitch"].max() == -1  # G above middle C
        assert f.column("bar")[rows][-1] > f.column("bar")[rows][3]
    with ActivationFile(tmp_path / "acts" / "softmax.h5") as f:
        np.testing.assert_allclose(f.acts[rows], torch.softmax(logits, -1).numpy(), atol=1e-6)


def test_caps_tunes_per_split(tiny_subject):
    tmp_path, corpus = tiny_subject
    record_activations(tmp_path / "model", tmp_path / "corpus", tmp_path / "acts", subject="s",
                       sites=["lstm0_h"], max_tunes={"train": 1, "heldout": 1})
    with ActivationFile(tmp_path / "acts" / "lstm0_h.h5") as f:
        assert len(set(f.column("piece").tolist())) == 2
        assert set(f.column("split").tolist()) == {0, 1}


def test_unknown_site_is_refused(tiny_subject):
    tmp_path, _ = tiny_subject
    with pytest.raises(ValueError, match="unknown sites \\['lstm9_h'\\]"):
        record_activations(tmp_path / "model", tmp_path / "corpus", tmp_path / "acts", subject="s", sites=["lstm9_h"])
    assert not (tmp_path / "acts" / "lstm9_h.h5").exists()


def test_reader_names_file_and_problem(tmp_path):
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["acts"] = np.zeros((3, 2), np.float32)
        f["tokens/piece"] = np.zeros(3, np.int32)
        f["tokens/position"] = np.zeros(3, np.int32)
        f["tokens/token"] = np.zeros(4, np.int32)
    with pytest.raises(ValueError, match="bad.h5: /tokens/token has shape"):
        ActivationFile(bad)
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="junk.h5: not a readable HDF5"):
        ActivationFile(tmp_path / "junk.h5")


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_compression_changes_the_file_not_the_values(tiny_subject, compression):
    tmp_path, _ = tiny_subject
    record_activations(tmp_path / "model", tmp_path / "corpus", tmp_path / "plain", subject="s", sites=["lstm0_h"])
    record_activations(tmp_path / "model", tmp_path / "corpus", tmp_path / "packed", subject="s", sites=["lstm0_h"],
                       compression=compression)
    with h5py.File(tmp_path / "plain" / "lstm0_h.h5") as plain, h5py.File(tmp_path / "packed" / "lstm0_h.h5") as packed:
        assert plain["acts"].compression is None and packed["acts"].compression == compression
        np.testing.assert_array_equal(plain["acts"][:], packed["acts"][:])
    with pytest.raises(ValueError, match="compression must be one of"):
        record_activations(tmp_path / "model", tmp_path / "corpus", tmp_path / "bad", subject="s", compression="zip")
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_corpus_token_columns_reach_the_activation_file(tmp_path):
    """A corpus's per-token columns are stored in tokens.h5 and copied into token-level activation
    files, aligned to the input position that reads each token (−1 at <s>)."""
    from musinterp.corpus.store import load_corpus, write_corpus
    from musinterp.models import build, save

    tunes = [["C", "D", "E"], ["E", "D"]]
    rows = [{"id": i, "source": "inline", "status": "ok", "reason": ""} for i in ("a", "b")]
    loop_pos = [[0, 1, 2], [5, 6]]
    write_corpus(tmp_path / "corpus", "t", tunes, ["a", "b"], rows, seed=0, heldout_fraction=0.5,
                 token_columns={"loop_position": loop_pos})
    corpus = load_corpus(tmp_path / "corpus")
    assert [list(c) for c in corpus.token_columns["loop_position"]] == loop_pos
    save(build("folkrnn", vocab_size=len(corpus.vocab), hidden_size=4, n_layers=1, dropout=0.0),
         tmp_path / "model", {"vocab": corpus.vocab})
    record_activations(tmp_path / "model", tmp_path / "corpus", tmp_path / "acts", subject="s", sites=["lstm0_h"])
    with ActivationFile(tmp_path / "acts" / "lstm0_h.h5") as f:
        piece, position, values = f.column("piece"), f.column("position"), f.column("loop_position")
    for p, expected in enumerate(loop_pos):
        rows_p = np.flatnonzero(piece == p)
        assert list(values[rows_p[np.argsort(position[rows_p])]]) == [-1, *expected]
    with pytest.raises(ValueError, match="token column 'bad' must have one value per token"):
        write_corpus(tmp_path / "c2", "t", tunes, ["a", "b"], rows, seed=0, heldout_fraction=0.5,
                     token_columns={"bad": [[0], [1, 2]]})
