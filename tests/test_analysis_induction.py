"""Study S4 metrics (musinterp.analysis.induction, .composition): exact hand cases for each formula,
and a hand-built 2-layer attention-only transformer with a previous-token head and an induction
head (the acceptance case), against a random-weight model of the same shapes."""

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from musinterp.analysis.composition import (
    COMPOSITION_COLUMNS,
    composition_score,
    composition_scores,
    copying_score_from_eigenvalues,
    copying_scores,
    head_scores,
    head_weights,
    ov_circuit,
    random_composition_baseline,
)
from musinterp.analysis.induction import (
    accuracy_by,
    copy_losses,
    copy_positions,
    detection_scores,
    diagonal_scores,
    duplicate_token_detection,
    duplicate_token_scores,
    induction_detection,
    induction_scores,
    next_token_accuracy,
    next_token_correct,
    per_position_loss,
    previous_token_detection,
    previous_token_scores,
    repeated_induction_scores,
    repeated_random_sequences,
)

# --------------------------------------------------------------------------- a tiny forward pass


def forward(w, tokens):
    """Attention-only transformer, no LayerNorm, row-vector convention, TransformerLens shapes:
    x = W_E[t] + W_pos[pos]; per layer x += Σ_h softmax(causal(q kᵀ / sqrt(d_head))) v W_O;
    logits = x W_U. Returns logits [B, T, V] and patterns [B, layer, head, T, T]."""
    tokens = torch.as_tensor(tokens)
    T = tokens.shape[-1]
    x = w["W_E"][tokens] + w["W_pos"][:T]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    patterns = []
    for Wq, Wk, Wv, Wo in zip(w["W_Q"], w["W_K"], w["W_V"], w["W_O"]):
        q = torch.einsum("btd,hde->bhte", x, Wq)
        k = torch.einsum("btd,hde->bhte", x, Wk)
        v = torch.einsum("btd,hde->bhte", x, Wv)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(Wq.shape[-1])
        pattern = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
        x = x + torch.einsum("bhte,hed->btd", pattern @ v, Wo)
        patterns.append(pattern)
    return x @ w["W_U"], torch.stack(patterns, dim=1)


V, N_CTX, BOS = 30, 24, 0  # vocabulary (BOS = id 0), context; residual: token | position | previous token
D_HEAD = max(V, N_CTX)
D = V + N_CTX + V
TOK, POS, PREV = slice(0, V), slice(V, V + N_CTX), slice(V + N_CTX, D)
SCALE = 20.0  # attention logit on the wanted key (others 0): near one-hot
COPY = 10.0  # logit the induction head's OV writes for the attended token


def induction_model():
    """Layer 0, head 0: previous-token head. Query of position i = e_{i-1}, key of position j = s e_j
    (position subspace), so the logit is s iff j = i-1; OV copies the token into the PREV subspace.
    Layer 1, head 0: induction head. Query = e_{t[i]} (TOK subspace), key = s e_{t[j-1]} (PREV
    subspace, K-composition with layer 0); OV writes COPY * onehot(t[j]) into the TOK subspace,
    which W_U reads."""
    z = lambda *s: torch.zeros(*s, dtype=torch.float64)  # noqa: E731
    eye = torch.eye(V, dtype=torch.float64)
    W_E, W_pos, W_U = z(V, D), z(N_CTX, D), z(D, V)
    W_E[:, TOK] = eye
    W_pos[:, POS] = torch.eye(N_CTX, dtype=torch.float64)
    W_U[TOK, :] = eye
    s = SCALE * math.sqrt(D_HEAD)  # the forward divides by sqrt(d_head)
    Q0, K0, V0, O0 = z(1, D, D_HEAD), z(1, D, D_HEAD), z(1, D, D_HEAD), z(1, D_HEAD, D)
    for i in range(1, N_CTX):
        Q0[0, V + i, i - 1] = 1.0
    for j in range(N_CTX):
        K0[0, V + j, j] = s
    V0[0, TOK, :V] = eye
    O0[0, :V, PREV] = eye
    Q1, K1, V1, O1 = z(1, D, D_HEAD), z(1, D, D_HEAD), z(1, D, D_HEAD), z(1, D_HEAD, D)
    Q1[0, TOK, :V] = eye
    K1[0, PREV, :V] = s * eye
    V1[0, TOK, :V] = eye
    O1[0, :V, TOK] = COPY * eye
    return {"W_E": W_E, "W_pos": W_pos, "W_U": W_U, "W_Q": [Q0, Q1], "W_K": [K0, K1], "W_V": [V0, V1], "W_O": [O0, O1]}


