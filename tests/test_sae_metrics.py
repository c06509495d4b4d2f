"""Held-out SAE metrics: a hand-computed example, and streaming == one-shot."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from musinterp.sae.metrics import MetricsAccumulator, compute_metrics

# 3 tokens, 2 dimensions, 4 latents.
X = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
X_HAT = np.array([[1.0, 0.0], [0.0, 0.0], [2.0, 1.0]])
Z = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [2.0, 3.0, 0.0, 0.0]])


def test_hand_computed_example():
    # x̄ = (1, 1); Σ‖x − x̄‖² = (0 + 1) + (1 + 0) + (1 + 1) = 4; Σ‖x − x̂‖² = 0 + 1 + 1 = 2.
    # Non-zero latents per token: 1, 0, 2 → L0 = 1. Latents 2 and 3 never fire → dead 2/4.
    # Latent 0 fires on 2/3 of tokens, latent 1 on 1/3: both > 10 % → dense 2/4.
    m = compute_metrics(X, X_HAT, Z)
    assert m.fvu == pytest.approx(2 / 4)
    assert m.l0 == pytest.approx(1.0)
    assert m.dead_fraction == pytest.approx(0.5)
    assert m.dense_fraction == pytest.approx(0.5)
    assert m.n_tokens == 3
    # With a 50 % threshold only latent 0 (2/3) is dense.
    assert compute_metrics(X, X_HAT, Z, dense_threshold=0.5).dense_fraction == pytest.approx(0.25)


def test_batches_give_the_same_metrics_as_one_batch():
    acc = MetricsAccumulator(d_in=2, d_sae=4)
    for i in range(3):  # one token at a time, torch tensors this time
        acc.update(torch.tensor(X[i : i + 1]), torch.tensor(X_HAT[i : i + 1]), torch.tensor(Z[i : i + 1]))
    assert acc.result() == compute_metrics(X, X_HAT, Z)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 60),
    cuts=st.lists(st.integers(0, 60), max_size=5),
    seed=st.integers(0, 2**16),
    offset=st.floats(-1e4, 1e4),
)
def test_streaming_matches_direct_numpy(n, cuts, seed, offset):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) + offset  # a large offset would expose Σx² − n·x̄² cancellation
    x_hat = x + rng.normal(scale=0.3, size=x.shape)
    z = np.maximum(rng.normal(size=(n, 5)) - 1.0, 0.0)
    acc = MetricsAccumulator(3, 5)
    bounds = [0, *sorted(c for c in cuts if c < n), n]
    for a, b in zip(bounds[:-1], bounds[1:]):
        acc.update(x[a:b], x_hat[a:b], z[a:b])
    m = acc.result()
    expected_fvu = ((x - x_hat) ** 2).sum() / ((x - x.mean(axis=0)) ** 2).sum()
    assert m.fvu == pytest.approx(expected_fvu, rel=1e-6)
    assert m.l0 == pytest.approx((z != 0).sum(axis=1).mean())
    assert m.dead_fraction == pytest.approx(((z != 0).sum(axis=0) == 0).mean())
    assert m.dense_fraction == pytest.approx(((z != 0).mean(axis=0) > 0.1).mean())


def test_constant_heldout_set_has_undefined_fvu():
    x = np.ones((4, 2))
    assert math.isnan(compute_metrics(x, x, np.zeros((4, 3))).fvu)


def test_errors():
    with pytest.raises(ValueError, match="no held-out tokens"):
        MetricsAccumulator(2, 4).result()
    with pytest.raises(ValueError, match="expected"):
        MetricsAccumulator(2, 4).update(X, X_HAT[:2], Z)
    with pytest.raises(ValueError, match="d_sae=5"):
        MetricsAccumulator(2, 5).update(X, X_HAT, Z)
