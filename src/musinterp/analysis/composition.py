"""Weight-based scores of attention heads (S4): OV copying score and Q/K/V composition.

Row-vector convention (``x @ W``, as TransformerLens): ``W_E [V, d]``, ``W_pos [n_ctx, d]``,
``W_Q, W_K, W_V [head, d, d_head]``, ``W_O [head, d_head, d]``, ``W_U [d, V]``. A head's attention
logit from query row ``x_q`` to key row ``x_k`` is ``x_q W_Q W_Kᵀ x_kᵀ`` (``W_QK = W_Q W_Kᵀ``,
``[d, d]``) and what it writes when it attends to ``x_k`` is ``x_k W_V W_O`` (``W_OV = W_V W_O``).

Copying score (Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"): with
``λ`` the eigenvalues of the full OV circuit ``W_E W_V W_O W_U`` (``[V, V]``),
``copying = Re(Σ λ) / Σ |λ|``; 1 for a head that only raises the logit of the token it attends to.
Since ``eig(AB)`` and ``eig(BA)`` share their nonzero eigenvalues, it is computed on
``W_V W_O W_U W_E`` (``[d_head, d_head]``); zero eigenvalues add nothing to either sum.

Composition scores (the same paper; TransformerLens ``HookedTransformer.all_composition_scores``
with ``utils.composition_scores(left, right) = ‖left @ right‖_F / (‖left‖_F ‖right‖_F)``): for a
head 1 in an earlier layer and a head 2 in a later one, ``left = W_OV1 = W_V1 W_O1`` and

- Q-composition: ``right = W_QK2 = W_Q2 W_K2ᵀ`` (head 1's output read by head 2's queries),
- K-composition: ``right = W_QK2ᵀ = W_K2 W_Q2ᵀ`` (read by its keys),
- V-composition: ``right = W_OV2 = W_V2 W_O2`` (read by its values).

Each score is at most ``1/sqrt(rank)`` for a left factor with a flat spectrum, so scores are
reported against :func:`random_composition_baseline` (Gaussian weights of the same shapes, for which
the expected score is about ``1/sqrt(d)``).

:func:`head_weights` collects these arrays from a model with TransformerLens's attribute names.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

COMPOSITION_COLUMNS = ["layer1", "head1", "layer2", "head2", "q_comp", "k_comp", "v_comp"]
MODES = ("q_comp", "k_comp", "v_comp")


def _tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64)
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def _fro(m: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_norm(m, ord="fro")


# --------------------------------------------------------------------------- copying


def ov_circuit(W_E, W_V, W_O, W_U) -> np.ndarray:
    """Full OV circuit ``W_E W_V W_O W_U``: ``[V, V]`` (or ``[head, V, V]`` for ``W_V [head, d,
    d_head]``); entry ``[s, t]`` is how much attending to token ``s`` raises the logit of ``t``."""
    return (_tensor(W_E) @ _tensor(W_V) @ _tensor(W_O) @ _tensor(W_U)).numpy()


def copying_score_from_eigenvalues(eigenvalues) -> np.ndarray:
    """``Re(Σ λ) / Σ |λ|`` over the last axis; nan where all eigenvalues are 0."""
    lam = np.asarray(eigenvalues)
    total = np.abs(lam).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.real(lam.sum(-1)) / np.where(total > 0, total, 1.0), np.nan)


def copying_scores(W_E, W_V, W_O, W_U, *, full: bool = False) -> np.ndarray:
    """Copying score ``Re(Σλ)/Σ|λ|`` of the eigenvalues of ``W_E W_V W_O W_U``, per head.

    ``W_V [head, d, d_head]`` and ``W_O [head, d_head, d]`` give ``[head]``; a single head's
    ``[d, d_head]``/``[d_head, d]`` gives a scalar array. ``full=False`` (default) takes the
    eigenvalues of the ``[d_head, d_head]`` matrix ``W_V W_O W_U W_E``; ``full=True`` those of the
    ``[V, V]`` circuit itself (same score, slower; for checking).
    """
    E, Vw, Ow, U = (_tensor(w) for w in (W_E, W_V, W_O, W_U))
    m = E @ Vw @ Ow @ U if full else Vw @ Ow @ U @ E
    return copying_score_from_eigenvalues(torch.linalg.eigvals(m).numpy())


# --------------------------------------------------------------------------- composition


def composition_score(left, right) -> np.ndarray:
    """``‖left @ right‖_F / (‖left‖_F ‖right‖_F)`` over the last two axes (leading axes
    broadcast)."""
    L, R = _tensor(left), _tensor(right)
    return (_fro(L @ R) / (_fro(L) * _fro(R))).numpy()


def _layers(weights, name: str) -> list[torch.Tensor]:
    out = []
    for layer, w in enumerate(weights):
        t = _tensor(w)
        if t.ndim == 2:
            t = t.unsqueeze(0)
        if t.ndim != 3:
            raise ValueError(f"{name}[{layer}] must be [head, ., .], got shape {tuple(t.shape)}")
        out.append(t)
    return out


def _pair_scores(OV1: torch.Tensor, W_Q2: torch.Tensor, W_K2: torch.Tensor, OV2: torch.Tensor) -> dict[str, torch.Tensor]:
    """Scores ``[head1, head2]`` from ``OV1 [h1, d, d]`` and the later layer's ``W_Q2, W_K2 [h2, d,
    d_head]``, ``OV2 [h2, d, d]``."""
    QK2 = W_Q2 @ W_K2.transpose(-1, -2)
    rights = {"q_comp": QK2, "k_comp": QK2.transpose(-1, -2), "v_comp": OV2}
    l_norm = _fro(OV1)[:, None]
    out = {}
    for mode, right in rights.items():
        prod = OV1[:, None] @ right[None]  # [h1, h2, d, d]
        out[mode] = _fro(prod) / (l_norm * _fro(right)[None, :])
    return out


def composition_scores(W_Q: Sequence, W_K: Sequence, W_V: Sequence, W_O: Sequence,
                       baseline: pd.DataFrame | None = None) -> pd.DataFrame:
    """Q-, K- and V-composition of every head pair ``(layer1, head1) -> (layer2, head2)`` with
    ``layer1 < layer2`` (formulas in the module docstring).

    Arguments are per-layer sequences: ``W_Q[l], W_K[l], W_V[l]`` ``[head, d, d_head]`` and
    ``W_O[l]`` ``[head, d_head, d]`` (or an array with a leading layer axis). Rows are ordered by
    layer1, head1, layer2, head2. With ``baseline`` (from :func:`random_composition_baseline`)
    columns ``q_comp_z``, ``k_comp_z``, ``v_comp_z`` = ``(score - mean) / sd`` are added.
    """
    Q, K, Vw, Ow = _layers(W_Q, "W_Q"), _layers(W_K, "W_K"), _layers(W_V, "W_V"), _layers(W_O, "W_O")
    if not len(Q) == len(K) == len(Vw) == len(Ow):
        raise ValueError(f"W_Q, W_K, W_V, W_O must have the same number of layers, got {len(Q)}, {len(K)}, {len(Vw)}, {len(Ow)}")
    OV = [v @ o for v, o in zip(Vw, Ow)]
    rows = []
    for l1 in range(len(Q)):
        for l2 in range(l1 + 1, len(Q)):
            s = _pair_scores(OV[l1], Q[l2], K[l2], OV[l2])
            for h1 in range(OV[l1].shape[0]):
                for h2 in range(Q[l2].shape[0]):
                    rows.append([l1, h1, l2, h2] + [float(s[m][h1, h2]) for m in MODES])
    table = pd.DataFrame(rows, columns=COMPOSITION_COLUMNS).sort_values(COMPOSITION_COLUMNS[:4]).reset_index(drop=True)
    for c in COMPOSITION_COLUMNS[:4]:
        table[c] = table[c].astype(int)
    if baseline is not None:
        for m in MODES:
            table[f"{m}_z"] = (table[m] - baseline.loc[m, "mean"]) / baseline.loc[m, "sd"]
    return table


def random_composition_baseline(shapes, n: int = 200, generator: torch.Generator | int | None = None) -> pd.DataFrame:
    """Composition scores of random heads: mean and sd over ``n`` draws, for comparison.

    ``shapes``: ``(d_model, d_head)``, or a mapping with those keys. Each draw takes fresh
    ``W_V1, W_Q2, W_K2, W_V2 [d_model, d_head]`` and ``W_O1, W_O2 [d_head, d_model]`` with i.i.d.
    standard normal entries (the scores do not depend on the scale) and scores them as
    :func:`composition_scores` does. Returns a DataFrame indexed by ``q_comp``, ``k_comp``,
    ``v_comp`` with columns ``mean``, ``sd`` (ddof=1), ``n``.
    """
    if isinstance(shapes, Mapping):
        d, dh = int(shapes["d_model"]), int(shapes["d_head"])
    else:
        d, dh = (int(s) for s in shapes)
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    if isinstance(generator, (int, np.integer)):
        generator = torch.Generator().manual_seed(int(generator))

    def draw(*shape):
        return torch.randn(n, *shape, generator=generator, dtype=torch.float64)

    OV1 = draw(d, dh) @ draw(dh, d)
    Q2, K2 = draw(d, dh), draw(d, dh)
    OV2 = draw(d, dh) @ draw(dh, d)
    QK2 = Q2 @ K2.transpose(-1, -2)
    rights = {"q_comp": QK2, "k_comp": QK2.transpose(-1, -2), "v_comp": OV2}
    rows = {}
    for m, right in rights.items():
        s = _fro(OV1 @ right) / (_fro(OV1) * _fro(right))
        rows[m] = {"mean": float(s.mean()), "sd": float(s.std(unbiased=True)), "n": n}
    return pd.DataFrame.from_dict(rows, orient="index")


# --------------------------------------------------------------------------- weights of a model


def head_weights(model) -> dict[str, object]:
    """The weights these scores need, from a model with TransformerLens's attribute names:

    ``model.embed.W_E [V, d]``, ``model.pos_embed.W_pos [n_ctx, d]`` (optional),
    ``model.unembed.W_U [d, V]``, and per block ``model.blocks[l].attn.W_Q, .W_K, .W_V
    [head, d, d_head]``, ``.W_O [head, d_head, d]`` (a ``HookedTransformer`` has these, and so does
    our ``chordlm``). Returns a dict with ``W_E``, ``W_pos`` (None if absent), ``W_U`` (float64
    tensors) and ``W_Q``, ``W_K``, ``W_V``, ``W_O`` (lists over layers), ready for
    :func:`composition_scores` and :func:`copying_scores`. LayerNorm weights, if the model has any,
    are not folded in.
    """
    try:
        blocks = list(model.blocks)
        out = {"W_E": _tensor(model.embed.W_E), "W_U": _tensor(model.unembed.W_U)}
        pos = getattr(getattr(model, "pos_embed", None), "W_pos", None)
        out["W_pos"] = None if pos is None else _tensor(pos)
        for name in ("W_Q", "W_K", "W_V", "W_O"):
            out[name] = [_tensor(getattr(b.attn, name)) for b in blocks]
    except AttributeError as e:
        raise AttributeError(
            f"head_weights expects TransformerLens attribute names (model.embed.W_E, model.unembed.W_U, "
            f"model.blocks[l].attn.W_Q/W_K/W_V/W_O): {e}") from e
    return out


def head_scores(model) -> pd.DataFrame:
    """Per head (``layer``, ``head``): the OV ``copying`` score, from :func:`head_weights`."""
    w = head_weights(model)
    rows = []
    for layer, (Vw, Ow) in enumerate(zip(w["W_V"], w["W_O"])):
        for head, score in enumerate(np.atleast_1d(copying_scores(w["W_E"], Vw, Ow, w["W_U"]))):
            rows.append({"layer": layer, "head": head, "copying": float(score)})
    return pd.DataFrame(rows, columns=["layer", "head", "copying"])
