"""chordlm (study S4): the transformer against an independent reference, its hooks, sites,
loss, key-input override, and training with weight snapshots."""

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from musinterp.corpus.store import write_corpus
from musinterp.models import load, train_model
from musinterp.models.chordlm.model import ChordLM
from musinterp.models.chordlm.spec import FAMILY, ChordLMConfig, chordlm_sites
from musinterp.models.hooks import replace_site
from musinterp.models.interface import Batch
from musinterp.models.training import TrainConfig, train_lm
from musinterp.registry import FAMILIES, get_family

ROOT = Path(__file__).resolve().parents[1]
V = 11
TOKENS = ["<s>", "</s>"] + [f"c{i}" for i in range(2, V)]


def model_with_random_weights(seed=0, **config):
    """A small model whose every parameter (biases and LayerNorm too) is random, so no term hides;
    in float64, so that comparisons against the reference are exact up to round-off."""
    settings = dict(vocab_size=V, n_layers=2, d_model=16, n_heads=3, d_head=5, d_mlp=24, n_ctx=12)
    settings.update(config)
    model = ChordLM(ChordLMConfig(**settings)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4)
    return model.double()


def reference_logits(model, tokens, resid_post_fn=None, key_input=None):
    """An independent forward pass from the state dict: loops over heads, F.layer_norm, erf GELU.

    ``resid_post_fn``: layer -> function applied to that block's output; ``key_input``: layer ->
    residual ``[B, T, d]`` from which that layer (only) computes its keys. Returns the logits and
    the per-layer (q, k, v) of every head.
    """
    cfg = model.config
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    resid_post_fn, key_input = resid_post_fn or {}, key_input or {}

    def norm(name, x):
        if cfg.normalization == "none":
            return x
        return F.layer_norm(x, (cfg.d_model,), sd[f"{name}.w"], sd[f"{name}.b"], eps=1e-5)

    T = tokens.shape[1]
    x = sd["embed.W_E"][tokens] + sd["pos_embed.W_pos"][:T]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    qkv = {}
    for layer in range(cfg.n_layers):
        p = f"blocks.{layer}"
        h_in = norm(f"{p}.ln1", x)
        k_in = norm(f"{p}.ln1", key_input[layer]) if layer in key_input else h_in
        attn = torch.zeros_like(x) + sd[f"{p}.attn.b_O"]
        qkv[layer] = []
        for h in range(cfg.n_heads):
            q = h_in @ sd[f"{p}.attn.W_Q"][h] + sd[f"{p}.attn.b_Q"][h]
            k = k_in @ sd[f"{p}.attn.W_K"][h] + sd[f"{p}.attn.b_K"][h]
            v = h_in @ sd[f"{p}.attn.W_V"][h] + sd[f"{p}.attn.b_V"][h]
            scores = q @ k.transpose(-1, -2) / math.sqrt(cfg.d_head)
            weights = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
            attn = attn + (weights @ v) @ sd[f"{p}.attn.W_O"][h]
            qkv[layer].append((q, k, v))
        x = x + attn
        if cfg.d_mlp:
            pre = norm(f"{p}.ln2", x) @ sd[f"{p}.mlp.W_in"] + sd[f"{p}.mlp.b_in"]
            x = x + (0.5 * pre * (1 + torch.erf(pre / math.sqrt(2)))) @ sd[f"{p}.mlp.W_out"] + sd[f"{p}.mlp.b_out"]
        if layer in resid_post_fn:
            x = resid_post_fn[layer](x)
    return norm("ln_final", x) @ sd["unembed.W_U"] + sd["unembed.b_U"], qkv


def tokens(batch=3, steps=9, seed=1):
    return torch.randint(0, V, (batch, steps), generator=torch.Generator().manual_seed(seed))


