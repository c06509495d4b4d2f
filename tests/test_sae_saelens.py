"""The SAE directory contract: save/load, SAELens's equations, validation, and SAELens itself."""

import json

import h5py
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_sae_relu_l1 import raw_acts, write_acts

from musinterp.sae import train_sae
from musinterp.sae.saelens import (
    SAEFormatError,
    fold_input_normalisation,
    load_sae,
    saelens_cfg,
    save_sae,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D_IN, D_SAE = 6, 16
PROVENANCE = {"producer": "test"}


def random_tensors(seed=0, threshold=False):
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g),
        "b_enc": torch.randn(D_SAE, generator=g) * 0.5,
        "W_dec": torch.randn(D_SAE, D_IN, generator=g),
        "b_dec": torch.randn(D_IN, generator=g),
    }
    if threshold:
        tensors["threshold"] = torch.rand(D_SAE, generator=g)
    return tensors


def cfg_for(architecture="standard", **kwargs):
    return saelens_cfg(
        architecture, D_IN, D_SAE, subject="tinyfolk", site="lstm2", provenance=PROVENANCE, **kwargs
    )


def test_round_trip_and_standard_equations(tmp_path):
    tensors = random_tensors()
    save_sae(tmp_path / "sae", tensors, cfg_for())
    sae = load_sae(tmp_path / "sae")
    assert sae.cfg == json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert (sae.architecture, sae.d_in, sae.d_sae, sae.subject, sae.site) == (
        "standard",
        D_IN,
        D_SAE,
        "tinyfolk",
        "lstm2",
    )
    assert all(torch.equal(sae.tensors()[k], tensors[k]) for k in tensors)
    x = torch.randn(3, 5, D_IN)  # any leading shape
    z = torch.relu(x @ tensors["W_enc"] + tensors["b_enc"])
    assert torch.allclose(sae.encode(x), z)
    assert torch.allclose(sae.decode(z), z @ tensors["W_dec"] + tensors["b_dec"])
    assert torch.allclose(sae(x), sae.decode(z))


def test_apply_b_dec_to_input_is_honoured(tmp_path):
    tensors = random_tensors()
    cfg = cfg_for()
    cfg["apply_b_dec_to_input"] = True
    save_sae(tmp_path / "sae", tensors, cfg)
    x = torch.randn(4, D_IN)
    expected = torch.relu((x - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"])
    assert torch.allclose(load_sae(tmp_path / "sae").encode(x), expected)


def test_topk_and_jumprelu_equations(tmp_path):
    x = torch.randn(5, D_IN)
    tensors = random_tensors()
    save_sae(tmp_path / "topk", tensors, cfg_for("topk", k=3))
    z = load_sae(tmp_path / "topk").encode(x)
    pre = x @ tensors["W_enc"] + tensors["b_enc"]
    assert ((z != 0).sum(-1) <= 3).all()
    kept = torch.topk(pre, 3, dim=-1).values.relu()
    assert torch.allclose(torch.sort(z, dim=-1, descending=True).values[:, :3], kept)

    tensors = random_tensors(threshold=True)
    save_sae(tmp_path / "jump", tensors, cfg_for("jumprelu"))
    pre = x @ tensors["W_enc"] + tensors["b_enc"]
    expected = torch.where(pre > tensors["threshold"], pre.relu(), torch.zeros(()))
    assert torch.allclose(load_sae(tmp_path / "jump").encode(x), expected)


def test_folding_is_exact_for_every_part():
    tensors = random_tensors(threshold=True)
    mean, std = torch.randn(D_IN) * 3, torch.rand(D_IN) * 4 + 0.1
    x = torch.randn(50, D_IN) * std + mean
    x_n = (x - mean) / std
    for apply_b_dec in (False, True):
        folded = fold_input_normalisation(tensors, mean, std, apply_b_dec_to_input=apply_b_dec)
        pre_n = (x_n - tensors["b_dec"] * apply_b_dec) @ tensors["W_enc"] + tensors["b_enc"]
        pre_raw = x @ folded["W_enc"] + folded["b_enc"]
        assert torch.allclose(pre_raw, pre_n, atol=1e-5)
        z = pre_n.relu()
        out_n = z @ tensors["W_dec"] + tensors["b_dec"]
        assert torch.allclose(z @ folded["W_dec"] + folded["b_dec"], out_n * std + mean, atol=1e-4)
        assert torch.equal(folded["threshold"], tensors["threshold"])
    with pytest.raises(ValueError, match="std must be positive"):
        fold_input_normalisation(tensors, mean, torch.zeros(D_IN))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t, c: t.update(scale=torch.ones(D_IN)), "unexpected \\['scale'\\]"),
        (lambda t, c: t.pop("b_dec"), "missing \\['b_dec'\\]"),
        (lambda t, c: t.update(W_enc=torch.zeros(D_SAE, D_IN)), "W_enc has shape"),
        (lambda t, c: t.update(b_enc=torch.zeros(D_SAE, dtype=torch.float64)), "cfg.json says dtype"),
        (lambda t, c: t["b_enc"].__setitem__(0, float("nan")), "NaN"),
        (lambda t, c: c.update(normalize_activations="expected_average_only_in"), "folded"),
        (lambda t, c: c.update(architecture="gated"), "architecture 'gated'"),
        (lambda t, c: c.update(d_sae=0), "d_sae must be a positive integer"),
        (lambda t, c: c.pop("metadata"), "metadata lacks"),
    ],
)
def test_save_refuses_what_breaks_the_contract(tmp_path, change, message):
    tensors, cfg = random_tensors(), cfg_for()
    change(tensors, cfg)
    with pytest.raises(SAEFormatError, match=message):
        save_sae(tmp_path / "sae", tensors, cfg)
    assert not (tmp_path / "sae" / "cfg.json").exists()


