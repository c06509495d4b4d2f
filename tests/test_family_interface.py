"""The family interface: a family defined only in tests/ goes through every stage.

``toymlp`` (tests/toy_family.py) has one token site and one piece site. It is registered here and
then trained, recorded, given SAEs, feature tables and loss recovered through the same library
calls the workflow makes; none of them has a line about it.
"""

import json

import numpy as np
import pytest
import torch
from toy_family import ToyConfig, ToyMLP, register_toy_family

from musinterp.activations import ActivationFile
from musinterp.corpus.store import write_corpus
from musinterp.features import build_features
from musinterp.models import load, train_model
from musinterp.recording import record_activations
from musinterp.registry import FAMILIES, get_family, site_names
from musinterp.sae.saelens import saelens_cfg, save_sae
from musinterp.sae.trainer import train_sae
from musinterp.splice import add_loss_recovered

NOTES = ["C", "D", "E", "F", "G", "A", "B", "c"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A 40-tune corpus, a toymlp trained on it for two epochs, and its activations."""
    register_toy_family()
    tmp = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    tunes = []
    for _ in range(40):
        bars = [" ".join(rng.choice(NOTES, 4)) for _ in range(rng.integers(2, 5))]
        tunes.append(("M:4/4 K:Cmaj " + " | ".join(bars) + " |").split())
    ids = [f"toy/{i}" for i in range(len(tunes))]
    rows = [{"id": i, "source": "generated", "status": "ok", "reason": ""} for i in ids]
    corpus = write_corpus(tmp / "corpus", "toy", tunes, ids, rows, seed=0, heldout_fraction=0.25)
    train_model("toymlp", tmp / "corpus", tmp / "model", {"d_model": 8, "d_code": 4},
                {"epochs": 2, "batch_size": 8, "lr": 0.01})
    stats = record_activations(tmp / "model", tmp / "corpus", tmp / "acts", subject="toy")
    return tmp, corpus, stats


def test_registry_holds_the_toy_family(toy_run):
    assert "toymlp" in FAMILIES
    assert site_names("toymlp", {"d_model": 8, "d_code": 4}) == ["hidden", "code"]


def test_training_goes_through_the_interface(toy_run):
    tmp, corpus, _ = toy_run
    model, meta = load(tmp / "model")
    assert isinstance(model, ToyMLP) and meta["family"] == "toymlp" and meta["format"] == "folkrnn-v2"
    history = meta["history"]["valid_loss"]
    assert len(history) == 2 and history[-1] < np.log(len(corpus.vocab))  # better than uniform
    assert (tmp / "model" / "samples.txt").read_text() == ""  # toymlp does not generate


def test_one_pass_writes_token_and_piece_files(toy_run):
    tmp, corpus, stats = toy_run
    model, _ = load(tmp / "model")
    assert stats["sites"] == {"hidden": 8, "code": 4}
    with ActivationFile(tmp / "acts" / "hidden.h5") as f:
        assert f.granularity == "token" and f.n_rows == sum(len(t) + 1 for t in corpus.tunes)
        assert {"piece", "position", "token", "next_token", "split", "token_type", "bar"} <= set(f.columns())
        hidden, piece, position = f.acts[:], f.column("piece"), f.column("position")
    with ActivationFile(tmp / "acts" / "code.h5") as f:
        assert f.granularity == "piece" and f.n_rows == len(corpus.tunes)
        assert sorted(f.columns()) == ["n_tokens", "piece", "split"]
        assert list(f.column("n_tokens")) == [len(corpus.tunes[p]) + 1 for p in f.column("piece")]
        assert list(f.column("split")) == [int(corpus.split[p]) for p in f.column("piece")]
        code, code_piece = f.acts[:], f.column("piece")
    # Independent reference: the model run on one piece alone, by hand.
    p = 5
    ids = torch.tensor([[corpus.stoi["<s>"], *corpus.tunes[p].tolist()]])
    with torch.no_grad():
        e = model.embed(ids)
        c = torch.tanh(model.encode_code[0](e.mean(1)))
        h = torch.relu(model.mix.embedding_in(e) + model.mix.code_in(c)[:, None])
    np.testing.assert_allclose(code[code_piece == p][0], c[0].numpy(), atol=1e-6)
    rows = np.flatnonzero(piece == p)
    np.testing.assert_allclose(hidden[rows[np.argsort(position[rows])]], h[0].numpy(), atol=1e-6)


def identity_sae(path, d, site):
    """ReLU(x) − ReLU(−x) = x: an SAE of width 2d that reconstructs exactly."""
    eye = np.eye(d)
    tensors = {name: torch.as_tensor(t, dtype=torch.float32).contiguous() for name, t in
               dict(W_enc=np.hstack([eye, -eye]), b_enc=np.zeros(2 * d), W_dec=np.vstack([eye, -eye]),
                    b_dec=np.zeros(d)).items()}
    save_sae(path, tensors, saelens_cfg("standard", d, 2 * d, subject="toy", site=site, provenance={}))
    (path / "metrics.json").write_text("{}")


@pytest.mark.parametrize("site, d", [("hidden", 8), ("code", 4)])
def test_sae_features_and_loss_recovered_at_both_granularities(toy_run, site, d):
    tmp, corpus, _ = toy_run
    acts = tmp / "acts" / f"{site}.h5"
    sae_dir = tmp / "sae" / site
    metrics = train_sae(acts, sae_dir, arch="topk", site=site, width=2 * d, k=2, epochs=2, batch_size=16)
    assert metrics["site"] == site and 0 <= metrics["fvu"] and metrics["l0"] <= 2 + 1e-9
    metrics = add_loss_recovered(sae_dir, tmp / "model", acts, site=site, corpus_dir=tmp / "corpus")
    assert metrics["splice_site"] == site and np.isfinite(metrics["loss_recovered"])
    # The clean loss is the model's own loss on the held-out pieces, computed here directly.
    model, meta = load(tmp / "model")
    held = [corpus.tunes[i] for i in corpus.indices("heldout")]
    batch = model.make_batch(held, meta["vocab"])
    with torch.no_grad():
        expected = float(model.loss(batch))
    assert metrics["loss_clean"] == pytest.approx(expected, rel=1e-5)
    assert metrics["splice_tokens"] == batch.n_targets
    table = build_features(acts, sae_dir, tmp / "features" / site / "features.parquet",
                           dashboard_dir=tmp / "features" / site / "dashboard", top_k=3, context=2)
    assert (table["kind"] == "latent").sum() == 2 * d and (table["kind"] == "neuron").sum() == d
    assert (tmp / "features" / site / "dashboard" / "index.html").exists()
    # An exact reconstruction spliced in leaves the loss unchanged: loss recovered is 1.
    identity_sae(tmp / "identity" / site, d, site)
    exact = add_loss_recovered(tmp / "identity" / site, tmp / "model", acts, site=site, corpus_dir=tmp / "corpus")
    assert exact["loss_sae"] == pytest.approx(exact["loss_clean"], abs=1e-6)
    assert exact["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert json.loads((tmp / "identity" / site / "metrics.json").read_text()) == exact


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_registry_sites_equal_the_models(family):
    """For every registered family, the registry's sites (names, granularity, width,
    replaceable) are the model's own, for the default config and a changed one."""
    spec = get_family(family)
    for params in ({}, _changed_params(spec)):
        config = spec.make_config(params, vocab_size=11)
        model = spec.model_class()(config)
        assert spec.site_list(params, vocab_size=11) == model.sites()
        replaceable = [s.name for s in model.sites() if s.replaceable]
        for name in replaceable:
            model.hook_point(name)  # every site declared replaceable has a hook point


