"""ReLU+L1 SAE and the shared trainer, on synthetic activation files that follow the contract."""

import json

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from musinterp.sae import ReluL1Config, ReluL1SAE, load_sae, train_sae
from musinterp.sae.saelens import fold_input_normalisation
from musinterp.sae.trainer import (
    ActivationStore,
    checkpoint_dir_for,
    iter_shuffled_rows,
)

VOCAB = ["<s>", "</s>", "|", "G", "A", "B", "c", "d", "2", "/2"]
TOKEN_TYPES = ["special", "meta", "pitch", "rest", "duration", "bar"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_acts(path, acts, piece_len=50, heldout_every=5, seed=0):
    """An activation file as docs/ARCHITECTURE.md fixes it; every ``heldout_every``-th piece held out."""
    n, d = acts.shape
    rng = np.random.default_rng(seed)
    piece = np.arange(n) // piece_len
    token = rng.integers(0, len(VOCAB), n)
    split = (piece % heldout_every == heldout_every - 1).astype(np.uint8)
    with h5py.File(path, "w") as f:
        f.create_dataset("acts", data=acts, chunks=(max(1, min(64, n)), d) if n else None, compression="gzip")
        tokens = f.create_group("tokens")
        tokens["piece"] = piece.astype(np.int32)
        tokens["position"] = (np.arange(n) % piece_len).astype(np.int32)
        tokens["token"] = token.astype(np.int32)
        tokens["next_token"] = np.append(token[1:], -1).astype(np.int32)
        tokens["split"] = split
        tokens["token_type"] = np.array([0, 0, 5, 2, 2, 2, 2, 2, 4, 4], dtype=np.int8)[token]
        tokens["token_type"].attrs["categories"] = json.dumps(TOKEN_TYPES)
        f.attrs.update(
            subject="tinyfolk",
            site="lstm2",
            d=d,
            vocab=json.dumps(VOCAB),
            split=json.dumps(
                {
                    "train": sorted(set(piece[split == 0].tolist())),
                    "heldout": sorted(set(piece[split == 1].tolist())),
                }
            ),
            producer="musinterp test",
            family="folkrnn",
        )
    return path


def planted_dictionary(n=10_000, d=32, n_true=64, active=3, seed=0):
    """x = Σ sparse positive codes · unit directions, plus a per-dimension offset and scale."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(n_true, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    codes = np.zeros((n, n_true))
    for t in range(n):
        codes[t, rng.choice(n_true, size=active, replace=False)] = rng.uniform(0.5, 1.5, size=active)
    return (codes @ directions).astype(np.float32), directions


def raw_acts(n=600, d=8, seed=1):
    """Dense, non-centred, unevenly scaled activations (so z-scoring really matters)."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) * rng.uniform(0.1, 5.0, d) + rng.uniform(-3, 3, d)).astype(np.float32)


QUICK = dict(width=32, batch_size=64, epochs=2, eval_every=5)


# --- the module -------------------------------------------------------------------------------


def test_module_follows_the_s1_recipe():
    sae = ReluL1SAE(ReluL1Config(d_in=6, d_sae=10, l1_coeff=0.5), torch.Generator().manual_seed(0))
    assert torch.all(sae.b_enc == -1.0)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(10))
    x = torch.randn(7, 6)
    with torch.no_grad():
        x_hat, z = sae(x)
    assert torch.equal(z, torch.relu(x @ sae.W_enc + sae.b_enc))
    assert torch.allclose(x_hat, z @ sae.W_dec)  # no decoder bias
    loss, parts, latents = sae.training_loss(x)
    assert torch.equal(latents, z)
    assert list(parts) == list(ReluL1SAE.loss_parts)
    mse = ((x_hat - x) ** 2).sum() / (7 * 6)  # mean over tokens and dimensions
    l1 = z.abs().sum() / 7  # per-token sum, mean over tokens
    assert parts["mse"] == pytest.approx(float(mse), rel=1e-6)
    assert parts["l1"] == pytest.approx(float(l1), rel=1e-6)
    assert float(loss.detach()) == pytest.approx(float(mse + 0.5 * l1), rel=1e-6)
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.after_optimizer_step()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(10))


def test_folding_reproduces_the_normalised_model_exactly(tmp_path):
    sae = ReluL1SAE(ReluL1Config(d_in=8, d_sae=24), torch.Generator().manual_seed(3))
    with torch.no_grad():
        sae.b_enc.uniform_(-1, 0.5)
    x = torch.from_numpy(raw_acts())
    mean, std = x.double().mean(0), x.double().std(0)
    _, tensors, _ = sae.saelens_export()
    folded = fold_input_normalisation(tensors, mean, std)
    x_hat_n, z = sae((x - mean.float()) / std.float())
    with torch.no_grad():
        z_raw = torch.relu(x @ folded["W_enc"] + folded["b_enc"])
        x_hat_raw = z_raw @ folded["W_dec"] + folded["b_dec"]
    assert torch.allclose(z_raw, z, atol=1e-5)
    assert torch.allclose(x_hat_raw, x_hat_n * std.float() + mean.float(), atol=1e-5)


