"""Feature reports on a tiny activation file with planted latents."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from musinterp.features import MIN_TOKEN_COUNT, build_features
from musinterp.sae import save_sae, train_sae
from musinterp.sae.saelens import saelens_cfg

VOCAB = ["<s>", "</s>", "|", "G", "A", "B", "c", "d", "2", "/2"]
TOKEN_TYPES = ["special", "meta", "pitch", "rest", "duration", "bar"]
TYPE_OF_TOKEN = np.array([0, 0, 5, 2, 2, 2, 2, 2, 4, 4])
N_PIECES, PIECE_LEN, D = 3, 30, 4
PLANTED_PIECE, PLANTED_POSITION = 1, 12
PLANTED_ROW = PLANTED_PIECE * PIECE_LEN + PLANTED_POSITION
BAR = VOCAB.index("|")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def planted_file(path, row_order=None):
    """Neuron 0 spikes once (at PLANTED_ROW, on a G); neuron 1 is high on every bar line."""
    rng = np.random.default_rng(0)
    n = N_PIECES * PIECE_LEN
    piece = np.arange(n) // PIECE_LEN
    position = np.arange(n) % PIECE_LEN
    token = rng.integers(2, len(VOCAB), n)
    token[position == 0] = 0  # <s>
    token[PLANTED_ROW] = VOCAB.index("G")
    acts = rng.normal(scale=0.2, size=(n, D)).astype(np.float32)
    acts[PLANTED_ROW, 0] = 5.0
    acts[token == BAR, 1] += 2.0
    split = (piece == N_PIECES - 1).astype(np.uint8)
    order = np.arange(n) if row_order is None else row_order
    with h5py.File(path, "w") as f:
        f.create_dataset("acts", data=acts[order], chunks=(16, D), compression="gzip")
        tokens = f.create_group("tokens")
        for name, values in (("piece", piece), ("position", position), ("token", token)):
            tokens[name] = values[order].astype(np.int32)
        tokens["next_token"] = np.where(position < PIECE_LEN - 1, np.roll(token, -1), -1)[order].astype(
            np.int32
        )
        tokens["split"] = split[order]
        tokens["token_type"] = TYPE_OF_TOKEN[token][order].astype(np.int8)
        tokens["token_type"].attrs["categories"] = json.dumps(TOKEN_TYPES)
        f.attrs.update(
            subject="tinyfolk", site="lstm2", d=D, vocab=json.dumps(VOCAB), producer="musinterp test",
            family="folkrnn", split=json.dumps({"train": [0, 1], "heldout": [2]}),
        )  # fmt: skip
    return path, acts, token, piece, position


def planted_sae(path):
    """Latent 0 reads neuron 0, latent 1 reads neuron 1, latent 2 can never fire."""
    W_enc = torch.zeros(D, 3)
    W_enc[0, 0] = W_enc[1, 1] = W_enc[2, 2] = 1.0
    tensors = {
        "W_enc": W_enc,
        "b_enc": torch.tensor([-0.5, -0.5, -100.0]),
        "W_dec": W_enc.T.contiguous(),
        "b_dec": torch.zeros(D),
    }
    save_sae(path, tensors, saelens_cfg("standard", D, 3, subject="tinyfolk", site="lstm2", provenance={}))
    return tensors


@pytest.fixture
def planted(tmp_path):
    path, acts, token, piece, position = planted_file(tmp_path / "acts.h5")
    tensors = planted_sae(tmp_path / "sae")
    features = build_features(
        path, tmp_path / "sae", tmp_path / "features.parquet", tmp_path / "dashboard", top_k=5
    )
    return features, acts, token, tensors


def unit(features, kind, index):
    return features[(features["kind"] == kind) & (features["index"] == index)].iloc[0]


def test_planted_top_example_and_context(planted):
    features, acts, token, _ = planted
    top = unit(features, "latent", 0)["top_examples"][0]
    assert (top["row"], top["piece"], top["position"], top["token"]) == (
        PLANTED_ROW,
        PLANTED_PIECE,
        PLANTED_POSITION,
        "G",
    )
    assert top["activation"] == pytest.approx(4.5)
    window = token[PLANTED_ROW - 8 : PLANTED_ROW + 9]
    expected = " ".join(f"⟦{VOCAB[t]}⟧" if i == 8 else VOCAB[t] for i, t in enumerate(window))
    assert top["context"] == expected
    # The same neuron, raw, has the same top row; a context is cut at the start of its piece.
    assert unit(features, "neuron", 0)["top_examples"][0]["row"] == PLANTED_ROW
    for example in unit(features, "neuron", 2)["top_examples"]:
        assert len(example["context"].split()) == 1 + min(example["position"], 8) + min(
            PIECE_LEN - 1 - example["position"], 8
        )


def test_densities_and_ranges_match_numpy(planted):
    features, acts, _, tensors = planted
    z = np.maximum(acts @ tensors["W_enc"].numpy() + tensors["b_enc"].numpy(), 0)
    latents = features[features["kind"] == "latent"].sort_values("index")
    np.testing.assert_allclose(latents["density"], (z > 0).mean(axis=0))
    np.testing.assert_allclose(latents["max_activation"], z.max(axis=0), rtol=1e-6)
    np.testing.assert_allclose(latents["mean_activation"], z.mean(axis=0), rtol=1e-5)
    neurons = features[features["kind"] == "neuron"].sort_values("index")
    threshold = 0.1 * np.abs(acts).max(axis=0)
    np.testing.assert_allclose(neurons["density"], (np.abs(acts) > threshold).mean(axis=0))
    np.testing.assert_allclose(neurons["density_threshold"], threshold, rtol=1e-6)
    np.testing.assert_allclose(neurons["max_activation"], acts.max(axis=0), rtol=1e-6)
    dead = unit(features, "latent", 2)
    assert dead["density"] == 0 and dead["top_examples"] == [] and dead["top_tokens"] == []
    assert len(features) == 3 + D


def test_token_associations(planted):
    features, _, token, _ = planted
    bar_latent = unit(features, "latent", 1)
    assert bar_latent["top_tokens"][0]["token"] == "|"
    assert bar_latent["top_tokens"][0]["count"] == int((token == BAR).sum()) >= MIN_TOKEN_COUNT
    assert bar_latent["top_token_types"][0]["token_type"] == "bar"
    assert all(e["score"] > 0 for e in bar_latent["top_tokens"])
    assert all(e["token"] == "|" for e in bar_latent["top_examples"])


def test_parquet_and_dashboard(planted, tmp_path):
    features, *_ = planted
    stored = pd.read_parquet(tmp_path / "features.parquet")
    assert list(stored.columns) == list(features.columns)
    assert stored[["kind", "index", "density"]].equals(features[["kind", "index", "density"]])
    assert list(stored["top_examples"][0]) == features["top_examples"][0]
    page = (tmp_path / "dashboard" / "index.html").read_text()
    assert "<mark>G</mark>" in page and "Latent 0" in page and "Latent 2" not in page
    assert (tmp_path / "dashboard" / "density_histogram.png").read_bytes()[:4] == b"\x89PNG"


def test_streaming_batches_and_row_order_do_not_matter(planted, tmp_path):
    features, *_ = planted
    small = build_features(
        tmp_path / "acts.h5", tmp_path / "sae", tmp_path / "small.parquet", top_k=5, batch_size=7
    )
    pd.testing.assert_frame_equal(small, features)
    # The same rows stored in another order: same units, same examples (rows renumbered).
    order = np.random.default_rng(1).permutation(N_PIECES * PIECE_LEN)
    path, *_ = planted_file(tmp_path / "shuffled.h5", row_order=order)
    shuffled = build_features(path, tmp_path / "sae", tmp_path / "shuffled.parquet", top_k=5)
    for kind, index in (("latent", 0), ("latent", 1), ("neuron", 3)):
        a, b = unit(features, kind, index), unit(shuffled, kind, index)
        assert a["density"] == b["density"]
        key = lambda e: (e["piece"], e["position"], e["context"])  # noqa: E731
        assert sorted(map(key, a["top_examples"])) == sorted(map(key, b["top_examples"]))


def test_trained_sae_and_mismatches(tmp_path):
    path, *_ = planted_file(tmp_path / "acts.h5")
    train_sae(path, tmp_path / "sae", width=8, batch_size=16, epochs=1)
    features = build_features(path, tmp_path / "sae", tmp_path / "f.parquet")
    assert (features["kind"] == "latent").sum() == 8 and (features["kind"] == "neuron").sum() == D
    planted_sae(tmp_path / "wrong")
    with h5py.File(tmp_path / "wide.h5", "w") as f:
        f["acts"] = np.zeros((4, D + 1), np.float32)
        f["tokens/split"] = np.zeros(4, np.uint8)
        for column in ("piece", "position", "token"):
            f[f"tokens/{column}"] = np.zeros(4, np.int32)
    with pytest.raises(ValueError, match="d_in=4"):
        build_features(tmp_path / "wide.h5", tmp_path / "wrong", tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()
