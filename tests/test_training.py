"""Language-model training: it learns, it is deterministic, and a killed run resumes exactly."""

import numpy as np
import pytest
import torch

from musinterp.models import training
from musinterp.models.folkrnn.model import FolkRNN, FolkRNNConfig
from musinterp.models.training import TrainConfig, train_lm

BOS, EOS, VOCAB = 0, 1, 8
# <s> is 0 and </s> is 1, as in corpora built here
TOKENS = ["<s>", "</s>", "|"] + [f"n{i}" for i in range(3, VOCAB)]


def bar_tunes(n, rng):
    """Tunes of 'bars': three random notes then a bar line (token 2), repeated."""
    tunes = []
    for _ in range(n):
        bars = [np.r_[rng.integers(3, VOCAB, 3), 2] for _ in range(rng.integers(3, 7))]
        tunes.append(np.concatenate(bars).astype(np.int32))
    return tunes


def fresh_model(seed=0):
    torch.manual_seed(seed)
    return FolkRNN(FolkRNNConfig(vocab_size=VOCAB, hidden_size=16, n_layers=2, dropout=0.1))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return bar_tunes(64, rng), bar_tunes(16, rng)


def test_training_learns_bar_lines(data):
    train, valid = data
    model = fresh_model()
    cfg = TrainConfig(epochs=12, batch_size=16, lr=0.02, patience=12)
    result = train_lm(model, train, valid, TOKENS, cfg)
    losses = result["history"]["valid_loss"]
    assert losses[-1] < losses[0]
    # A bar line after three notes is certain; the model should be confident of it.
    tune = np.r_[BOS, valid[0]]
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor(tune)[None].long())[0], -1).numpy()
    bar_positions = np.where(tune[1:] == 2)[0]  # rows whose next token is a bar line
    assert probs[bar_positions, 2].mean() > 0.6


def test_deterministic(data):
    train, valid = data
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.01)
    a, b = fresh_model(), fresh_model()
    train_lm(a, train, valid, TOKENS, cfg)
    train_lm(b, train, valid, TOKENS, cfg)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name


def test_killed_run_resumes_to_same_weights(data, tmp_path, monkeypatch):
    train, valid = data
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.01, patience=10)
    reference = fresh_model()
    train_lm(reference, train, valid, TOKENS, cfg)

    calls = {"n": 0}
    real_evaluate = training.evaluate

    def dying_evaluate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed during epoch 1")
        return real_evaluate(*args, **kwargs)

    ckpt = tmp_path / "checkpoint.pt"
    monkeypatch.setattr(training, "evaluate", dying_evaluate)
    with pytest.raises(KeyboardInterrupt):
        train_lm(fresh_model(), train, valid, TOKENS, cfg, checkpoint_path=ckpt)
    monkeypatch.setattr(training, "evaluate", real_evaluate)
    assert ckpt.exists()

    resumed = fresh_model(seed=123)  # different init: everything must come from the checkpoint
    result = train_lm(resumed, train, valid, TOKENS, cfg, checkpoint_path=ckpt)
    assert result["history"]["epoch"] == [0, 1, 2]
    for (name, pa), (_, pb) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(pa, pb), name


def test_rejects_empty_heldout(data):
    train, _ = data
    with pytest.raises(ValueError, match="held-out"):
        train_lm(fresh_model(), train, [], TOKENS, TrainConfig(epochs=1))