def test_parameter_names_and_shapes_are_transformerlens():
    model = ChordLM(ChordLMConfig(vocab_size=V, n_layers=2, d_model=16, n_heads=3, d_head=5, d_mlp=24, n_ctx=12))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {"embed.W_E": (V, 16), "pos_embed.W_pos": (12, 16), "ln_final.w": (16,), "ln_final.b": (16,),
                "unembed.W_U": (16, V), "unembed.b_U": (V,)}
    for layer in range(2):
        p = f"blocks.{layer}"
        expected.update({f"{p}.ln1.w": (16,), f"{p}.ln1.b": (16,), f"{p}.ln2.w": (16,), f"{p}.ln2.b": (16,),
                         f"{p}.attn.W_O": (3, 5, 16), f"{p}.attn.b_O": (16,),
                         f"{p}.mlp.W_in": (16, 24), f"{p}.mlp.b_in": (24,),
                         f"{p}.mlp.W_out": (24, 16), f"{p}.mlp.b_out": (16,)})
        for m in "QKV":
            expected.update({f"{p}.attn.W_{m}": (3, 16, 5), f"{p}.attn.b_{m}": (3, 5)})
    assert shapes == expected
    bare = ChordLM(ChordLMConfig(vocab_size=V, n_layers=1, d_mlp=0, normalization="none"))
    assert not [k for k in bare.state_dict() if "ln" in k or "mlp" in k]
    assert model(tokens()).shape == (3, 9, V)


@pytest.mark.parametrize("normalization", ["none", "ln"])
@pytest.mark.parametrize("n_layers, d_mlp", [(1, 0), (2, 0), (2, 24), (3, 24)])
def test_forward_matches_the_reference(normalization, n_layers, d_mlp):
    model = model_with_random_weights(n_layers=n_layers, d_mlp=d_mlp, normalization=normalization)
    x = tokens()
    expected, qkv = reference_logits(model, x)
    logits, cache = model.run_with_cache(x)
    torch.testing.assert_close(logits, expected, atol=1e-9, rtol=1e-9)
    for layer in range(n_layers):
        for h, (q, k, v) in enumerate(qkv[layer]):
            torch.testing.assert_close(cache[f"blocks.{layer}.attn.hook_q"][:, :, h], q, atol=1e-9, rtol=1e-9)
            torch.testing.assert_close(cache[f"blocks.{layer}.attn.hook_k"][:, :, h], k, atol=1e-9, rtol=1e-9)
            torch.testing.assert_close(cache[f"blocks.{layer}.attn.hook_v"][:, :, h], v, atol=1e-9, rtol=1e-9)
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        assert pattern.shape == (3, 3, 9, 9)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(3, 3, 9, dtype=torch.float64))
        assert torch.all(pattern.triu(1) == 0)
        assert cache[f"blocks.{layer}.attn.hook_z"].shape == (3, 9, 3, 5)