def random_model(seed=0):
    g = torch.Generator().manual_seed(seed)
    ref = induction_model()

    def rnd(t):
        return torch.randn(t.shape, generator=g, dtype=torch.float64) / math.sqrt(t.shape[-2])

    return {k: ([rnd(t) for t in v] if isinstance(v, list) else rnd(v)) for k, v in ref.items()}


def as_module(w):
    """The weights behind TransformerLens's attribute names, as head_weights expects them."""
    blocks = [SimpleNamespace(attn=SimpleNamespace(W_Q=q, W_K=k, W_V=v, W_O=o))
              for q, k, v, o in zip(w["W_Q"], w["W_K"], w["W_V"], w["W_O"])]
    return SimpleNamespace(embed=SimpleNamespace(W_E=w["W_E"]), pos_embed=SimpleNamespace(W_pos=w["W_pos"]),
                           unembed=SimpleNamespace(W_U=w["W_U"]), blocks=blocks)


LENGTH = 10  # repeated sequences: BOS + 10 + 10 = 21 <= N_CTX


@pytest.fixture(scope="module")
def repeated():
    return repeated_random_sequences(V, 64, LENGTH, torch.Generator().manual_seed(1), bos=BOS)


@pytest.fixture(scope="module")
def baseline():
    return random_composition_baseline((D, D_HEAD), n=300, generator=2)


# --------------------------------------------------------------------------- acceptance case


def test_hand_built_induction_model(repeated, baseline):
    w = induction_model()
    logits, patterns = forward(w, repeated)
    assert patterns.shape == (64, 2, 1, 2 * LENGTH + 1, 2 * LENGTH + 1)

    prev = previous_token_scores(patterns)
    assert prev[0, 0] > 0.99 and prev[1, 0] < 0.2
    ind = induction_scores(patterns, repeated)
    assert ind[1, 0] > 0.99 and ind[0, 0] < 0.2
    # with replacement, accidental repeats inside a copy split the head's attention between the
    # positions after each earlier occurrence: the induction detection pattern counts them all,
    # the diagonal A[i, i-N+1] only one
    rep = repeated_induction_scores(patterns, LENGTH, prefix=1)
    assert 0.7 < rep[1, 0] < ind[1, 0] and rep[0, 0] < 0.1
    distinct = repeated_random_sequences(V, 16, LENGTH, torch.Generator().manual_seed(3), bos=BOS, replace=False)
    distinct_logits, distinct_patterns = forward(w, distinct)
    rep = repeated_induction_scores(distinct_patterns, LENGTH, prefix=1)
    assert rep[1, 0] > 0.99 and rep[0, 0] < 0.1

    # second-copy loss: ~0 where the current token occurred once before, ~log 2 where twice ...
    losses = copy_losses(per_position_loss(logits, repeated), LENGTH, prefix=1)
    assert losses["first"] > 2.0  # the induction head attends evenly over the prefix: a guess
    assert losses["second"] < losses["first"] / 3
    losses = copy_losses(per_position_loss(distinct_logits, distinct), LENGTH, prefix=1)
    assert losses["first"] > 2.0 and losses["second"] < 0.01

    copying = copying_scores(w["W_E"], w["W_V"][1], w["W_O"][1], w["W_U"])
    assert copying[0] == pytest.approx(1.0)
    # layer 0 writes only to the PREV subspace, which W_U does not read: no eigenvalue at all
    assert np.isnan(copying_scores(w["W_E"], w["W_V"][0], w["W_O"][0], w["W_U"])[0])

    comp = composition_scores(w["W_Q"], w["W_K"], w["W_V"], w["W_O"], baseline=baseline)
    assert list(comp.columns[:7]) == COMPOSITION_COLUMNS and len(comp) == 1
    row = comp.iloc[0]
    assert (row.layer1, row.head1, row.layer2, row.head2) == (0, 0, 1, 0)
    # OV0: tok_t -> prev_t (Frobenius sqrt V), QK1ᵀ: prev_t -> s tok_t: ‖product‖ = s sqrt V
    assert row.k_comp == pytest.approx(1 / math.sqrt(V))
    assert row.q_comp == pytest.approx(0.0, abs=1e-12) and row.v_comp == pytest.approx(0.0, abs=1e-12)
    assert row.k_comp_z > 5
    assert row.q_comp_z < 0 and row.v_comp_z < 0

    # the model can be read through TransformerLens's attribute names
    table = head_scores(as_module(w))
    assert table.copying.iloc[1] == pytest.approx(1.0) and table[["layer", "head"]].values.tolist() == [[0, 0], [1, 0]]

    # next-token accuracy: every prediction of the second copy where the earlier occurrences of the
    # current token were all followed by the same token (not ambiguous), none of the first copy
    first, second = copy_positions(LENGTH, prefix=1)
    correct = next_token_correct(logits[:, :-1], repeated[:, 1:])
    t = repeated.numpy()
    ambiguous = np.array([[len({t[b, j + 1] for j in range(k) if t[b, j] == t[b, k]}) > 1 for k in range(2 * LENGTH)]
                          for b in range(len(t))])
    copy = np.full(2 * LENGTH, "none", dtype=object)
    copy[first], copy[second] = "first", "second"
    table = accuracy_by(correct, {"copy": np.broadcast_to(copy, correct.shape), "ambiguous": ambiguous}, ["copy", "ambiguous"])
    by = table.set_index(["copy", "ambiguous"])
    assert by.loc[("second", False), "accuracy"] == 1.0 and by.loc[("second", True), "n"] > 0
    assert by.loc[("first", False), "accuracy"] < 0.3
    assert by.n.sum() == correct.size
    mask = np.broadcast_to(copy == "second", correct.shape)
    distinct_mask = np.broadcast_to(copy == "second", (16, 2 * LENGTH))
    assert next_token_accuracy(distinct_logits[:, :-1], distinct[:, 1:], mask=distinct_mask) == 1.0
    assert next_token_accuracy(logits[:, :-1], repeated[:, 1:], mask=mask & ~ambiguous) == 1.0


