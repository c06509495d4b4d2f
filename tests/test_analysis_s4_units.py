"""S4 units: attribute table, polysemanticity summary and latent matching on constructed files."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from musinterp.analysis import s4_units
from musinterp.analysis.s4_units import match_latents, polysemanticity_summary, unit_attribute_table
from musinterp.sae.saelens import saelens_cfg, save_sae

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# One held-out piece of 10 tokens, repeated 4 times; position 0 is <s> (attributes -1).
ROOT = [-1, 2, 2, 5, 7, 2, 5, 2, 9, 0]
QUALITY = [-1, 0, 1, 0, 2, 0, 1, 1, 0, 2]
LOOP_POSITION = [-1, 0, 1, 2, 3, 0, 1, 2, 3, 0]
SECTION_LABEL = [-1, 1, 1, 1, 1, 3, 3, 3, 3, 3]
QUALITIES = ["maj", "min", "7"]
N_PIECES, N_TRAIN = 4, 8


def write_file(path, acts, columns, categories=None):
    with h5py.File(path, "w") as f:
        f.create_dataset("acts", data=np.asarray(acts, dtype=np.float32))
        g = f.create_group("tokens")
        for name, values in columns.items():
            ds = g.create_dataset(name, data=np.asarray(values))
            if categories and name in categories:
                ds.attrs["categories"] = json.dumps(categories[name])
    return path


def attribute_file(path, seed=0):
    """8 training rows (neuron 1 = 100 there: if they were used, neuron 1 would never be active),
    then 4 held-out pieces. Neuron 0 = 1 exactly where root == 2; neuron 1 = 1 on the first two
    root-2 tokens of each piece (half of them); neuron 2 = -1 on <s> only (0.05 elsewhere, below
    0.1 · max); neuron 3 random."""
    rng = np.random.default_rng(seed)
    held = {"root": ROOT * N_PIECES, "quality": QUALITY * N_PIECES, "degree": ROOT * N_PIECES,
            "loop_position": LOOP_POSITION * N_PIECES, "section_label": SECTION_LABEL * N_PIECES}
    held = {k: np.array(v) for k, v in held.items()}
    n_held = held["root"].size
    root = held["root"]
    acts_held = np.zeros((n_held, 4))
    acts_held[:, 0] = root == 2
    first_two = (root == 2) & (np.arange(n_held) % 10 < 3)
    acts_held[:, 1] = first_two
    acts_held[:, 2] = np.where(root == -1, -1.0, 0.05)
    acts_held[:, 3] = rng.normal(size=n_held)
    acts_train = rng.normal(size=(N_TRAIN, 4))
    acts_train[:, 1] = 100.0
    cols = {"piece": np.r_[np.full(N_TRAIN, 10), np.repeat(np.arange(N_PIECES), 10)],
            "position": np.r_[np.arange(N_TRAIN), np.tile(np.arange(10), N_PIECES)],
            "token": np.zeros(N_TRAIN + n_held, dtype=np.int32),
            "split": np.r_[np.zeros(N_TRAIN), np.ones(n_held)].astype(np.uint8)}
    for k, v in held.items():
        cols[k] = np.r_[rng.integers(0, 3, N_TRAIN), v].astype(np.int32)
    return write_file(path, np.r_[acts_train, acts_held], cols, {"quality": QUALITIES})


def sae_dir(path, W_enc, b_enc):
    W_enc = torch.as_tensor(np.asarray(W_enc), dtype=torch.float32)
    d_in, d_sae = W_enc.shape
    tensors = {"W_enc": W_enc, "b_enc": torch.as_tensor(np.asarray(b_enc), dtype=torch.float32),
               "W_dec": W_enc.T.contiguous(), "b_dec": torch.zeros(d_in)}
    return save_sae(path, tensors, saelens_cfg("standard", d_in, d_sae, subject="s", site="x", provenance={}))


def row(table, kind, index, attribute):
    hit = table[(table.kind == kind) & (table["index"] == index) & (table.attribute == attribute)]
    assert len(hit) == 1
    return hit.iloc[0]


def reference_f1(active, attr):
    """Per-unit, per-value loop: best (value, precision, recall, f1) of "active => attr == value"."""
    ok = attr >= 0
    best = None
    for v in np.unique(attr[ok]):
        both = (active & (attr == v))[ok].sum()
        n_act, n_v = active[ok].sum(), (attr[ok] == v).sum()
        f1 = 2 * both / (n_act + n_v)
        if best is None or f1 > best[3]:
            best = (v, both / n_act if n_act else 0.0, both / n_v, f1)
    return best


@pytest.fixture()
def table(tmp_path):
    acts = attribute_file(tmp_path / "a.h5")
    # Latent 0 = relu(x0), latent 1 = relu(x1 - 0.5), latent 2 = relu(-x2): active on <s> only.
    W = np.zeros((4, 3))
    W[0, 0], W[1, 1], W[2, 2] = 1.0, 1.0, -1.0
    sae = sae_dir(tmp_path / "sae", W, [0.0, -0.5, 0.0])
    return unit_attribute_table(acts, sae), acts


def test_exact_neurons_and_latents(table):
    table, _ = table
    assert list(table.columns) == s4_units.TABLE_COLUMNS
    assert len(table) == (4 + 3) * 6  # 4 neurons + 3 latents, 6 attributes (token first)
    for kind in ("neuron", "latent"):
        exact = row(table, kind, 0, "root")
        assert (exact.value, exact.precision, exact.recall, exact.f1) == (2, 1.0, 1.0, 1.0)
        assert exact.base_rate == pytest.approx(16 / 36)
        assert exact.density == pytest.approx(16 / 40) and exact.n_rows == 36 and exact.n_active == 16
        assert row(table, kind, 0, "degree").f1 == 1.0  # degree == root in C
        half = row(table, kind, 1, "root")
        assert (half.value, half.precision, half.recall) == (2, 1.0, 0.5)
        assert half.f1 == pytest.approx(2 / 3)
        assert half.density == pytest.approx(8 / 40)
        framing = row(table, kind, 2, "root")  # active only where root == -1: excluded rows
        assert (framing.precision, framing.recall, framing.f1, framing.n_active) == (0.0, 0.0, 0.0, 0)
        assert framing.density == pytest.approx(4 / 40)
    # Quality labels come from the column's categories. Neuron 0 (4 tokens a piece) covers 2 of the
    # 4 quality-0 tokens (F1 = 4/8) and 2 of the 3 quality-1 ("min") tokens (F1 = 4/7).
    q = row(table, "neuron", 0, "quality")
    assert (q.value, q.value_label) == (1, "min") and q.f1 == pytest.approx(4 / 7)
    assert row(table, "neuron", 0, "section_label").value_label == "1"


def test_matches_per_unit_reference(table, monkeypatch):
    table, acts = table
    with h5py.File(acts) as f:
        held = f["tokens/split"][:] == 1
        x = f["acts"][:][held]
        cols = {a: f[f"tokens/{a}"][:][held] for a in s4_units.ATTRIBUTES}
    active = np.abs(x) > 0.1 * np.abs(x).max(axis=0)
    for j in range(4):
        for a in s4_units.ATTRIBUTES:
            v, p, r, f1 = reference_f1(active[:, j], cols[a])
            got = row(table, "neuron", j, a)
            assert (got.value, got.precision, got.recall, got.f1) == pytest.approx((v, p, r, f1))
    # Batches of 7 rows (blocks straddling pieces and the train/held-out boundary): same table.
    monkeypatch.setattr(s4_units, "BATCH", 7)
    small = unit_attribute_table(acts)
    pd.testing.assert_frame_equal(small, table[table.kind == "neuron"].reset_index(drop=True))


def test_max_rows_and_no_split(tmp_path):
    acts = attribute_file(tmp_path / "a.h5")
    t = unit_attribute_table(acts, attributes=("root",), max_rows=10)
    assert (t.n_rows == 9).all() and row(t, "neuron", 0, "root").f1 == 1.0
    with h5py.File(acts, "a") as f:
        del f["tokens/split"]
    t = unit_attribute_table(acts, attributes=("root",))  # all 48 rows; train rows have no -1
    assert (t.n_rows == 8 + 36).all()
    with pytest.raises(ValueError, match="no column"):
        unit_attribute_table(acts, attributes=("nope",))


def test_summary_counts():
    f1 = {  # unit: F1 per attribute
        0: [0.9, 0.6, 0.1], 1: [0.2, 0.3, 0.5], 2: [0.7, 0.0, 0.0], 3: [0.0, 0.0, 0.0]}
    rows = [{"kind": "neuron", "index": u, "attribute": a, "f1": f, "precision": 0.9, "base_rate": 0.1}
            for u, fs in f1.items() for a, f in zip("xyz", fs)]
    # a dense unit: F1 0.8 only because the value is common (precision = base rate, lift 1)
    rows += [{"kind": "neuron", "index": 4, "attribute": "x", "f1": 0.8, "precision": 0.6, "base_rate": 0.6}]
    rows += [{"kind": "latent", "index": 0, "attribute": a, "f1": 1.0, "precision": 1.0, "base_rate": 0.2}
             for a in "xyz"]
    s = polysemanticity_summary(pd.DataFrame(rows)).set_index("kind")
    assert s.loc["neuron", "units"] == 5
    assert s.loc["neuron", "labelled"] == 0.4  # units 0 and 2; 0.5 itself is not above; unit 4 has lift 1
    assert s.loc["neuron", "concepts_per_unit"] == pytest.approx((2 + 0 + 1 + 0 + 0) / 5)
    assert s.loc["neuron", "mean_best_f1"] == pytest.approx((0.9 + 0.5 + 0.7 + 0.0 + 0.8) / 5)
    dense_ok = polysemanticity_summary(pd.DataFrame(rows), min_lift=1.0).set_index("kind")
    assert dense_ok.loc["neuron", "labelled"] == 0.6
    assert (s.loc["latent", "units"], s.loc["latent", "labelled"], s.loc["latent", "concepts_per_unit"]) == (1, 1.0, 3)
    assert polysemanticity_summary(pd.DataFrame(rows), threshold=0.95).loc[0, "labelled"] == 1.0  # latent


def seed_files(tmp_path, n=600, d=6, d_sae=8, seed=0):
    rng = np.random.default_rng(seed)
    cols = {"piece": np.repeat(np.arange(n // 20), 20), "position": np.tile(np.arange(20), n // 20),
            "token": np.zeros(n, dtype=np.int32), "split": np.ones(n, dtype=np.uint8)}
    x = rng.normal(size=(n, d))
    a = write_file(tmp_path / "a.h5", x, cols)
    W = rng.normal(size=(d, d_sae))
    b = rng.normal(scale=0.3, size=d_sae)
    b[3] = -100.0  # never fires
    return a, sae_dir(tmp_path / "sae_a", W, b), x, W, b, cols


def test_match_permuted_latents(tmp_path, monkeypatch):
    a, sae_a, x, W, b, cols = seed_files(tmp_path)
    perm_dims, perm_lat = np.array([2, 0, 5, 1, 4, 3]), np.array([7, 1, 0, 6, 2, 5, 4, 3])
    # File B stores the dimensions permuted; its SAE reads them back and permutes the latents.
    xb = x[:, perm_dims]
    Wb = W[perm_dims][:, perm_lat]
    bfile = write_file(tmp_path / "b.h5", xb, cols)
    sae_b = sae_dir(tmp_path / "sae_b", Wb, b[perm_lat])
    monkeypatch.setattr(s4_units, "BATCH", 64)  # several batches
    pairs, summary = match_latents(a, sae_a, bfile, sae_b)
    assert list(pairs.columns) == s4_units.MATCH_COLUMNS
    assert len(pairs) == 7 and 3 not in set(pairs.latent_a)
    inverse = np.argsort(perm_lat)  # A latent j is B latent inverse[j]
    assert (pairs.latent_b.to_numpy() == inverse[pairs.latent_a.to_numpy()]).all()
    np.testing.assert_allclose(pairs.r, 1.0, atol=1e-9)
    assert pairs.mutual.all()
    assert summary["share_latents_matched"] == 1.0 and summary["share_neurons_matched"] == 1.0
    assert (summary["n_live_latents_a"], summary["n_dead_latents_a"], summary["n_dead_latents_b"]) == (7, 1, 1)
    assert summary["n_live_neurons_a"] == 6 and summary["n_rows"] == 600


def test_match_independent_and_reference(tmp_path):
    a, sae_a, x, W, b, cols = seed_files(tmp_path)
    rng = np.random.default_rng(1)
    xb = rng.normal(size=x.shape)
    bfile = write_file(tmp_path / "b.h5", xb, cols)
    Wb, bb = rng.normal(size=W.shape), rng.normal(scale=0.3, size=b.size)
    sae_b = sae_dir(tmp_path / "sae_b", Wb, bb)
    pairs, summary = match_latents(a, sae_a, bfile, sae_b, max_rows=500)
    assert summary["share_latents_matched"] == 0.0 and summary["share_neurons_matched"] == 0.0
    assert summary["n_rows"] == 500 and summary["n_live_latents_b"] == 8
    za = np.maximum(x[:500] @ W + b, 0)[:, [j for j in range(8) if j != 3]]
    zb = np.maximum(xb[:500] @ Wb + bb, 0)
    r = np.corrcoef(za.T, zb.T)[:7, 7:]
    np.testing.assert_allclose(pairs.r, r.max(axis=1), atol=1e-5)
    assert (pairs.latent_b.to_numpy() == r.argmax(axis=1)).all()


def test_match_needs_same_tokens(tmp_path):
    a, sae_a, x, W, b, cols = seed_files(tmp_path)
    other = dict(cols, position=cols["position"][::-1].copy())
    bfile = write_file(tmp_path / "other.h5", x, other)
    with pytest.raises(ValueError, match="position") as err:
        match_latents(a, sae_a, bfile, sae_a)
    assert str(a) in str(err.value) and str(bfile) in str(err.value)
    shorter = write_file(tmp_path / "short.h5", x[:580], {k: v[:580] for k, v in cols.items()})
    with pytest.raises(ValueError, match="short.h5"):
        match_latents(a, sae_a, shorter, sae_a)