def _changed_params(spec):
    """The family's config with every integer size halved (at least 1), to catch sites that ignore it."""
    from dataclasses import fields

    defaults = spec.config()
    return {f.name: max(1, getattr(defaults, f.name) // 2) for f in fields(spec.config)
            if f.name != "vocab_size" and type(getattr(defaults, f.name)) is int}


def test_toy_family_is_in_the_registry_test():
    register_toy_family()
    spec = get_family("toymlp")
    model = ToyMLP(ToyConfig(vocab_size=5))
    assert spec.site_list({}, vocab_size=5) == model.sites()


def test_next_token_batch_frames_shifts_and_pads():
    from musinterp.models.interface import next_token_batch

    batch = next_token_batch([np.array([5, 6]), np.array([7])], bos=0, eos=1)
    assert batch.inputs.tolist() == [[0, 5, 6], [0, 7, 1]]
    assert batch.targets.tolist() == [[5, 6, 1], [7, 1, 1]]
    assert batch.lengths.tolist() == [3, 2] and batch.n_targets == 5
    assert batch.mask.tolist() == [[True, True, True], [True, True, False]]
    cut = next_token_batch([np.array([5, 6]), np.array([7])], bos=0, eos=1, max_len=3)
    assert cut.inputs.tolist() == [[0, 5], [0, 7]] and cut.targets.tolist() == [[5, 6], [7, 1]]


def test_vocab_single_and_multi_field():
    from musinterp.corpus.vocab import Vocab

    v = Vocab(["<s>", "</s>", "C", "D"], format="folkrnn-v2")
    assert v.encode(["C", "D", "C"]).tolist() == [2, 3, 2] and v.decode([3, 0]) == ["D", "<s>"]
    assert v == ["<s>", "</s>", "C", "D"] and Vocab.from_json(v.to_json()) == v
    with pytest.raises(ValueError, match="piece 7: tokens not in the vocabulary: \\['E'\\]"):
        v.encode(["C", "E"], where="piece 7")
    m = Vocab(fields={"type": ["start", "note"], "pitch": ["0", "60", "62"]}, format="events")
    ids = m.encode([("start", "0"), ("note", "62")])
    assert ids.tolist() == [[0, 0], [1, 2]] and m.decode(ids) == [("start", "0"), ("note", "62")]
    assert m.sizes == [2, 3] and m.unknown([("note", "61")]) == [("note", "61")]
    assert Vocab.from_json(m.to_json()).fields == m.fields and m.label(("note", "62")) == "note/62"
    with pytest.raises(TypeError, match="index a field"):
        len(m)
