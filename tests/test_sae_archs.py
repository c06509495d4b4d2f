"""The architectures beside relu_l1 (topk, batchtopk, jumprelu), dead-latent revival, the learning
rate schedule and the settings checks, on synthetic activation files that follow the contract."""

import math

import numpy as np
import pytest
import torch
from test_sae_relu_l1 import planted_dictionary, raw_acts, write_acts

from musinterp.sae import (
    BatchTopKConfig,
    BatchTopKSAE,
    JumpReLUConfig,
    JumpReLUSAE,
    ReluL1SAE,
    TopKConfig,
    TopKSAE,
    load_sae,
    train_sae,
    trainer,
)
from musinterp.sae.jumprelu import jumprelu, step
from musinterp.sae.topk import auxk_loss
from musinterp.sae.trainer import checkpoint_dir_for, count_steps, learning_rate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUICK = dict(width=32, batch_size=64, epochs=2, eval_every=5)


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def best_cosines(directions, sae_dir):
    """For every planted direction, the best cosine with a learnt decoder row (raw space)."""
    learned = load_sae(sae_dir).W_dec.double().numpy()
    learned /= np.linalg.norm(learned, axis=1, keepdims=True)
    return (directions @ learned.T).max(axis=1)


# --- the modules -------------------------------------------------------------------------------


def test_topk_keeps_the_k_largest_positive_pre_activations():
    sae = TopKSAE(TopKConfig(d_in=6, d_sae=12, k=3), generator(), input_mean=torch.full((6,), 0.5))
    assert torch.equal(sae.b_dec.detach(), torch.full((6,), 0.5)) and torch.all(sae.b_enc == 0)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(12))
    x = torch.randn(20, 6)
    with torch.no_grad():
        sae.b_enc.uniform_(-1, 0)
        x_hat, z = sae(x)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    assert ((z != 0).sum(dim=1) <= 3).all()
    top3 = torch.topk(pre, 3, dim=1).values.relu()
    assert torch.allclose(torch.sort(z, dim=1, descending=True).values[:, :3], top3)
    assert torch.allclose(x_hat, z @ sae.W_dec + sae.b_dec)
    loss, parts, latents = sae.training_loss(x)  # nothing dead: no auxiliary term
    assert torch.equal(latents, z) and list(parts) == ["mse", "auxk"] and parts["auxk"] == 0
    assert float(loss.detach()) == pytest.approx(float(((x_hat - x) ** 2).mean()), rel=1e-6)


def test_auxk_is_the_residual_fvu_of_the_top_dead_latents():
    g = generator(1)
    residual, pre, W_dec = (
        torch.randn(8, 4, generator=g),
        torch.randn(8, 6, generator=g),
        torch.randn(6, 4, generator=g),
    )
    dead = torch.tensor([True, False, True, True, False, False])
    # k_aux = 2 of the 3 dead latents: the 2 largest dead pre-activations per token, through ReLU.
    kept = torch.where(dead, pre, torch.tensor(-math.inf))
    aux = torch.zeros_like(pre)
    for t in range(8):
        idx = torch.topk(kept[t], 2).indices
        aux[t, idx] = pre[t, idx].relu()
    e_hat = aux @ W_dec
    expected = ((residual - e_hat) ** 2).sum() / ((residual - residual.mean(0)) ** 2).sum()
    assert float(auxk_loss(residual, pre, W_dec, dead, k_aux=2)) == pytest.approx(float(expected), rel=1e-5)
    # k_aux is capped at the number of dead latents; nothing dead: 0.
    all_dead = torch.where(dead, pre.relu(), torch.zeros(()))
    expected_all = ((residual - all_dead @ W_dec) ** 2).sum() / ((residual - residual.mean(0)) ** 2).sum()
    assert float(auxk_loss(residual, pre, W_dec, dead, k_aux=6)) == pytest.approx(
        float(expected_all), rel=1e-5
    )
    assert float(auxk_loss(residual, pre, W_dec, torch.zeros(6, dtype=torch.bool), k_aux=2)) == 0.0
    # The gradient reaches only the dead latents' encoders and decoder rows.
    sae = TopKSAE(TopKConfig(d_in=4, d_sae=6, k=1, k_aux=2), generator())
    aux = auxk_loss(residual, sae.pre_activations(torch.randn(8, 4, generator=g)), sae.W_dec, dead, k_aux=2)
    W_dec_grad, W_enc_grad, b_enc_grad = torch.autograd.grad(aux, [sae.W_dec, sae.W_enc, sae.b_enc])
    assert torch.all(W_dec_grad[~dead] == 0) and torch.all(W_enc_grad[:, ~dead] == 0)
    assert torch.all(b_enc_grad[~dead] == 0)
    assert W_dec_grad[dead].abs().sum() > 0 and b_enc_grad[dead].abs().sum() > 0