def test_load_names_the_faulty_file(tmp_path):
    sae_dir = tmp_path / "sae"
    with pytest.raises(SAEFormatError, match=f"{sae_dir / 'cfg.json'}: missing"):
        load_sae(sae_dir)
    save_sae(sae_dir, random_tensors(), cfg_for())
    cfg_path, weights_path = sae_dir / "cfg.json", sae_dir / "sae_weights.safetensors"

    good_cfg = cfg_path.read_text()
    cfg_path.write_text("{not json")
    with pytest.raises(SAEFormatError, match=f"{cfg_path}: not valid JSON"):
        load_sae(sae_dir)
    cfg_path.write_text(json.dumps({**json.loads(good_cfg), "normalize_activations": "layer_norm"}))
    with pytest.raises(SAEFormatError, match=f"{cfg_path}: normalize_activations"):
        load_sae(sae_dir)
    cfg_path.write_text(good_cfg)

    save_file({**random_tensors(), "extra": torch.zeros(1)}, str(weights_path))
    with pytest.raises(SAEFormatError, match=f"{weights_path}: tensors must be exactly"):
        load_sae(sae_dir)
    weights_path.write_bytes(b"garbage")
    with pytest.raises(SAEFormatError, match=f"{weights_path}: cannot be read"):
        load_sae(sae_dir)


# --- against SAELens itself (runs only where sae_lens is installed) -----------------------------


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_sae_lens_loads_our_directory_and_agrees(tmp_path, architecture):
    sae_lens = pytest.importorskip("sae_lens")
    tensors = random_tensors(threshold=architecture == "jumprelu")
    mean, std = torch.randn(D_IN), torch.rand(D_IN) + 0.5
    folded = fold_input_normalisation(tensors, mean, std)
    extra = {"k": 4} if architecture == "topk" else {}
    save_sae(tmp_path / "sae", folded, cfg_for(architecture, **extra))
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "sae"))
    ours = load_sae(tmp_path / "sae")
    assert theirs.cfg.architecture() == architecture
    assert theirs.cfg.normalize_activations == "none" and theirs.cfg.apply_b_dec_to_input is False
    assert theirs.cfg.metadata.hook_name == "lstm2" and theirs.cfg.metadata.subject == "tinyfolk"
    x = torch.randn(32, D_IN) * std + mean
    with torch.no_grad():
        z_theirs = theirs.encode(x)
        assert torch.allclose(z_theirs, ours.encode(x), atol=1e-6)
        assert torch.allclose(theirs.decode(z_theirs), ours.decode(z_theirs), atol=1e-6)
        assert torch.allclose(theirs(x), ours(x), atol=1e-6)


# --- SAEs trained by musinterp, every architecture ------------------------------------------------

