"""Induction heads (S4): attention-pattern scores, the repeated-random-sequence test, accuracy.

Model-agnostic: every function takes numpy arrays or torch tensors and computes in float64.
Weight-based scores (OV copying, Q/K/V composition) are in :mod:`.composition`.

Notation: ``A`` is one head's attention pattern ``[T, T]`` (row ``i`` = query position, column
``j`` = key position, rows sum to 1, causal so ``A[i, j] = 0`` for ``j > i``); ``t`` the tokens
``[T]``. Patterns come as ``[batch, layer, head, T, T]`` or ``[layer, head, T, T]`` (one sequence),
tokens as ``[batch, T]`` or ``[T]``; scores come back as ``[layer, head]`` numpy arrays.

Detection patterns (as ``transformer_lens.head_detector`` defines them), ``D[i, j]`` in {0, 1}:

- previous token: ``D[i, j] = 1`` iff ``j = i - 1``;
- duplicate token: ``D[i, j] = 1`` iff ``j < i`` and ``t[j] = t[i]``;
- induction: ``D[i, j] = 1`` iff ``1 <= j <= i`` and ``t[j - 1] = t[i]`` with ``j - 1 < i``, i.e. the
  duplicate pattern shifted one column right (``j = i`` is included: when ``t[i-1] = t[i]`` the token
  after the earlier copy is the current position itself).

Score of a head on a detection pattern, two conventions (``convention=``):

- ``"rows"`` (default): the mean, over the query rows that have a detection target
  (``Σ_j D[i, j] > 0``), of the share of the row's attention on the targets,
  ``Σ_j A[i, j] D[i, j] / Σ_j A[i, j]``; rows of all sequences of a batch are pooled. A perfect
  head scores 1. The previous-token score is then ``mean_{i>=1} A[i, i-1]``.
- ``"transformer_lens"``: TransformerLens's ``detect_head(..., error_measure="mul")``: per sequence
  ``Σ_ij A[i, j] D[i, j] / Σ_ij A[i, j]`` over the whole pattern (rows without targets count in the
  denominator, so a perfect previous-token head scores ``(T-1)/T``), then the mean over sequences.

``exclude_bos`` zeroes column 0 of ``A`` and ``exclude_current_token`` its diagonal before scoring
(TransformerLens's options of the same names); the denominators use the zeroed pattern.

The repeated-random-sequence test: ``tokens = [bos] + s + s`` with ``s`` uniform random of length
``N`` (:func:`repeated_random_sequences`). A model that has induction heads predicts the second copy;
:func:`copy_losses` compares the mean next-token loss on the two copies, and
:func:`repeated_induction_scores` is the score "mean ``A[i, i-N+1]`` over the second copy".
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

CONVENTIONS = ("rows", "transformer_lens")


def _tensor(x, dtype=torch.float64) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def _patterns(patterns) -> torch.Tensor:
    """Patterns as float64 ``[batch, layer, head, T, T]``."""
    a = _tensor(patterns)
    if a.ndim == 4:
        a = a.unsqueeze(0)
    if a.ndim != 5 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"patterns must be [batch, layer, head, T, T] or [layer, head, T, T], got shape {tuple(a.shape)}")
    return a


def _tokens(tokens, batch: int, T: int) -> torch.Tensor:
    t = _tensor(tokens, torch.long)
    if t.ndim == 1:
        t = t.unsqueeze(0)
    if t.ndim != 2 or t.shape[1] != T or t.shape[0] not in (1, batch):
        raise ValueError(f"tokens must be [batch={batch}, T={T}] (or [T] for one sequence), got shape {tuple(t.shape)}")
    return t.expand(batch, T)


# --------------------------------------------------------------------------- detection patterns


def previous_token_detection(T: int) -> torch.Tensor:
    """``[T, T]``: ``D[i, i-1] = 1`` for ``i >= 1``, else 0."""
    return torch.diag(torch.ones(T - 1, dtype=torch.float64), -1)


def duplicate_token_detection(tokens) -> torch.Tensor:
    """``[..., T, T]``: ``D[i, j] = 1`` iff ``j < i`` and ``tokens[j] == tokens[i]``."""
    t = _tensor(tokens, torch.long)
    eq = (t[..., :, None] == t[..., None, :]).to(torch.float64)
    return torch.tril(eq, -1)


def induction_detection(tokens) -> torch.Tensor:
    """``[..., T, T]``: ``D[i, j] = 1`` iff ``j >= 1`` and ``dup[i, j-1] = 1`` (dup =
    :func:`duplicate_token_detection`): attention from ``i`` to the token *after* an earlier
    occurrence of ``tokens[i]``. Column 0 is 0; ``j`` ranges up to ``i`` inclusive."""
    dup = duplicate_token_detection(tokens)
    out = torch.zeros_like(dup)
    out[..., :, 1:] = dup[..., :, :-1]
    return out


# --------------------------------------------------------------------------- scores


def detection_scores(patterns, detection, *, convention: str = "rows", exclude_bos: bool = False,
                     exclude_current_token: bool = False) -> np.ndarray:
    """Score of every head on a 0/1 detection pattern ``D`` (``[T, T]`` or ``[batch, T, T]``).

    ``convention="rows"``: ``Σ_{b,i∈R} s[b,i] / |R|`` with ``s[b,i] = Σ_j A[b,i,j] D[b,i,j] /
    Σ_j A[b,i,j]`` and ``R`` the rows ``(b, i)`` with ``Σ_j D[b,i,j] > 0`` (nan if there are none).
    ``convention="transformer_lens"``: ``mean_b Σ_ij A[b,i,j] D[b,i,j] / Σ_ij A[b,i,j]``.
    Returns ``[layer, head]``.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    a = _patterns(patterns).clone()
    B, _, _, T, _ = a.shape
    d = _tensor(detection)
    if d.ndim == 2:
        d = d.unsqueeze(0)
    if d.shape[-2:] != (T, T) or d.shape[0] not in (1, B):
        raise ValueError(f"detection must be [T, T] or [batch, T, T] with T={T}, batch={B}; got {tuple(d.shape)}")
    d = d.expand(B, T, T)[:, None, None]  # [B, 1, 1, T, T]
    if exclude_bos:
        a[..., 0] = 0.0
    if exclude_current_token:
        a.diagonal(dim1=-2, dim2=-1).zero_()
    hit = (a * d).sum(-1)  # [B, L, H, T]
    mass = a.sum(-1)
    if convention == "transformer_lens":
        return (hit.sum(-1) / mass.sum(-1)).mean(0).numpy()
    rows = (d.sum(-1) > 0).expand_as(hit)  # [B, L, H, T]
    share = torch.where(rows, hit / torch.where(rows, mass, torch.ones_like(mass)), torch.zeros_like(hit))
    n = rows[:, 0, 0].sum()
    if n == 0:
        return torch.full(a.shape[1:3], float("nan"), dtype=torch.float64).numpy()
    return (share.sum(dim=(0, 3)) / n).numpy()