def test_random_model_scores_low(repeated, baseline):
    w = random_model()
    logits, patterns = forward(w, repeated)
    assert (previous_token_scores(patterns) < 0.3).all()
    assert (induction_scores(patterns, repeated) < 0.3).all()
    assert (repeated_induction_scores(patterns, LENGTH, prefix=1) < 0.3).all()
    losses = copy_losses(per_position_loss(logits, repeated), LENGTH, prefix=1)
    assert abs(losses["second"] - losses["first"]) < 0.5
    for layer in range(2):
        assert abs(copying_scores(w["W_E"], w["W_V"][layer], w["W_O"][layer], w["W_U"])[0]) < 0.5
    comp = composition_scores(w["W_Q"], w["W_K"], w["W_V"], w["W_O"], baseline=baseline)
    assert (comp[["q_comp_z", "k_comp_z", "v_comp_z"]].abs() < 4).all(axis=None)


# --------------------------------------------------------------------------- attention-pattern scores, by hand

A3 = [[1.0, 0.0, 0.0], [0.25, 0.75, 0.0], [0.1, 0.6, 0.3]]
A4 = [[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.2, 0.3, 0.5, 0.0], [0.1, 0.4, 0.2, 0.3]]


def test_detection_patterns():
    assert previous_token_detection(3).tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0]]
    assert duplicate_token_detection([5, 7, 5, 7]).tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]]
    assert induction_detection([5, 7, 5, 7]).tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]
    # adjacent repeats: TransformerLens's shifted pattern includes the current position itself
    assert duplicate_token_detection([3, 3, 3]).tolist() == [[0, 0, 0], [1, 0, 0], [1, 1, 0]]
    assert induction_detection([3, 3, 3]).tolist() == [[0, 0, 0], [0, 1, 0], [0, 1, 1]]
    batch = induction_detection([[1, 2, 1], [4, 4, 5]]).tolist()
    assert batch == [[[0, 0, 0], [0, 0, 0], [0, 1, 0]], [[0, 0, 0], [0, 1, 0], [0, 0, 0]]]