# arch → (SAELens architecture, settings)
TRAINED = {
    "relu_l1": ("standard", {}),
    "topk": ("topk", {"k": 3}),
    "batchtopk": ("jumprelu", {"k": 3}),
    "jumprelu": ("jumprelu", {"l0_coeff": 1e-2}),
}
BASE_KEYS = [
    "d_in",
    "d_sae",
    "dtype",
    "device",
    "apply_b_dec_to_input",
    "normalize_activations",
    "reshape_activations",
]


def train_tiny(tmp_path, arch):
    path = write_acts(tmp_path / "acts.h5", raw_acts(d=8))
    metrics = train_sae(
        path, tmp_path / "sae", arch=arch, width=32, batch_size=64, epochs=3, **TRAINED[arch][1]
    )
    return path, tmp_path / "sae", metrics


def heldout_rows(path):
    with h5py.File(path) as f:
        return torch.from_numpy(f["acts"][...])[torch.from_numpy(f["tokens/split"][...] == 1)]


@pytest.mark.parametrize("arch", sorted(TRAINED))
def test_trained_sae_follows_the_contract_and_its_metrics_hold(tmp_path, arch):
    path, sae_dir, metrics = train_tiny(tmp_path, arch)
    saelens_arch, settings = TRAINED[arch]
    cfg = json.loads((sae_dir / "cfg.json").read_text())
    extra = ["k", "rescale_acts_by_decoder_norm"] if saelens_arch == "topk" else []
    assert list(cfg) == [*BASE_KEYS, *extra, "metadata", "architecture"]
    assert cfg["architecture"] == saelens_arch
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == (8, 32, "float32")
    assert cfg["apply_b_dec_to_input"] is False and cfg["normalize_activations"] == "none"
    if saelens_arch == "topk":
        assert cfg["k"] == 3 and cfg["rescale_acts_by_decoder_norm"] is False
    provenance = cfg["metadata"]["provenance"]
    assert provenance["arch"] == arch and provenance["arch_config"]["d_sae"] == 32
    assert ("z-scoring" if arch == "relu_l1" else "multiplied by s") in provenance["input_normalisation"]

    tensors = load_file(sae_dir / "sae_weights.safetensors")
    shapes = {"W_enc": (8, 32), "b_enc": (32,), "W_dec": (32, 8), "b_dec": (8,)}
    if saelens_arch == "jumprelu":
        shapes["threshold"] = (32,)
    assert {name: tuple(t.shape) for name, t in tensors.items()} == shapes  # nothing else
    assert all(t.dtype == torch.float32 for t in tensors.values())
    if arch == "batchtopk":  # one learnt global threshold, as SAELens saves BatchTopK
        assert torch.all(tensors["threshold"] == tensors["threshold"][0]) and tensors["threshold"][0] > 0
    if arch == "jumprelu":
        assert torch.all(tensors["threshold"] > 0)

    # metrics.json describes the saved files on the held-out rows
    sae = load_sae(sae_dir)
    x = heldout_rows(path)
    z = sae.encode(x)
    x_hat = sae.decode(z)
    fvu = float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert fvu == pytest.approx(metrics["fvu"], abs=1e-4)
    assert float((z != 0).sum(1).double().mean()) == pytest.approx(metrics["l0"], abs=0.02)
    assert float(((z != 0).sum(0) == 0).double().mean()) == pytest.approx(metrics["dead_fraction"], abs=0.04)
    if arch == "topk":
        assert metrics["l0"] == 3


@pytest.mark.parametrize("arch", sorted(TRAINED))
def test_sae_lens_loads_our_trained_sae_and_agrees(tmp_path, arch):
    sae_lens = pytest.importorskip("sae_lens")
    path, sae_dir, _ = train_tiny(tmp_path, arch)
    theirs = sae_lens.SAE.load_from_disk(str(sae_dir))
    ours = load_sae(sae_dir)
    assert theirs.cfg.architecture() == TRAINED[arch][0]
    if arch == "topk":
        assert theirs.cfg.k == 3
    x = heldout_rows(path)
    with torch.no_grad():
        z_theirs = theirs.encode(x)
        assert torch.allclose(z_theirs, ours.encode(x), atol=1e-6)
        assert torch.allclose(theirs.decode(z_theirs), ours.decode(z_theirs), atol=1e-5)
        assert torch.allclose(theirs(x), ours(x), atol=1e-5)