# --- the trainer -------------------------------------------------------------------------------


def test_trained_sae_on_raw_activations_equals_the_trained_model(tmp_path):
    acts = write_acts(tmp_path / "acts.h5", raw_acts())
    metrics = train_sae(acts, tmp_path / "sae", **QUICK)
    sae = load_sae(tmp_path / "sae")
    with h5py.File(acts) as f:
        x = torch.from_numpy(f["acts"][...])[torch.from_numpy(f["tokens/split"][...] == 1)]
    x_hat = sae(x)
    fvu = float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    l0 = float((sae.encode(x) != 0).sum(1).double().mean())
    # metrics.json was measured with the normalised model before folding.
    assert fvu == pytest.approx(metrics["fvu"], abs=1e-5)
    assert l0 == pytest.approx(metrics["l0"], abs=1e-5)


def test_planted_sparse_dictionary_is_recovered(tmp_path):
    acts, directions = planted_dictionary()
    path = write_acts(tmp_path / "acts.h5", acts)
    metrics = train_sae(
        path, tmp_path / "sae", width=128, l1_coeff=3e-2, lr=3e-3, batch_size=256, epochs=20, eval_every=10**6
    )
    learned = load_sae(tmp_path / "sae").W_dec.double().numpy()
    learned /= np.linalg.norm(learned, axis=1, keepdims=True)
    best_cosine = (directions @ learned.T).max(axis=1)
    assert (best_cosine > 0.9).mean() >= 0.9, np.sort(best_cosine)
    assert metrics["fvu"] < 0.2
    assert metrics["l0"] < 12


def test_same_seed_same_weights(tmp_path):
    acts = write_acts(tmp_path / "acts.h5", raw_acts())
    for name in ("a", "b"):
        train_sae(acts, tmp_path / name, seed=7, **QUICK)
    train_sae(acts, tmp_path / "c", seed=8, **QUICK)
    a, b, c = (load_file(tmp_path / name / "sae_weights.safetensors") for name in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["W_enc"], c["W_enc"])
    assert (tmp_path / "a" / "training_log.tsv").read_text() == (
        tmp_path / "b" / "training_log.tsv"
    ).read_text()


def test_directory_contract(tmp_path):
    acts = write_acts(tmp_path / "acts.h5", raw_acts(d=8))
    metrics = train_sae(acts, tmp_path / "sae", **QUICK)
    out = tmp_path / "sae"
    assert sorted(p.name for p in out.iterdir()) == [
        "cfg.json",
        "metrics.json",
        "sae_weights.safetensors",
        "training_log.tsv",
    ]
    cfg = json.loads((out / "cfg.json").read_text())
    assert list(cfg) == [
        "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
        "reshape_activations", "metadata", "architecture",
    ]  # fmt: skip
    assert cfg["architecture"] == "standard"
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"], cfg["device"]) == (8, 32, "float32", "cpu")
    assert cfg["apply_b_dec_to_input"] is False
    assert cfg["normalize_activations"] == "none"
    meta = cfg["metadata"]
    assert (meta["subject"], meta["site"], meta["model_name"], meta["hook_name"]) == (
        "tinyfolk",
        "lstm2",
        "tinyfolk",
        "lstm2",
    )
    assert meta["sae_lens_version"].startswith("6.")
    assert meta["provenance"]["acts_path"] == str(acts)
    assert meta["provenance"]["settings"]["width"] == 32
    tensors = load_file(out / "sae_weights.safetensors")
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        "W_enc": (8, 32), "b_enc": (32,), "W_dec": (32, 8), "b_dec": (8,),
    }  # fmt: skip
    assert all(t.dtype == torch.float32 for t in tensors.values())

    for key in (
        "fvu",
        "l0",
        "dead_fraction",
        "dense_fraction",
        "n_train_tokens",
        "n_heldout_tokens",
        "seconds",
        "settings",
    ):
        assert key in metrics
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert (metrics["n_train_tokens"], metrics["n_heldout_tokens"]) == (500, 100)
    assert metrics["tokens_seen"] == 2 * 500

    lines = (out / "training_log.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    assert header == [
        "step", "tokens_seen", "lr", "loss", "mse", "l1", "dead_latents", "heldout_fvu", "heldout_l0",
    ]  # fmt: skip
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    assert len(rows) == metrics["steps"] == 2 * 8  # 500 rows in batches of 64: 8 per epoch
    evaluated = [int(r["step"]) for r in rows if r["heldout_fvu"]]
    assert evaluated == [5, 10, 15, 16]  # every eval_every steps, and the last step
    assert int(rows[-1]["tokens_seen"]) == 1000
    # warm-up over the first 5 % of 16 steps (1 step), decay over the last 20 % (3 steps)
    assert [float(r["lr"]) for r in rows] == pytest.approx(
        [1e-3] * 13 + [1e-3 * 3 / 3, 1e-3 * 2 / 3, 1e-3 / 3]
    )
    assert set(metrics["final_train_loss_parts"]) == {"loss", "mse", "l1"}
    assert metrics["resumed_from_step"] is None
    assert not checkpoint_dir_for(out).exists()