def test_previous_token_scores_3x3():
    # two layers x two heads; head (0, 0) is A3, the others attend to themselves (score 0)
    p = np.tile(np.eye(3), (2, 2, 1, 1))
    p[0, 0] = A3
    s = previous_token_scores(p)
    assert s.shape == (2, 2)
    assert s[0, 0] == pytest.approx((0.25 + 0.6) / 2) and (s.ravel()[1:] == 0).all()
    assert previous_token_scores(p, convention="transformer_lens")[0, 0] == pytest.approx((0.25 + 0.6) / 3)
    # exclude the current token: rows 1 and 2 lose their diagonal, then each row's share / its mass
    assert previous_token_scores(p, exclude_current_token=True)[0, 0] == pytest.approx((1 + 0.6 / 0.7) / 2)
    assert previous_token_scores(p, exclude_current_token=True, convention="transformer_lens")[0, 0] == pytest.approx(0.85 / 0.95)
    # exclude BOS (column 0): row 1 keeps 0 of 0.75, row 2 keeps 0.6 of 0.9
    assert previous_token_scores(p, exclude_bos=True)[0, 0] == pytest.approx((0 + 0.6 / 0.9) / 2)
    assert previous_token_scores(p, exclude_bos=True, convention="transformer_lens")[0, 0] == pytest.approx(0.6 / 1.65)
    # a batch dimension of identical sequences changes nothing; the same as the diagonal score
    assert previous_token_scores(np.stack([p, p]))[0, 0] == pytest.approx(0.425)
    assert diagonal_scores(p, 1)[0, 0] == pytest.approx(0.425)
    with pytest.raises(ValueError, match="convention"):
        previous_token_scores(p, convention="mean")


def test_duplicate_and_induction_scores_4x4():
    p = np.array(A4)[None, None]
    tokens = [5, 7, 5, 7]
    assert duplicate_token_scores(p, tokens)[0, 0] == pytest.approx((0.2 + 0.4) / 2)
    assert duplicate_token_scores(p, tokens, convention="transformer_lens")[0, 0] == pytest.approx(0.6 / 4)
    assert induction_scores(p, tokens)[0, 0] == pytest.approx((0.3 + 0.2) / 2)
    assert induction_scores(p, tokens, convention="transformer_lens")[0, 0] == pytest.approx(0.5 / 4)
    # no repeated token: no row to score
    assert np.isnan(duplicate_token_scores(p, [1, 2, 3, 4])[0, 0])
    assert duplicate_token_scores(p, [1, 2, 3, 4], convention="transformer_lens")[0, 0] == 0


def test_batch_rows_are_pooled_transformer_lens_averages_sequences():
    p = np.stack([np.array(A4), [[1, 0, 0, 0], [0.5, 0.5, 0, 0], [0.2, 0.3, 0.5, 0], [0.5, 0.1, 0.1, 0.3]]])[:, None, None]
    tokens = [[5, 7, 5, 7], [1, 2, 3, 1]]  # rows 2, 3 of the first sequence, row 3 of the second
    assert duplicate_token_scores(p, tokens)[0, 0] == pytest.approx((0.2 + 0.4 + 0.5) / 3)
    assert duplicate_token_scores(p, tokens, convention="transformer_lens")[0, 0] == pytest.approx((0.6 / 4 + 0.5 / 4) / 2)
    # without column 0 the sequences keep masses 2.2 and 1.8 and hits 0.4 and 0: the mean of the
    # ratios, 1/11, not the pooled 0.4 / 4
    tl = duplicate_token_scores(p, tokens, convention="transformer_lens", exclude_bos=True)
    assert tl[0, 0] == pytest.approx((0.4 / 2.2 + 0.0) / 2)
    with pytest.raises(ValueError, match="tokens"):
        duplicate_token_scores(p, [[1, 2, 3, 4]] * 3)
    with pytest.raises(ValueError, match="patterns"):
        previous_token_scores(np.eye(3))


def test_detection_scores_custom_pattern_and_row_mass():
    # rows that do not sum to 1 are normalised by their own mass
    p = np.array([[2.0, 0.0], [1.0, 3.0]])[None, None]
    assert detection_scores(p, [[0, 0], [1, 0]])[0, 0] == pytest.approx(1 / 4)
    assert detection_scores(p, [[1, 0], [1, 0]], convention="transformer_lens")[0, 0] == pytest.approx(3 / 6)