def test_batchtopk_selects_across_the_batch_and_learns_a_threshold():
    sae = BatchTopKSAE(BatchTopKConfig(d_in=6, d_sae=12, k=2, threshold_rate=0.5), generator())
    x = torch.randn(10, 6) * 2
    loss, parts, z = sae.training_loss(x)
    pre = sae.pre_activations(x).detach()
    kept = z != 0
    assert int(kept.sum()) == 2 * 10  # k · batch in all, not k per token
    assert torch.equal(z[kept], pre[kept])
    kept_min = float(z[kept].min())
    assert kept_min >= float(pre[~kept].max())  # the 20 largest of the whole batch
    assert float(sae.threshold) == pytest.approx(kept_min)  # the first batch sets θ directly
    _, _, z2 = sae.training_loss(x * 0.5)
    assert float(sae.threshold) == pytest.approx(0.5 * kept_min + 0.5 * float(z2[z2 > 0].min()))
    sae.eval()
    with torch.no_grad():
        _, z_inference = sae(x)
    theta = float(sae.threshold)
    assert torch.equal(z_inference, torch.where(pre > theta, pre.relu(), torch.zeros(())))
    arch, tensors, extra = sae.saelens_export()
    assert arch == "jumprelu" and extra == {}
    assert torch.equal(tensors["threshold"], torch.full((12,), theta, dtype=torch.float32))


def test_jumprelu_equations_and_straight_through_gradients():
    cfg = JumpReLUConfig(d_in=5, d_sae=7, l0_coeff=0.3, bandwidth=0.2, threshold_init=0.4)
    sae = JumpReLUSAE(cfg, generator())
    assert torch.allclose(sae.threshold, torch.full((7,), 0.4))
    x = torch.randn(30, 5)
    loss, parts, z = sae.training_loss(x)
    pre = sae.pre_activations(x).detach()
    assert torch.equal(z, torch.where(pre > 0.4, pre, torch.zeros(())))
    assert float(parts["l0"]) == pytest.approx(float((pre > 0.4).sum(1).double().mean()))
    assert float(loss.detach()) == pytest.approx(float(parts["mse"] + 0.3 * parts["l0"]), rel=1e-6)

    # Hand-made pre-activations around θ = 1 with ε = 0.5: only |p − θ| < ε/2 moves θ.
    p = torch.tensor([[0.70], [0.80], [1.10], [1.30], [2.0]])
    theta = torch.tensor([1.0], requires_grad=True)
    jumprelu(p, theta, 0.5).sum().backward()
    # ∂/∂θ Σ JumpReLU = Σ −(θ/ε)·K((p−θ)/ε): p = 0.8 and 1.1 are inside the window
    assert float(theta.grad) == pytest.approx(-2 * 1.0 / 0.5)
    theta.grad = None
    step(p, theta, 0.5).sum().backward()
    assert float(theta.grad) == pytest.approx(-2 / 0.5)
    p_leaf = p.clone().requires_grad_(True)
    (
        jumprelu(p_leaf, torch.tensor([1.0]), 0.5).sum() + step(p_leaf, torch.tensor([1.0]), 0.5).sum()
    ).backward()
    assert torch.equal(p_leaf.grad, (p > 1.0).float())  # exact for the pre-activations, none from L0
    # The threshold is learnt in log space and saved as θ.
    arch, tensors, _ = sae.saelens_export()
    assert arch == "jumprelu" and torch.allclose(tensors["threshold"], torch.full((7,), 0.4))