def previous_token_scores(patterns, **kwargs) -> np.ndarray:
    """Previous-token score ``[layer, head]``: :func:`detection_scores` on
    :func:`previous_token_detection`; with the default convention ``mean_{b, i>=1} A[b, i, i-1]``
    (for rows that sum to 1)."""
    a = _patterns(patterns)
    return detection_scores(a, previous_token_detection(a.shape[-1]), **kwargs)


def duplicate_token_scores(patterns, tokens, **kwargs) -> np.ndarray:
    """Duplicate-token score ``[layer, head]``: :func:`detection_scores` on
    :func:`duplicate_token_detection` (attention to earlier copies of the current token)."""
    a = _patterns(patterns)
    t = _tokens(tokens, a.shape[0], a.shape[-1])
    return detection_scores(a, duplicate_token_detection(t), **kwargs)


def induction_scores(patterns, tokens, **kwargs) -> np.ndarray:
    """Induction score ``[layer, head]``: :func:`detection_scores` on :func:`induction_detection`
    (attention to the token after an earlier copy of the current token)."""
    a = _patterns(patterns)
    t = _tokens(tokens, a.shape[0], a.shape[-1])
    return detection_scores(a, induction_detection(t), **kwargs)


def diagonal_scores(patterns, offset: int, first_query: int | None = None) -> np.ndarray:
    """``[layer, head]``: ``mean_{b, i >= first_query} A[b, i, i - offset] / Σ_j A[b, i, j]``.

    ``first_query`` defaults to ``offset`` (the first row that has such a key). Purely positional,
    needs no tokens.
    """
    a = _patterns(patterns)
    T = a.shape[-1]
    first = offset if first_query is None else first_query
    if offset < 0 or first < offset or first >= T:
        raise ValueError(f"need 0 <= offset <= first_query < T={T}; got offset={offset}, first_query={first}")
    rows = torch.arange(first, T)
    share = a[..., rows, rows - offset] / a[..., rows, :].sum(-1)
    return share.mean(dim=(0, 3)).numpy()