def test_repeated_induction_scores_picks_i_minus_n_plus_1():
    # [BOS] + (4 5 6) + (4 5 6): rows 4, 5, 6 should attend to 2, 3, 4
    T, length = 7, 3
    p = np.eye(T)
    for row, col in [(4, 2), (5, 3), (6, 5)]:  # the last one is off by one
        p[row] = np.eye(T)[col]
    s = repeated_induction_scores(p[None, None], length, prefix=1)
    assert s[0, 0] == pytest.approx(2 / 3)
    tokens = [0, 4, 5, 6, 4, 5, 6]
    assert induction_scores(p[None, None], tokens)[0, 0] == pytest.approx(2 / 3)
    # without the prefix the second copy is rows 3..6 -> columns 1..4: rows 4 and 5 hit, 3 and 6 miss
    assert repeated_induction_scores(p[None, None], length, prefix=0)[0, 0] == pytest.approx(2 / 4)
    with pytest.raises(ValueError):
        repeated_induction_scores(p[None, None], 1)
    with pytest.raises(ValueError):
        diagonal_scores(p[None, None], 2, first_query=1)


# --------------------------------------------------------------------------- repeated sequences and losses


def test_repeated_random_sequences():
    g = torch.Generator().manual_seed(0)
    t = repeated_random_sequences(10, 500, 6, g, exclude=[3, 4], bos=0)
    assert t.shape == (500, 13) and t.dtype == torch.long
    assert (t[:, 0] == 0).all() and (t[:, 1:7] == t[:, 7:]).all()
    assert set(t[:, 1:].unique().tolist()) == {1, 2, 5, 6, 7, 8, 9}
    counts = torch.bincount(t[:, 1:7].reshape(-1), minlength=10)[[1, 2, 5, 6, 7, 8, 9]].double() / (500 * 6)
    assert (abs(counts - 1 / 7) < 0.03).all()
    same = repeated_random_sequences(10, 4, 6, torch.Generator().manual_seed(7))
    assert torch.equal(repeated_random_sequences(10, 4, 6, 7), same)
    ids = repeated_random_sequences([11, 13, 17], 50, 4, 1)
    assert ids.shape == (50, 8) and set(ids.unique().tolist()) <= {11, 13, 17}
    distinct = repeated_random_sequences([11, 13, 17], 50, 3, 1, replace=False)
    assert all(sorted(row[:3].tolist()) == [11, 13, 17] for row in distinct)
    with pytest.raises(ValueError, match="replace=False"):
        repeated_random_sequences(3, 2, 4, 0, replace=False)
    with pytest.raises(ValueError, match="no token"):
        repeated_random_sequences(2, 2, 4, 0, exclude=[0], bos=1)


def test_per_position_loss():
    logits = torch.tensor([[[0.0, math.log(3)], [math.log(2), 0.0], [5.0, -5.0]]])
    loss = per_position_loss(logits, [[0, 1, 0]])
    assert loss.shape == (1, 2)
    assert loss[0] == pytest.approx([math.log(4 / 3), math.log(3 / 2)])
    assert per_position_loss(logits[0], [0, 1, 0]) == pytest.approx(loss)


def test_copy_positions_and_losses():
    # [BOS] a b c a b c: loss k predicts token k+1; first copy = tokens 1..3 (k 0..2), second copy = tokens 5, 6
    first, second = copy_positions(3, prefix=1)
    assert first.tolist() == [0, 1, 2] and second.tolist() == [4, 5]
    assert copy_losses(np.arange(6.0), 3, prefix=1) == {"first": 1.0, "second": 4.5}
    # a b c a b c: first copy = tokens 1, 2, second = tokens 4, 5
    assert copy_positions(3)[0].tolist() == [0, 1] and copy_positions(3)[1].tolist() == [3, 4]
    assert copy_losses(np.stack([np.arange(5.0), np.arange(5.0) + 2]), 3) == {"first": 1.5, "second": 4.5}
    with pytest.raises(ValueError, match="columns"):
        copy_losses(np.zeros((2, 6)), 3)


# --------------------------------------------------------------------------- accuracy


def test_next_token_accuracy():
    logits = [[0, 1, 0], [2, 0, 0], [0, 0, 1], [1, 1, 0]]
    targets = [1, 1, 2, 0]  # the tie in the last row goes to the lowest id
    assert next_token_correct(logits, targets).tolist() == [True, False, True, True]
    assert next_token_accuracy(logits, targets) == 0.75
    assert next_token_accuracy(logits, targets, mask=[True, True, False, False]) == 0.5
    assert math.isnan(next_token_accuracy(logits, targets, mask=[False] * 4))
    with pytest.raises(ValueError):
        next_token_accuracy(logits, targets[:3])