def test_default_width_and_max_tokens(tmp_path):
    acts = write_acts(tmp_path / "acts.h5", raw_acts(d=8))
    metrics = train_sae(acts, tmp_path / "sae", batch_size=64, max_tokens=200)
    assert metrics["d_sae"] == 4 * 8
    assert metrics["tokens_seen"] == 200
    assert metrics["steps"] == 4  # 64 + 64 + 64 + 8


def test_shuffle_visits_every_training_row_once_per_epoch(tmp_path):
    acts = raw_acts(n=1000, d=4)
    acts[:, 0] = np.arange(1000)  # row ids ride along in dimension 0
    path = write_acts(tmp_path / "acts.h5", acts)

    def epoch(store, seed=0, epoch=0, start=0):
        return list(
            iter_shuffled_rows(store, 0, batch_size=48, buffer_rows=100, seed=seed, epoch=epoch, start=start)
        )

    with ActivationStore(path, block_bytes=1) as store:  # one HDF5 chunk (64 rows) per block
        train_rows = np.flatnonzero(store.split == 0)
        batches = epoch(store)
        again = epoch(store)
        next_epoch = epoch(store, epoch=1)
        other_seed = epoch(store, seed=1)
        resumed = epoch(store, start=5 * 48)  # mid-epoch, mid-fill
    seen = np.concatenate(batches)[:, 0].astype(int)
    assert sorted(seen) == train_rows.tolist()
    assert all(len(b) == 48 for b in batches[:-1]) and 0 < len(batches[-1]) <= 48
    assert not np.array_equal(seen, np.sort(seen))  # shuffled across blocks
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    # The order is a function of (seed, epoch) and position only: resuming at a batch gives the rest.
    assert len(resumed) == len(batches) - 5
    assert all(np.array_equal(a, b) for a, b in zip(batches[5:], resumed, strict=True))
    for other in (next_epoch, other_seed):
        ids = np.concatenate(other)[:, 0].astype(int)
        assert sorted(ids) == train_rows.tolist() and not np.array_equal(ids, seen)
    with pytest.raises(ValueError, match="multiple of batch_size"):
        epoch(store, start=7)


# --- bad input ---------------------------------------------------------------------------------


def _no_leftovers(tmp_path, name="sae"):
    return (
        not (tmp_path / name).exists()
        and not checkpoint_dir_for(tmp_path / name).exists()
        and not any(p.name.startswith(f".{name}.") for p in tmp_path.iterdir())
    )


@pytest.mark.parametrize("arch", [dict(arch="relu_l1"), dict(arch="topk", k=2), dict(arch="jumprelu")])
def test_nan_row_is_named_and_nothing_is_left(tmp_path, arch):
    acts = raw_acts()
    acts[437, 3] = np.nan  # a held-out row
    path = write_acts(tmp_path / "acts.h5", acts)
    with pytest.raises(ValueError, match=rf"{tmp_path / 'acts.h5'}: /acts row 437 contains NaN"):
        train_sae(path, tmp_path / "sae", **QUICK, **arch)
    assert _no_leftovers(tmp_path)
    acts[437, 3] = 0.0
    acts[12, 0] = np.inf  # a training row
    write_acts(path, acts)
    with pytest.raises(ValueError, match="row 12 "):
        train_sae(path, tmp_path / "sae", **QUICK, **arch)
    assert _no_leftovers(tmp_path)


def test_failure_during_training_leaves_nothing(tmp_path):
    path = write_acts(tmp_path / "acts.h5", raw_acts())
    with pytest.raises(FloatingPointError, match="diverged"):
        train_sae(path, tmp_path / "sae", lr=float("inf"), **QUICK)
    assert _no_leftovers(tmp_path)


def test_empty_and_unsplit_stores_are_refused(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        train_sae(write_acts(tmp_path / "empty.h5", np.zeros((0, 8), np.float32)), tmp_path / "sae")
    with pytest.raises(ValueError, match="no held-out rows"):
        train_sae(write_acts(tmp_path / "noheld.h5", raw_acts(), heldout_every=10**6), tmp_path / "sae")
    with pytest.raises(ValueError, match="no training rows"):
        train_sae(write_acts(tmp_path / "notrain.h5", raw_acts(), heldout_every=1), tmp_path / "sae")
    bad_split = write_acts(tmp_path / "badsplit.h5", raw_acts())
    with h5py.File(bad_split, "a") as f:
        f["tokens/split"][5] = 2
    with pytest.raises(ValueError, match="/tokens/split row 5 is 2"):
        train_sae(bad_split, tmp_path / "sae")
    with pytest.raises(ValueError, match="unknown SAE architecture"):
        train_sae(write_acts(tmp_path / "ok.h5", raw_acts()), tmp_path / "sae", arch="gated")
    wrong_d = write_acts(tmp_path / "wrongd.h5", raw_acts(d=8))
    with h5py.File(wrong_d, "a") as f:
        f.attrs["d"] = 9
    with pytest.raises(ValueError, match=rf"{tmp_path / 'wrongd.h5'}: attribute d=9 but /acts has 8 columns"):
        train_sae(wrong_d, tmp_path / "sae")
    assert _no_leftovers(tmp_path)