def repeated_induction_scores(patterns, length: int, prefix: int = 0) -> np.ndarray:
    """Induction score on repeated sequences ``prefix tokens + s + s`` with ``len(s) = length = N``:
    ``mean over the second copy, i in [prefix+N, prefix+2N), of A[i, i-N+1]`` (the position after
    the earlier occurrence of the current token), ``[layer, head]``. Unlike :func:`induction_scores`
    it ignores accidental repeats inside a copy."""
    if length < 2:
        raise ValueError(f"length must be at least 2, got {length}")
    return diagonal_scores(patterns, offset=length - 1, first_query=prefix + length)


# --------------------------------------------------------------------------- repeated random sequences


def repeated_random_sequences(vocab_size: int | Sequence[int], n: int, length: int,
                              generator: torch.Generator | int | None = None, exclude: Iterable[int] = (),
                              bos: int | None = None, replace: bool = True) -> torch.Tensor:
    """Random sequences repeated once: ``[n, 2*length]`` (``[n, 1 + 2*length]`` with ``bos``), long.

    Each row is ``[bos] + s + s`` with ``s`` ``length`` tokens drawn independently and uniformly
    from the allowed ids: ``range(vocab_size)`` (or the given sequence of ids) minus ``exclude``
    (and minus ``bos``); with ``replace=False`` the tokens of one copy are distinct (drawn without
    replacement), so the only repeats are those of the second copy. ``generator``: a
    ``torch.Generator``, a seed, or None (torch's global one).
    """
    ids = list(range(vocab_size)) if isinstance(vocab_size, (int, np.integer)) else [int(i) for i in vocab_size]
    drop = {int(e) for e in exclude} | ({int(bos)} if bos is not None else set())
    allowed = torch.tensor(sorted(set(ids) - drop), dtype=torch.long)
    if len(allowed) == 0:
        raise ValueError("no token ids left to draw from")
    if length < 1 or n < 1:
        raise ValueError(f"n and length must be at least 1, got n={n}, length={length}")
    if isinstance(generator, (int, np.integer)):
        generator = torch.Generator().manual_seed(int(generator))
    if replace:
        s = allowed[torch.randint(len(allowed), (n, length), generator=generator)]
    elif length > len(allowed):
        raise ValueError(f"replace=False needs length <= {len(allowed)} allowed ids, got length={length}")
    else:
        s = allowed[torch.rand(n, len(allowed), generator=generator).argsort(dim=1)[:, :length]]
    parts = [s, s]
    if bos is not None:
        parts.insert(0, torch.full((n, 1), int(bos), dtype=torch.long))
    return torch.cat(parts, dim=1)


def per_position_loss(logits, tokens) -> np.ndarray:
    """Next-token cross-entropy ``[batch, T-1]``: ``loss[b, t] = logsumexp(logits[b, t]) -
    logits[b, t, tokens[b, t+1]]`` (natural log), the loss of predicting token ``t+1`` from position
    ``t``. ``logits`` ``[batch, T, V]`` (or ``[T, V]``), ``tokens`` ``[batch, T]`` (or ``[T]``)."""
    lg = _tensor(logits)
    t = _tensor(tokens, torch.long)
    if lg.ndim == 2:
        lg, t = lg.unsqueeze(0), t.reshape(1, -1)
    if lg.ndim != 3 or t.shape != lg.shape[:2]:
        raise ValueError(f"logits [batch, T, V] and tokens [batch, T] must agree; got {tuple(lg.shape)} and {tuple(t.shape)}")
    logp = torch.log_softmax(lg[:, :-1], dim=-1)
    return (-logp.gather(-1, t[:, 1:, None])[..., 0]).numpy()


