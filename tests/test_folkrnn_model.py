"""The folk-rnn LSTM against an independent numpy implementation of the documented v2 step."""

import numpy as np
import pytest
import torch

from musinterp.models.folkrnn.model import FolkRNN, FolkRNNConfig
from musinterp.models.hooks import replace_site


def lasagne_params(rng, vocab=137, hidden=16, n_layers=3):
    """Random arrays in folk-rnn v2's documented order (45 arrays for 3 layers)."""
    params = [np.eye(vocab, dtype=np.float32)]
    for layer in range(n_layers):
        n_in = vocab if layer == 0 else hidden
        for _gate in range(4):
            params += [
                rng.normal(0, 0.3, (n_in, hidden)).astype(np.float32),
                rng.normal(0, 0.3, (hidden, hidden)).astype(np.float32),
                rng.normal(0, 0.3, hidden).astype(np.float32),
            ]
        params += [rng.normal(0, 0.5, (1, hidden)).astype(np.float32),  # cell_init
                   rng.normal(0, 0.5, (1, hidden)).astype(np.float32)]  # hid_init
    params += [rng.normal(0, 0.3, (hidden, vocab)).astype(np.float32), rng.normal(0, 0.3, vocab).astype(np.float32)]
    return params


def numpy_folkrnn(params, tokens):
    """Reference: i, f, c, o gates exactly as DESIGN.md writes them, float64."""
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    vocab = params[0].shape[0]
    n_layers = (len(params) - 3) // 14
    x = np.eye(vocab)[tokens] @ params[0]
    cells = []
    for layer in range(n_layers):
        (Wxi, Whi, bi, Wxf, Whf, bf, Wxc, Whc, bc, Wxo, Who, bo, c0, h0) = [
            np.asarray(a, np.float64) for a in params[1 + 14 * layer : 15 + 14 * layer]
        ]
        h, c = h0[0], c0[0]
        hs, cs = [], []
        for xt in x:
            i = sig(xt @ Wxi + h @ Whi + bi)
            f = sig(xt @ Wxf + h @ Whf + bf)
            c = f * c + i * np.tanh(xt @ Wxc + h @ Whc + bc)
            o = sig(xt @ Wxo + h @ Who + bo)
            h = o * np.tanh(c)
            hs.append(h)
            cs.append(c)
        x = np.array(hs)
        cells.append(np.array(cs))
    logits = x @ params[-2] + params[-1]
    return logits, x, cells


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(7)
    params = lasagne_params(rng)
    tokens = rng.integers(0, 137, 200)
    model = FolkRNN.from_lasagne(params).eval()
    return params, tokens, model


def test_logits_match_numpy_reference(setup):
    params, tokens, model = setup
    ref_logits, _, _ = numpy_folkrnn(params, tokens)
    with torch.no_grad():
        logits = model(torch.tensor(tokens)[None])[0].double().numpy()
    assert logits.shape == (200, 137)
    assert np.abs(logits - ref_logits).max() <= 1e-5


def test_stepwise_states_match_reference(setup):
    params, tokens, model = setup
    ref_logits, ref_h, ref_cells = numpy_folkrnn(params, tokens)
    states = model.run_with_states(torch.tensor(tokens))
    assert set(states) == set(model.site_names())
    assert np.abs(states["lstm2_h"].numpy() - ref_h).max() <= 1e-5
    for layer in range(3):
        assert np.abs(states[f"lstm{layer}_c"].numpy() - ref_cells[layer]).max() <= 1e-5
    probs = np.exp(ref_logits - ref_logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert np.abs(states["softmax"].numpy() - probs).max() <= 1e-6


def test_learned_initial_state_is_used(setup):
    params, tokens, model = setup
    # Changing hid_init of layer 0 must change the first step's output.
    before = model.run_with_states(torch.tensor(tokens[:3]))["lstm0_h"][0].clone()
    with torch.no_grad():
        model.h0[0] += 1.0
    after = model.run_with_states(torch.tensor(tokens[:3]))["lstm0_h"][0]
    with torch.no_grad():
        model.h0[0] -= 1.0
    assert not torch.allclose(before, after)


def test_generate_stops_at_end_token():
    torch.manual_seed(0)
    model = FolkRNN(FolkRNNConfig(vocab_size=10, hidden_size=8, n_layers=2)).eval()
    with torch.no_grad():
        model.head.bias.fill_(-20.0)
        model.head.bias[3] = 20.0  # the "end" token dominates
    seq = model.generate([0], end_id=3, max_len=50, generator=torch.Generator().manual_seed(0))
    assert seq == [0, 3]


def test_generate_sees_the_same_states_as_a_full_pass():
    """Incremental generation computes the same layer outputs as a full pass over the sequence."""
    torch.manual_seed(1)
    model = FolkRNN(FolkRNNConfig(vocab_size=12, hidden_size=8, n_layers=2)).eval()
    seq = model.generate([0], end_id=99, max_len=20, generator=torch.Generator().manual_seed(3))
    captured = []
    with replace_site(model, "lstm1_h", lambda h: captured.append(h.clone()) or h):
        model.generate(seq[:10], end_id=99, max_len=11, generator=torch.Generator().manual_seed(3))
    full = model.run_with_states(torch.tensor(seq[:10]))["lstm1_h"]
    assert torch.allclose(captured[0][0], full, atol=1e-6)


def test_replace_site_changes_only_layers_above():
    torch.manual_seed(2)
    model = FolkRNN(FolkRNNConfig(vocab_size=12, hidden_size=8, n_layers=3)).eval()
    tokens = torch.randint(0, 12, (2, 15))
    with torch.no_grad():
        clean = model(tokens)
        with replace_site(model, "lstm1_h", torch.zeros_like):
            zeroed = model(tokens)
        with replace_site(model, "lstm1_h", lambda h: h):
            identity = model(tokens)
        # Layer 2 reading zeros: its output depends on its own initial state and recurrence only.
        with replace_site(model, "lstm1_h", torch.zeros_like):
            zeroed_other = model(torch.randint(0, 12, (2, 15)))
    assert torch.equal(clean, identity)
    assert not torch.allclose(clean, zeroed)
    assert torch.allclose(zeroed, zeroed_other)
    with pytest.raises(ValueError, match="cannot be replaced"):
        with replace_site(model, "lstm1_c", torch.zeros_like):
            pass


def test_from_lasagne_rejects_wrong_length():
    with pytest.raises(ValueError, match="3 \\+ 14"):
        FolkRNN.from_lasagne([np.eye(4)] * 10)


def test_padded_batch_matches_single_sequences():
    torch.manual_seed(4)
    model = FolkRNN(FolkRNNConfig(vocab_size=12, hidden_size=8, n_layers=2)).eval()
    seqs = [torch.randint(0, 12, (n,)) for n in (9, 4, 13)]
    batch = torch.zeros(3, 13, dtype=torch.long)
    for row, s in enumerate(seqs):
        batch[row, : len(s)] = s
    states = model.run_batch_with_states(batch)
    for row, s in enumerate(seqs):
        single = model.run_with_states(s)
        for site in model.site_names():
            assert torch.allclose(states[site][row, : len(s)], single[site], atol=1e-6), site
    only = model.run_batch_with_states(batch, sites=["lstm0_c"])
    assert list(only) == ["lstm0_c"] and torch.allclose(only["lstm0_c"], states["lstm0_c"])
