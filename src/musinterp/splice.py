"""How much of the model's behaviour an SAE keeps: its reconstruction spliced back into the model.

    loss recovered = (L_zero − L_sae) / (L_zero − L_clean)

with the model's own next-token cross entropy on the activation file's held-out pieces: clean,
with the site replaced by the SAE's reconstruction, and with the site replaced by zeros. 1 means
the reconstruction is as good as the real activations, 0 as bad as deleting them. The sequences
come from the activation file itself (its ``token`` and ``next_token`` columns), so the number
refers to exactly the tokens the SAE metrics were measured on. Works for any family whose model
implements ``site_module`` (see :mod:`musinterp.models.hooks`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .activations import ActivationFile
from .io import write_json
from .models import load
from .models.hooks import replace_site

log = logging.getLogger(__name__)


def heldout_sequences(acts: ActivationFile, max_pieces: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(inputs, targets)`` per held-out piece, in position order, from an activation file."""
    piece, position = acts.column("piece"), acts.column("position")
    token, next_token = acts.column("token"), acts.column("next_token")
    split = acts.column("split") if acts.has_column("split") else np.ones_like(piece)
    rows = np.flatnonzero(split == 1)
    if rows.size == 0:
        raise ValueError(f"{acts.path}: no held-out rows (split == 1) to measure loss recovered on")
    pieces = np.unique(piece[rows])[: max_pieces or None]
    sequences = []
    for p in pieces:
        r = rows[piece[rows] == p]
        r = r[np.argsort(position[r])]
        sequences.append((token[r].astype(np.int64), next_token[r].astype(np.int64)))
    return sequences


@torch.no_grad()
def mean_loss(model, sequences, batch_size: int = 32) -> tuple[float, int]:
    """Mean next-token cross entropy (nats) over all target tokens, and their count."""
    total, count = 0.0, 0
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start : start + batch_size]
        width = max(len(x) for x, _ in batch)
        inputs = torch.zeros(len(batch), width, dtype=torch.long)
        targets = torch.full((len(batch), width), -100, dtype=torch.long)  # -100: ignored padding
        for row, (x, y) in enumerate(batch):
            inputs[row, : len(x)] = torch.from_numpy(x)
            targets[row, : len(y)] = torch.from_numpy(y)
        logits = model(inputs)
        total += float(F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="sum"))
        count += int((targets != -100).sum())
    return total / max(count, 1), count


def loss_recovered(model_dir: str | Path, acts_path: str | Path, sae_dir: str | Path,
                   max_pieces: int | None = None, model=None) -> dict:
    """Clean, spliced and zero-ablated losses and the share of loss recovered (see module doc).

    ``model`` may be passed when the caller has already loaded ``model_dir``.
    """
    from .sae.saelens import load_sae

    t0 = time.time()
    if model is None:
        model, _ = load(model_dir)
    sae = load_sae(sae_dir)
    with ActivationFile(acts_path) as acts:
        site = acts.attrs.get("site")
        if acts.d != sae.d_in:
            raise ValueError(f"{sae_dir}: SAE d_in={sae.d_in} but {acts_path} has d={acts.d}")
        sequences = heldout_sequences(acts, max_pieces)
    if site is None:
        raise ValueError(f"{acts_path}: attribute 'site' missing; cannot tell where to splice")

    clean, n_tokens = mean_loss(model, sequences)
    with replace_site(model, site, lambda a: sae(a).to(a.dtype)):
        spliced, _ = mean_loss(model, sequences)
    with replace_site(model, site, torch.zeros_like):
        zero, _ = mean_loss(model, sequences)
    recovered = (zero - spliced) / (zero - clean) if zero != clean else float("nan")
    result = {"loss_clean": clean, "loss_sae": spliced, "loss_zero": zero, "loss_recovered": recovered,
              "splice_site": site, "splice_pieces": len(sequences), "splice_tokens": n_tokens}
    log.info("%s at %s: clean %.4f, spliced %.4f, zero %.4f nats/token -> loss recovered %.3f (%.1f s)",
             sae_dir, site, clean, spliced, zero, recovered, time.time() - t0)
    return result


def add_loss_recovered(sae_dir: str | Path, model_dir: str | Path, acts_path: str | Path,
                       max_pieces: int | None = None) -> dict:
    """Measure loss recovered and add it to the SAE's ``metrics.json`` (rewritten atomically)."""
    metrics_path = Path(sae_dir) / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    model, _ = load(model_dir)
    site = metrics.get("site")  # the trainer copies the activation file's site attribute
    if site is None:
        with ActivationFile(acts_path) as acts:
            site = acts.attrs.get("site")
    if site in model.replaceable_sites():
        metrics.update(loss_recovered(model_dir, acts_path, sae_dir, max_pieces, model=model))
    else:
        # Recorded, not hidden: a reader of metrics.json sees why there is no number.
        metrics.update({"loss_recovered": None, "splice_site": site,
                        "splice_note": f"{model.family} cannot splice site {site!r}; "
                                       f"replaceable sites: {model.replaceable_sites()}"})
    write_json(metrics_path, metrics)
    return metrics