def test_causal():
    model = model_with_random_weights()
    x = tokens()
    changed = x.clone()
    changed[:, 6] = (changed[:, 6] + 1) % V
    with torch.no_grad():
        a, b = model(x), model(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.parametrize("normalization", ["none", "ln"])
def test_hook_points_read_and_replace(normalization):
    model = model_with_random_weights(normalization=normalization)
    x = tokens()
    recorded = {}
    _, _ = reference_logits(model, x, {0: lambda r: recorded.setdefault("resid", r)})
    batch = Batch(x, None, torch.full((3,), 9))
    out = model.record(batch, ["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern", "attn0"])
    torch.testing.assert_close(out["blocks.0.hook_resid_post"], recorded["resid"], atol=1e-9, rtol=1e-9)
    assert out["blocks.1.attn.hook_pattern"].shape == (3, 3, 9, 9) and out["attn0"].shape == (3, 3, 9, 9)

    expected, _ = reference_logits(model, x, {0: torch.zeros_like})
    with replace_site(model, "blocks.0.hook_resid_post", torch.zeros_like), torch.no_grad():
        replaced = model(x)
    torch.testing.assert_close(replaced, expected, atol=1e-9, rtol=1e-9)
    with torch.no_grad():
        assert not torch.allclose(model(x), replaced)  # the hook is gone after the block


def test_ablating_every_head_leaves_only_the_output_bias():
    model = model_with_random_weights(n_layers=1, d_mlp=0, normalization="none")
    x = tokens()
    with model.ablate_heads(0, [0, 1, 2]):
        _, cache = model.run_with_cache(x, ["blocks.0.hook_attn_out"])
    torch.testing.assert_close(cache["blocks.0.hook_attn_out"], model.blocks[0].attn.b_O.detach().expand(3, 9, -1))
    with model.ablate_heads(0, [1]):
        _, cache = model.run_with_cache(x, ["blocks.0.attn.hook_z"])
    z = cache["blocks.0.attn.hook_z"]
    assert torch.all(z[:, :, 1] == 0) and torch.all(z[:, :, 0] != 0)


@pytest.mark.parametrize("normalization", ["none", "ln"])
def test_key_input_override_changes_only_the_keys(normalization):
    model = model_with_random_weights(normalization=normalization)
    x = tokens()
    other = torch.randn(3, 9, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    clean_logits, clean = model.run_with_cache(x)
    logits, cache = model.run_with_cache(x, key_input_override={1: other})
    expected, qkv = reference_logits(model, x, key_input={1: other})
    torch.testing.assert_close(logits, expected, atol=1e-9, rtol=1e-9)
    for h, (_q, k, _v) in enumerate(qkv[1]):
        torch.testing.assert_close(cache["blocks.1.attn.hook_k"][:, :, h], k, atol=1e-9, rtol=1e-9)
    for name in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.1.attn.hook_q", "blocks.1.attn.hook_v"):
        torch.testing.assert_close(cache[name], clean[name])  # layer 0, the queries and values: as before
    assert not torch.allclose(cache["blocks.1.attn.hook_k"], clean["blocks.1.attn.hook_k"])
    assert not torch.allclose(logits, clean_logits)
    # one stream per head: head 2 reads `other`, heads 0 and 1 their own input
    per_head = cache["blocks.1.hook_resid_pre"][:, :, None].repeat(1, 1, 3, 1)
    per_head[:, :, 2] = other
    _, split = model.run_with_cache(x, key_input_override={1: per_head})
    torch.testing.assert_close(split["blocks.1.attn.hook_k"][:, :, :2], clean["blocks.1.attn.hook_k"][:, :, :2])
    torch.testing.assert_close(split["blocks.1.attn.hook_k"][:, :, 2], cache["blocks.1.attn.hook_k"][:, :, 2])
    with pytest.raises(ValueError, match="layers \\[5\\]"):
        model(x, key_input_override={5: other})


def test_attention_only_has_no_mlp_and_no_resid_mid():
    model = ChordLM(ChordLMConfig(vocab_size=V, n_layers=3, d_mlp=0))
    assert not [k for k in model.state_dict() if ".mlp." in k or ".ln2." in k]
    names = [s.name for s in model.sites()]
    assert names == [f"blocks.{layer}.{h}" for layer in range(3)
                     for h in ("hook_resid_pre", "hook_attn_out", "hook_resid_post")]
    assert not [n for n in model.hook_names() if "mlp" in n or "resid_mid" in n]


@pytest.mark.parametrize("params", [{}, {"n_layers": 1, "d_mlp": 0}, {"n_layers": 3, "d_mlp": 40, "d_model": 24},
                                    {"normalization": "none", "d_mlp": 0, "n_layers": 2}])
def test_registry_sites_are_the_models(params):
    spec = get_family("chordlm")
    assert spec is FAMILIES["chordlm"] and spec.formats == ("chords",) and not spec.importers
    model = spec.model_class()(spec.make_config(params, vocab_size=V))
    assert spec.site_list(params, vocab_size=V) == model.sites() == chordlm_sites(model.config)
    d, d_mlp = model.config.d_model, model.config.d_mlp
    batch = model.make_batch([np.array([2, 3, 4]), np.array([5])], TOKENS)
    out = model.record(batch, [s.name for s in model.sites()])
    for site in model.sites():
        assert site.granularity == "token" and site.replaceable
        assert site.width == (d_mlp if site.name.endswith("mlp.hook_post") else d)
        assert out[site.name].shape == (2, 4, site.width)
        model.hook_point(site.name)


def test_make_batch_cuts_to_the_context():
    model = ChordLM(ChordLMConfig(vocab_size=V, n_ctx=6))
    batch = model.make_batch([np.arange(2, 11), np.array([3, 4])], TOKENS)
    assert batch.inputs.shape == (2, 6) and batch.lengths.tolist() == [6, 3]
    assert batch.inputs[0].tolist() == [0, 2, 3, 4, 5, 6] and batch.targets[0].tolist() == [2, 3, 4, 5, 6, 7]
    assert model.make_batch([np.arange(2, 11)], TOKENS, max_len=4).inputs.shape == (1, 3)
    assert model.make_batch([np.arange(2, 11)], TOKENS, max_len=100).inputs.shape == (1, 6)
    model(batch.inputs)  # fits
    with pytest.raises(ValueError, match="exceed the context"):
        model(torch.zeros(1, 7, dtype=torch.long))


def test_loss_is_next_token_cross_entropy():
    model = model_with_random_weights()
    batch = model.make_batch([np.array([2, 3, 4, 5, 6]), np.array([7, 8])], TOKENS)
    with torch.no_grad():
        logits = model(batch.inputs)
        manual = []
        for row, n in enumerate(batch.lengths.tolist()):
            logp = torch.log_softmax(logits[row, :n], -1)
            manual += [-logp[t, batch.targets[row, t]] for t in range(n)]
        manual = torch.stack(manual)
        torch.testing.assert_close(model.loss(batch), manual.mean())
        torch.testing.assert_close(model.loss(batch, reduction="sum"), manual.sum())


def test_generate_stops_at_the_end_or_the_context():
    model = model_with_random_weights(n_ctx=8)
    a = model.generate([0], end_id=1, generator=torch.Generator().manual_seed(3))
    b = model.generate([0], end_id=1, generator=torch.Generator().manual_seed(3))
    assert a == b and 1 < len(a) <= 9 and (a[-1] == 1 or len(a) == 9)
    assert 1 not in a[:-1]
    never = model.generate([0], end_id=-1, max_len=100, generator=torch.Generator().manual_seed(0))
    assert len(never) == 9  # n_ctx inputs predict n_ctx tokens after the start
    assert len(model.generate([0], end_id=-1, max_len=4)) == 4


def test_schema_defaults_are_the_dataclass_defaults():
    props = yaml.safe_load((ROOT / "workflow/schemas/families/chordlm.schema.yaml").read_text())["properties"]
    for section, cls, not_in_schema in (("model", ChordLMConfig, {"vocab_size"}), ("train", TrainConfig, {"seed"})):
        schema = props[section]["properties"]
        names = {f.name for f in dataclasses.fields(cls)} - not_in_schema
        # train.seed may be given per model (several seeds); it has no default: the run's seed
        assert set(schema) - {"seed"} == names, section
        assert "default" not in schema.get("seed", {})
        for f in dataclasses.fields(cls):
            if f.name in names:
                assert schema[f.name]["default"] == f.default, (section, f.name)


# --- training with snapshots ------------------------------------------------------------------

def progressions(n, rng):
    """Pieces that repeat a random 4-chord loop: an induction head's favourite food."""
    chords = TOKENS[2:]
    return [list(rng.choice(chords, 4)) * int(rng.integers(2, 4)) for _ in range(n)]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chords")
    pieces = progressions(40, np.random.default_rng(0))
    ids = [f"loop/{i}" for i in range(len(pieces))]
    rows = [{"id": i, "source": "generated", "status": "ok", "reason": ""} for i in ids]
    write_corpus(tmp / "corpus", "loops", pieces, ids, rows, seed=0, heldout_fraction=0.25,
                 vocab=TOKENS, format="folkrnn-v2")
    return tmp / "corpus"


SMALL = {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 0, "n_ctx": 32}


def test_train_model_writes_snapshots_that_load(corpus_dir, tmp_path, monkeypatch):
    # The tests have no "chords" corpus format; let the family read this folkrnn-v2 one.
    monkeypatch.setitem(FAMILIES, "chordlm", dataclasses.replace(FAMILY, formats=("folkrnn-v2",)))
    train = {"epochs": 1, "batch_size": 8, "lr": 0.01, "snapshot_every": 2}
    meta = train_model("chordlm", corpus_dir, tmp_path / "a", SMALL, train, n_samples=2)
    snaps = sorted((tmp_path / "a" / "snapshots").glob("*.pt"))
    assert [p.name for p in snaps] == ["step_0000000.pt", "step_0000002.pt", "step_0000004.pt"]  # 30 pieces / 8
    model, _ = load(tmp_path / "a")
    states = []
    for path, step in zip(snaps, (0, 2, 4)):
        snap = torch.load(path, weights_only=True)
        assert snap["step"] == step and snap["epoch"] == 0
        model.load_state_dict(snap["state_dict"])  # strict: the same layout
        states.append(snap["state_dict"])
    torch.manual_seed(0)  # the run's seed: step 0 is the freshly initialised model
    fresh = ChordLM(get_family("chordlm").make_config(SMALL, vocab_size=V))
    for name, value in fresh.state_dict().items():
        assert torch.equal(states[0][name], value), name
    assert not torch.equal(states[0]["blocks.0.attn.W_Q"], states[2]["blocks.0.attn.W_Q"])
    assert meta["train_config"]["snapshot_every"] == 2
    assert (tmp_path / "a" / "samples.txt").read_text().strip()

    # deterministic: the same run again gives the same weights and snapshots
    train_model("chordlm", corpus_dir, tmp_path / "b", SMALL, train, n_samples=2)
    again, _ = load(tmp_path / "b")
    for (name, a), (_, b) in zip(model.state_dict().items(), load(tmp_path / "a")[0].state_dict().items()):
        assert torch.equal(a, again.state_dict()[name]) and torch.equal(b, again.state_dict()[name]), name
    for path in snaps:
        a, b = torch.load(path, weights_only=True), torch.load(tmp_path / "b" / "snapshots" / path.name, weights_only=True)
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])

    # without snapshot_every no snapshots are written
    train_model("chordlm", corpus_dir, tmp_path / "c", SMALL, {**train, "snapshot_every": None}, n_samples=0)
    assert not (tmp_path / "c" / "snapshots").exists()


def test_snapshots_do_not_change_training(tmp_path):
    rng = np.random.default_rng(1)
    stoi = {t: i for i, t in enumerate(TOKENS)}
    pieces = [np.array([stoi[t] for t in p]) for p in progressions(24, rng)]
    results = []
    for every in (None, 1):
        torch.manual_seed(0)
        model = ChordLM(ChordLMConfig(vocab_size=V, **SMALL))
        cfg = TrainConfig(epochs=2, batch_size=8, lr=0.01, snapshot_every=every)
        out = train_lm(model, pieces[:18], pieces[18:], TOKENS, cfg, snapshot_dir=tmp_path / "snaps")
        results.append((model.state_dict(), out["history"]["valid_loss"]))
    (a, la), (b, lb) = results
    assert la == lb and all(torch.equal(a[k], b[k]) for k in a)
    assert len(list((tmp_path / "snaps").glob("step_*.pt"))) == 1 + 2 * 3  # step 0, then 3 batches × 2 epochs
    with pytest.raises(ValueError, match="snapshot_dir"):
        train_lm(ChordLM(ChordLMConfig(vocab_size=V, **SMALL)), pieces[:18], pieces[18:], TOKENS,
                 TrainConfig(epochs=1, snapshot_every=5))