def test_resampling_aims_dead_latents_at_badly_reconstructed_inputs():
    sae = ReluL1SAE(trainer.ARCHITECTURES["relu_l1"].config_class(d_in=4, d_sae=6), generator())
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-3)
    x = torch.randn(32, 4)
    sae.training_loss(x).loss.backward()
    optimizer.step()
    x = torch.zeros(32, 4)
    x[7] = torch.tensor([0.0, 3.0, 4.0, 0.0])  # the only input with any loss
    dead = torch.tensor([False, True, False, False, True, False])
    before = sae.W_dec.detach().clone()
    assert sae.resample_dead_latents(x, dead, optimizer, generator()) == 2
    direction = torch.tensor([0.0, 0.6, 0.8, 0.0])
    assert torch.allclose(sae.W_dec[dead], direction.expand(2, 4))
    assert torch.equal(sae.W_dec[~dead], before[~dead])
    alive_norm = sae.W_enc[:, ~dead].norm(dim=0).mean()
    assert torch.allclose(sae.W_enc[:, dead].T, 0.2 * alive_norm * direction.expand(2, 4))
    assert torch.all(sae.b_enc[dead] == 0)
    state = optimizer.state[sae.W_dec]
    assert torch.all(state["exp_avg"][dead] == 0) and torch.all(state["exp_avg_sq"][dead] == 0)
    assert torch.any(state["exp_avg_sq"][~dead] != 0)
    assert sae.resample_dead_latents(x, torch.zeros(6, dtype=torch.bool), optimizer, generator()) == 0


# --- planted dictionaries ----------------------------------------------------------------------

PLANTED = dict(width=128, batch_size=256, epochs=20, eval_every=10**6, checkpoint_every=None)


@pytest.mark.parametrize(
    "arch, settings, share",
    [
        # Checked over data and init seeds 0..5 (topk), 0..3 (the others): topk 1.00 every time,
        # batchtopk 0.94-0.98, jumprelu 0.91-1.00.
        ("topk", dict(k=3, lr=3e-3), 0.95),
        ("batchtopk", dict(k=3, lr=3e-3), 0.85),
        ("jumprelu", dict(l0_coeff=0.1, threshold_init=1.0, lr=6e-3), 0.8),
    ],
)
def test_planted_sparse_dictionary_is_recovered(tmp_path, arch, settings, share):
    acts, directions = planted_dictionary()  # 64 unit directions in 32 dimensions, 3 active per token
    path = write_acts(tmp_path / "acts.h5", acts)
    metrics = train_sae(path, tmp_path / "sae", arch=arch, **settings, **PLANTED)
    best_cosine = best_cosines(directions, tmp_path / "sae")
    assert (best_cosine > 0.9).mean() >= share, np.sort(best_cosine)
    assert metrics["fvu"] < 0.25
    assert 2 <= metrics["l0"] <= 4.5


# --- dead latents ------------------------------------------------------------------------------