def copy_positions(length: int, prefix: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices into :func:`per_position_loss` (index ``k`` = prediction of token ``k+1``) for the
    two copies of ``prefix tokens + s + s`` (``len(s) = length``):

    - first copy: predictions of tokens ``p`` in ``[max(prefix, 1), prefix+length)`` (every token of
      the first copy that has a predecessor);
    - second copy: predictions of ``p`` in ``[prefix+length+1, prefix+2*length)``, the tokens an
      induction head can predict (the first token of the second copy follows the last token of the
      first copy, which gives no hint, so it is in neither).
    """
    if length < 2:
        raise ValueError(f"length must be at least 2, got {length}")
    first = np.arange(max(prefix, 1), prefix + length) - 1
    second = np.arange(prefix + length + 1, prefix + 2 * length) - 1
    return first, second


def copy_losses(loss_per_position, length: int, prefix: int = 0) -> dict[str, float]:
    """Mean next-token loss on the first and on the second copy, ``{"first": .., "second": ..}``,
    over all sequences; positions as :func:`copy_positions` defines them. ``loss_per_position``
    ``[batch, 2*length + prefix - 1]`` from :func:`per_position_loss`."""
    loss = _tensor(loss_per_position)
    if loss.ndim == 1:
        loss = loss.unsqueeze(0)
    expected = prefix + 2 * length - 1
    if loss.shape[-1] != expected:
        raise ValueError(f"loss_per_position must have {expected} columns for length={length}, prefix={prefix}; "
                         f"got {loss.shape[-1]}")
    first, second = copy_positions(length, prefix)
    return {"first": float(loss[:, first].mean()), "second": float(loss[:, second].mean())}


# --------------------------------------------------------------------------- accuracy


def next_token_correct(logits, targets) -> np.ndarray:
    """Boolean array of ``targets``' shape: ``argmax_v logits[..., v] == targets`` (ties: the lowest
    id wins, as ``argmax`` does). ``logits`` and ``targets`` are aligned: ``logits[..., k, :]`` is the
    prediction for ``targets[..., k]``."""
    lg = _tensor(logits)
    t = _tensor(targets, torch.long)
    if lg.shape[:-1] != t.shape:
        raise ValueError(f"logits [..., V] and targets [...] must agree; got {tuple(lg.shape)} and {tuple(t.shape)}")
    return (lg.argmax(-1) == t).numpy()


def next_token_accuracy(logits, targets, mask=None) -> float:
    """``Σ mask · [argmax logits = target] / Σ mask`` (``mask`` boolean, shape of ``targets``; all
    positions when None); nan when the mask is empty."""
    correct = next_token_correct(logits, targets)
    m = np.ones_like(correct) if mask is None else np.asarray(mask, dtype=bool)
    if m.shape != correct.shape:
        raise ValueError(f"mask must have the shape of targets {correct.shape}, got {m.shape}")
    return float(correct[m].mean()) if m.any() else float("nan")


def accuracy_by(correct, annotations: pd.DataFrame | Mapping[str, object], by: str | Sequence[str], mask=None) -> pd.DataFrame:
    """Accuracy per group: one row per combination of the ``by`` columns, with ``n`` (positions),
    ``n_correct`` and ``accuracy = n_correct / n``.

    ``correct``: boolean array (e.g. :func:`next_token_correct`); ``annotations``: a DataFrame with
    one row per element of ``correct`` in row-major (C) order, or a mapping of column name to an
    array of ``correct``'s shape (e.g. ``period``, ``repeat`` — which repetition of the loop a
    position is in —, ``ambiguous``); ``mask`` selects the positions to count.
    """
    c = np.asarray(correct, dtype=bool)
    if isinstance(annotations, pd.DataFrame):
        table = annotations.reset_index(drop=True).copy()
        if len(table) != c.size:
            raise ValueError(f"annotations has {len(table)} rows, correct has {c.size} elements")
    else:
        cols = {}
        for name, values in annotations.items():
            v = np.asarray(values)
            if v.shape != c.shape:
                raise ValueError(f"annotation {name!r} has shape {v.shape}, correct has {c.shape}")
            cols[name] = v.reshape(-1)
        table = pd.DataFrame(cols)
    table["_correct"] = c.reshape(-1)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != c.shape:
            raise ValueError(f"mask has shape {m.shape}, correct has {c.shape}")
        table = table[m.reshape(-1)]
    by = [by] if isinstance(by, str) else list(by)
    out = table.groupby(by, dropna=False)["_correct"].agg(n="size", n_correct="sum").reset_index()
    out["n_correct"] = out["n_correct"].astype(int)
    out["accuracy"] = out["n_correct"] / out["n"]
    return out