def test_accuracy_by_groups():
    correct = np.array([[True, False, True], [True, False, True]])
    period = np.array([[4, 4, 8], [8, 8, 8]])
    table = accuracy_by(correct, {"period": period}, "period")
    assert table.to_dict("list") == {"period": [4, 8], "n": [2, 4], "n_correct": [1, 3], "accuracy": [0.5, 0.75]}
    frame = pd.DataFrame({"period": period.ravel(), "repeat": [0, 1, 0, 0, 1, 1]})
    table = accuracy_by(correct, frame, ["period", "repeat"], mask=[[True, True, True], [False, True, True]])
    assert table.to_dict("list") == {"period": [4, 4, 8, 8], "repeat": [0, 1, 0, 1], "n": [1, 1, 1, 2],
                                     "n_correct": [1, 0, 1, 1], "accuracy": [1.0, 0.0, 1.0, 0.5]}
    with pytest.raises(ValueError, match="rows"):
        accuracy_by(correct, frame.iloc[:5], "period")


# --------------------------------------------------------------------------- OV copying


def rotation(theta):
    return torch.tensor([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]], dtype=torch.float64)


def test_copying_scores_by_hand():
    eye = torch.eye(2, dtype=torch.float64)
    # eigenvalues 2 e^{±iπ/3}: Re Σλ = 2, Σ|λ| = 4
    assert copying_scores(eye, eye, 2 * rotation(math.pi / 3), eye) == pytest.approx(0.5)
    assert copying_scores(eye, eye, torch.diag(torch.tensor([3.0, -1.0])), eye) == pytest.approx(0.5)
    assert copying_scores(eye, eye, -eye, eye) == pytest.approx(-1.0)
    assert copying_scores(eye, eye, torch.diag(torch.tensor([2.0, -2.0])), eye) == pytest.approx(0.0)
    assert copying_score_from_eigenvalues([1 + 1j, 1 - 1j, -1]) == pytest.approx(1 / (2 * math.sqrt(2) + 1))
    assert np.isnan(copying_score_from_eigenvalues([0.0, 0.0]))
    assert ov_circuit(eye, eye, 3 * eye, eye) == pytest.approx(3 * np.eye(2))


def test_copying_small_matrix_equals_full_circuit():
    g = torch.Generator().manual_seed(0)
    Vs, d, dh, H = 7, 5, 3, 4
    W_E, W_U = torch.randn(Vs, d, generator=g), torch.randn(d, Vs, generator=g)
    W_V, W_O = torch.randn(H, d, dh, generator=g), torch.randn(H, dh, d, generator=g)
    small = copying_scores(W_E, W_V, W_O, W_U)
    full = copying_scores(W_E, W_V, W_O, W_U, full=True)
    assert small.shape == (H,) and small == pytest.approx(full)
    # Re Σλ is the trace of the full circuit
    circuit = ov_circuit(W_E, W_V, W_O, W_U)
    lam = np.linalg.eigvals(circuit[0])
    assert np.real(lam.sum()) == pytest.approx(np.trace(circuit[0]))
    assert small[0] == pytest.approx(np.trace(circuit[0]) / np.abs(lam).sum())


# --------------------------------------------------------------------------- composition


def two_layer_e12():
    """d = 2, d_head = 1. Layer 0 OV maps e1 -> e2. Layer 1: query reads e2, key reads e1, value
    reads e2."""
    t = lambda m: torch.tensor([m], dtype=torch.float64)  # noqa: E731  (one head)
    return {"W_Q": [t([[1.0], [0.0]]), t([[0.0], [1.0]])], "W_K": [t([[1.0], [0.0]]), t([[1.0], [0.0]])],
            "W_V": [t([[1.0], [0.0]]), t([[0.0], [1.0]])], "W_O": [t([[0.0, 1.0]]), t([[1.0, 0.0]])]}


