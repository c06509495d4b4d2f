"""S4 on one chordlm model: induction on repeated random chords, head scores, composition,
ablations and training dynamics. The formulas live in :mod:`.induction` and :mod:`.composition`;
this module runs them on a model and returns tables (one row per measured thing).

Tables (columns):

- ``copies``: ``length`` (N of the repeated random sequence ``<s> s s``), ``first``, ``second`` (mean
  next-token loss on each copy, nats), ``gap`` = first − second;
- ``heads``: ``layer``, ``head``, ``previous_token``, ``duplicate_token``, ``induction`` (on the
  random repeats, :func:`musinterp.analysis.induction.repeated_induction_scores`), the same three on
  real held-out songs (``*_songs``), ``lookback_3_songs`` and ``lookback_7_songs`` (mean attention
  from i to i − 3, i − 7 on the songs: the positional shortcut for 4- and 8-chord loops),
  ``copying`` (OV copying score Σλ/Σ|λ|);
- ``composition``: ``layer1``, ``head1``, ``layer2``, ``head2``, ``q_comp``, ``k_comp``, ``v_comp``,
  each as a z-score against random matrices of the same shapes (``*_z``), and that baseline's
  mean and sd (``*_random_mean``, ``*_random_sd``);
- ``ablation``: ``condition`` (clean, ablate the previous-token head, ablate a random layer-0 head,
  K-only patch of the previous-token head's output into the induction head's keys), ``layer``,
  ``head`` (the head ablated), ``induction_layer``, ``induction_head``, ``induction`` (of the
  induction head), ``second`` (second-copy loss), ``first``;
- ``dynamics``: ``step`` (training step of the snapshot), ``epoch``, ``induction_max``, ``first``,
  ``second``, ``gap``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .composition import composition_scores, head_scores, head_weights, random_composition_baseline
from .induction import (
    copy_losses,
    diagonal_scores,
    duplicate_token_scores,
    induction_scores,
    per_position_loss,
    previous_token_scores,
    repeated_induction_scores,
    repeated_random_sequences,
)

log = logging.getLogger(__name__)

# A head that attends a fixed distance back continues a loop of period p from i − p + 1 without any
# induction: 3 and 7 for the corpus's 4- and 8-chord loops.
LOOKBACKS = (3, 7)


def chord_ids(vocab) -> list[int]:
    """Ids of the chord tokens (everything but the specials)."""
    return [i for i, tok in enumerate(vocab) if not (tok.startswith("<") and tok.endswith(">"))]


def repeated_sequences(model, vocab, length: int, n: int, seed: int) -> torch.Tensor:
    """``[n, 1 + 2·length]``: ``<s>`` then ``length`` random chords (no chord twice in a copy), twice."""
    ids = chord_ids(vocab)
    length = min(length, len(ids), (model.config.n_ctx - 1) // 2)
    return repeated_random_sequences(ids, n, length, generator=seed, bos=vocab.index("<s>"), replace=False)


def patterns(model, tokens: torch.Tensor) -> torch.Tensor:
    """Attention patterns ``[batch, layer, head, T, T]``."""
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.config.n_layers)]
    _, cache = model.run_with_cache(tokens, names)
    return torch.stack([cache[name] for name in names], dim=1)


def copies_table(model, vocab, lengths, n: int, seed: int) -> tuple[pd.DataFrame, dict]:
    rows, curves = [], {}
    for length in lengths:
        tokens = repeated_sequences(model, vocab, length, n, seed)
        L = (tokens.shape[1] - 1) // 2
        with torch.no_grad():
            loss = per_position_loss(model(tokens), tokens)
        c = copy_losses(loss, L, prefix=1)
        rows.append({"length": L, **c, "gap": c["first"] - c["second"]})
        curves[f"loss_per_position_N{L}"] = loss.mean(0)
    return pd.DataFrame(rows), curves


def heads_table(model, vocab, songs: list[np.ndarray], length: int, n: int, seed: int) -> pd.DataFrame:
    tokens = repeated_sequences(model, vocab, length, n, seed)
    L = (tokens.shape[1] - 1) // 2
    a = patterns(model, tokens)
    table = {"previous_token": previous_token_scores(a), "duplicate_token": duplicate_token_scores(a, tokens),
             "induction": repeated_induction_scores(a, L, prefix=1)}
    # Real progressions: each held-out song on its own (no padding inside the patterns).
    bos = vocab.index("<s>")
    song_scores = {"previous_token_songs": [], "duplicate_token_songs": [], "induction_songs": [],
                   **{f"lookback_{k}_songs": [] for k in LOOKBACKS}}
    for song in songs:
        ids = torch.tensor([[bos, *song[: model.config.n_ctx - 1].tolist()]])
        if ids.shape[1] < 3:
            continue
        p = patterns(model, ids)
        for key, score in (("previous_token_songs", previous_token_scores(p)),
                           ("duplicate_token_songs", duplicate_token_scores(p, ids)),
                           ("induction_songs", induction_scores(p, ids))):
            song_scores[key].append(score)
        for k in LOOKBACKS:
            if ids.shape[1] > k:
                song_scores[f"lookback_{k}_songs"].append(diagonal_scores(p, offset=k))
    for key, values in song_scores.items():
        table[key] = np.nanmean(np.stack(values), axis=0) if values else np.full_like(table["induction"], np.nan)
    copying = head_scores(model).set_index(["layer", "head"])["copying"]
    rows = []
    for layer in range(model.config.n_layers):
        for head in range(model.config.n_heads):
            rows.append({"layer": layer, "head": head, **{k: float(v[layer, head]) for k, v in table.items()},
                         "copying": float(copying.loc[(layer, head)])})
    return pd.DataFrame(rows)


def composition_table(model, n_random: int, seed: int) -> pd.DataFrame:
    w = head_weights(model)
    baseline = random_composition_baseline((model.config.d_model, model.config.d_head), n=n_random, generator=seed)
    scores = composition_scores(w["W_Q"], w["W_K"], w["W_V"], w["W_O"], baseline=baseline)
    for kind in ("q_comp", "k_comp", "v_comp"):
        scores[f"{kind}_random_mean"] = float(baseline.loc[kind, "mean"])
        scores[f"{kind}_random_sd"] = float(baseline.loc[kind, "sd"])
    return scores


def _second_copy(model, tokens, L, induction_layer, induction_head, **forward):
    with torch.no_grad():
        names = [f"blocks.{induction_layer}.attn.hook_pattern"]
        logits, cache = model.run_with_cache(tokens, names, **forward)
    loss = copy_losses(per_position_loss(logits, tokens), L, prefix=1)
    a = cache[names[0]][:, None]  # [batch, 1, head, T, T]
    return float(repeated_induction_scores(a, L, prefix=1)[0, induction_head]), loss


def ablation_table(model, vocab, heads: pd.DataFrame, length: int, n: int, seed: int) -> pd.DataFrame:
    """The previous-token head (highest previous-token score in layer 0) and the induction head
    (highest induction score in a later layer); their effect when the first is zeroed, when a random
    other layer-0 head is zeroed, and when only the induction head's keys see the first zeroed."""
    if model.config.n_layers < 2:
        return pd.DataFrame()
    prev = heads[heads.layer == 0].sort_values("previous_token", ascending=False).iloc[0]
    ind = heads[heads.layer > 0].sort_values("induction", ascending=False).iloc[0]
    pl, ph, il, ih = int(prev["layer"]), int(prev["head"]), int(ind["layer"]), int(ind["head"])
    tokens = repeated_sequences(model, vocab, length, n, seed)
    L = (tokens.shape[1] - 1) // 2
    rng = np.random.default_rng(seed)
    others = [h for h in range(model.config.n_heads) if h != ph]
    rows = []

    def add(condition, layer, head, score, loss):
        rows.append({"condition": condition, "layer": layer, "head": head, "induction_layer": il,
                     "induction_head": ih, "induction": score, **loss})

    add("clean", pl, ph, *_second_copy(model, tokens, L, il, ih))
    with model.ablate_heads(pl, [ph]):
        add("ablate_previous_token_head", pl, ph, *_second_copy(model, tokens, L, il, ih))
    if others:
        rh = int(rng.choice(others))
        with model.ablate_heads(pl, [rh]):
            add("ablate_random_head", pl, rh, *_second_copy(model, tokens, L, il, ih))
    # K-only path patch: the induction layer's keys read the residual stream without the direct
    # contribution of the previous-token head (z_h W_O[h]); queries, values and every other layer
    # see the clean stream.
    resid, z = f"blocks.{il}.hook_resid_pre", f"blocks.{pl}.attn.hook_z"
    _, clean = model.run_with_cache(tokens, [resid, z])
    with torch.no_grad():
        direct = clean[z][:, :, ph] @ model.blocks[pl].attn.W_O[ph]
    patched = clean[resid] - direct
    add("k_only_patch_previous_token_head", pl, ph,
        *_second_copy(model, tokens, L, il, ih, key_input_override={il: patched}))
    return pd.DataFrame(rows)


def dynamics_table(model, vocab, snapshot_dir: Path, length: int, n: int, seed: int) -> pd.DataFrame:
    """Induction score (the best head) and the copy losses at every saved training snapshot."""
    rows = []
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = repeated_sequences(model, vocab, length, n, seed)
    L = (tokens.shape[1] - 1) // 2
    try:
        for path in sorted(Path(snapshot_dir).glob("step_*.pt")):
            snap = torch.load(path, weights_only=True, map_location="cpu")
            model.load_state_dict(snap["state_dict"])
            model.eval()
            with torch.no_grad():
                logits = model(tokens)
            c = copy_losses(per_position_loss(logits, tokens), L, prefix=1)
            score = repeated_induction_scores(patterns(model, tokens), L, prefix=1)
            rows.append({"step": int(snap["step"]), "epoch": int(snap.get("epoch", -1)),
                         "induction_max": float(np.nanmax(score[1:] if len(score) > 1 else score)),
                         **c, "gap": c["first"] - c["second"]})
    finally:
        model.load_state_dict(state)
        model.eval()
    return pd.DataFrame(rows, columns=["step", "epoch", "induction_max", "first", "second", "gap"])