def _dead_at_init(cls, n_dead, bias=0.0, encoder_scale=1.0):
    """``cls`` whose first ``n_dead`` latents start dead: encoder columns scaled, bias set."""

    class DeadAtInit(cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            with torch.no_grad():
                self.W_enc[:, :n_dead] *= encoder_scale
                self.b_enc[:n_dead] = bias

    return DeadAtInit


def _alive(sae_dir, acts):
    return (load_sae(sae_dir).encode(torch.from_numpy(acts)) != 0).any(dim=0)


def test_auxk_revives_dead_latents(tmp_path, monkeypatch):
    acts, _ = planted_dictionary(n=5000)
    path = write_acts(tmp_path / "acts.h5", acts)
    # Dead the TopK way: pre-activations about 20 times smaller than the others', never in the top k.
    monkeypatch.setitem(trainer.ARCHITECTURES, "topk", _dead_at_init(TopKSAE, 32, encoder_scale=0.05))
    settings = dict(arch="topk", width=96, k=3, lr=3e-3, batch_size=128, epochs=8, eval_every=10**6)
    train_sae(path, tmp_path / "without", aux_coeff=0.0, **settings)
    metrics = train_sae(path, tmp_path / "with", **settings)  # aux_coeff 1/32 by default
    without, with_aux = _alive(tmp_path / "without", acts), _alive(tmp_path / "with", acts)
    assert int(without[:32].sum()) == 0  # nothing brings them back without AuxK
    # 29-30 of 32 come back over init seeds 0..3
    assert int(with_aux[:32].sum()) >= 24, int(with_aux[:32].sum())
    assert metrics["settings"]["dead_tokens"] == 4000 * 8 // 10  # a tenth of the training tokens
    log_lines = (tmp_path / "with" / "training_log.tsv").read_text().splitlines()
    header = log_lines[0].split("\t")
    auxk = [float(line.split("\t")[header.index("auxk")]) for line in log_lines[1:]]
    assert auxk[0] == 0 and max(auxk) > 0  # AuxK starts once latents have been idle dead_tokens tokens


def test_resampling_revives_dead_relu_latents(tmp_path, monkeypatch):
    acts, _ = planted_dictionary(n=5000)
    path = write_acts(tmp_path / "acts.h5", acts)
    monkeypatch.setitem(trainer.ARCHITECTURES, "relu_l1", _dead_at_init(ReluL1SAE, 32, bias=-20.0))
    settings = dict(
        width=96, l1_coeff=3e-2, lr=3e-3, batch_size=128, epochs=8, eval_every=10**6, dead_tokens=2000
    )
    train_sae(path, tmp_path / "without", **settings)
    train_sae(path, tmp_path / "with", resample_every=25, **settings)
    without, with_resampling = _alive(tmp_path / "without", acts), _alive(tmp_path / "with", acts)
    assert int(without[:32].sum()) == 0
    assert int(with_resampling[:32].sum()) >= 24, int(with_resampling[:32].sum())


# --- schedule and settings ---------------------------------------------------------------------


def test_learning_rate_schedule():
    lrs = [learning_rate(s, 100, 1.0, 0.05, 0.2) for s in range(100)]
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])  # linear warm-up over 5 steps
    assert lrs[5:80] == [1.0] * 75
    assert lrs[80:] == pytest.approx([(100 - s) / 20 for s in range(80, 100)])  # linear to 0
    assert [learning_rate(s, 10, 0.5, 0.0, 0.0) for s in range(10)] == [0.5] * 10
    # each epoch is ceil(n / batch) steps; the token budget cuts the last one
    assert (
        count_steps(500, 64, 1000) == 16 and count_steps(500, 64, 200) == 4 and count_steps(500, 64, 564) == 9
    )


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(arch="topk"), "topk: k .* is required"),
        (dict(arch="batchtopk", width=32), "batchtopk: k .* is required"),
        (dict(arch="topk", k=3, width=4), r"width \(d_sae=4\) is below the input size d_in=8"),
        (dict(arch="batchtopk", k=3, width=7), "width >= d_in"),
        (dict(arch="topk", k=40, width=32), "k must be an integer in 1..width=32"),
        (dict(arch="topk", k=0), "k must be an integer"),
        (dict(arch="relu_l1", k=3), "k=3 is a setting of topk, batchtopk, not of the relu_l1"),
        (dict(arch="topk", k=3, l1_coeff=1e-3), "l1_coeff=0.001 is a setting of relu_l1"),
        (dict(arch="jumprelu", aux_coeff=0.1), "aux_coeff"),
        (dict(arch="jumprelu", bandwidth=0.0), "bandwidth must be a positive number"),
        (dict(arch="relu_l1", warmup_fraction=0.5, decay_fraction=0.6), "at most 1"),
        (dict(arch="relu_l1", seed=-1), "seed"),
        (dict(arch="relu_l1", checkpoint_every=0), "checkpoint_every"),
    ],
)
def test_bad_settings_are_refused_before_any_output(tmp_path, settings, message):
    path = write_acts(tmp_path / "acts.h5", raw_acts(d=8))
    with pytest.raises(ValueError, match=message):
        train_sae(path, tmp_path / "sae", **{**dict(batch_size=64, epochs=1), **settings})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acts.h5"]
    assert not checkpoint_dir_for(tmp_path / "sae").exists()