def test_composition_q_k_v_by_hand():
    w = two_layer_e12()
    # OV0 = E12; QK1 = W_Q W_Kᵀ = E21; Q: E12 E21 = E11 (1); K: E12 E12 = 0; V: OV1 = E21 -> 1
    row = composition_scores(w["W_Q"], w["W_K"], w["W_V"], w["W_O"]).iloc[0]
    assert (row.q_comp, row.k_comp, row.v_comp) == pytest.approx((1.0, 0.0, 1.0))
    # query and key swapped in layer 1: K-composition instead
    row = composition_scores(w["W_Q"][:1] + w["W_K"][1:], w["W_K"][:1] + w["W_Q"][1:], w["W_V"], w["W_O"]).iloc[0]
    assert (row.q_comp, row.k_comp, row.v_comp) == pytest.approx((0.0, 1.0, 1.0))
    # scale does not matter, the Frobenius normalisation does
    assert composition_score(np.eye(2), 3 * np.diag([1.0, 0.0])) == pytest.approx(1 / math.sqrt(2))
    baseline = pd.DataFrame({"mean": [0.5] * 3, "sd": [0.25] * 3}, index=["q_comp", "k_comp", "v_comp"])
    row = composition_scores(w["W_Q"], w["W_K"], w["W_V"], w["W_O"], baseline=baseline).iloc[0]
    assert (row.q_comp_z, row.k_comp_z, row.v_comp_z) == pytest.approx((2.0, -2.0, 2.0))


def test_composition_table_pairs_and_values():
    g = torch.Generator().manual_seed(0)
    L, H, d, dh = 3, 2, 6, 2
    W_Q, W_K, W_V = (torch.randn(L, H, d, dh, generator=g, dtype=torch.float64) for _ in range(3))
    W_O = torch.randn(L, H, dh, d, generator=g, dtype=torch.float64)
    table = composition_scores(W_Q, W_K, W_V, W_O)
    assert list(table.columns) == COMPOSITION_COLUMNS
    keys = [(l1, h1, l2, h2) for l1 in range(L) for h1 in range(H) for l2 in range(l1 + 1, L) for h2 in range(H)]
    assert [tuple(r) for r in table[COMPOSITION_COLUMNS[:4]].values.tolist()] == keys
    row = table.set_index(COMPOSITION_COLUMNS[:4]).loc[(0, 1, 2, 0)]
    OV1 = W_V[0, 1] @ W_O[0, 1]
    QK2 = W_Q[2, 0] @ W_K[2, 0].T
    assert row.q_comp == pytest.approx(float(composition_score(OV1, QK2)))
    assert row.k_comp == pytest.approx(float(composition_score(OV1, QK2.T)))
    assert row.v_comp == pytest.approx(float(composition_score(OV1, W_V[2, 0] @ W_O[2, 0])))
    assert row.q_comp != pytest.approx(row.k_comp)
    with pytest.raises(ValueError, match="layers"):
        composition_scores(W_Q, W_K[:2], W_V, W_O)


def test_random_composition_baseline():
    b = random_composition_baseline((32, 8), n=200, generator=0)
    assert list(b.index) == ["q_comp", "k_comp", "v_comp"] and list(b.columns) == ["mean", "sd", "n"]
    # E‖AB‖² / (E‖A‖² E‖B‖²) = 1/d for independent Gaussian factors
    assert (abs(b["mean"] - 1 / math.sqrt(32)) < 0.1 / math.sqrt(32)).all()
    assert (b["sd"] > 0).all() and (b["sd"] < 0.2 * b["mean"]).all()
    assert b.equals(random_composition_baseline({"d_model": 32, "d_head": 8}, n=200, generator=torch.Generator().manual_seed(0)))


# --------------------------------------------------------------------------- weights by TransformerLens names


def test_head_weights_names():
    w = two_layer_e12()
    w.update(W_E=torch.eye(2), W_U=torch.eye(2), W_pos=torch.zeros(4, 2))
    got = head_weights(as_module(w))
    assert set(got) == {"W_E", "W_pos", "W_U", "W_Q", "W_K", "W_V", "W_O"}
    assert len(got["W_Q"]) == 2 and got["W_O"][0].dtype == torch.float64 and torch.equal(got["W_O"][1], w["W_O"][1])
    module = as_module(w)
    del module.pos_embed
    assert head_weights(module)["W_pos"] is None
    del module.unembed
    with pytest.raises(AttributeError, match="TransformerLens attribute names"):
        head_weights(module)
