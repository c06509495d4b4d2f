"""How much of the model's behaviour an SAE keeps: its reconstruction spliced back into the model.

    loss recovered = (L_zero − L_sae) / (L_zero − L_clean)

with the model's own loss (``model.loss``, e.g. next-token cross entropy) on the activation file's
held-out pieces: clean, with the site replaced by the SAE's reconstruction, and with the site
replaced by zeros. 1 means the reconstruction is as good as the real activations, 0 as bad as
deleting them. The pieces are the held-out pieces recorded in the activation file, read from the
corpus and batched by the model itself (``model.make_batch``), so the number refers to exactly the
rows the SAE metrics were measured on, for token and piece sites alike, in any family whose
site is replaceable (see :mod:`musinterp.models.hooks`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from .activations import ActivationFile
from .io import write_json
from .models.hooks import replace_site

log = logging.getLogger(__name__)


def heldout_pieces(acts: ActivationFile, max_pieces: int | None = None) -> np.ndarray:
    """Sorted ids of the held-out pieces (``split == 1``) of an activation file."""
    piece = acts.column("piece")
    split = acts.column("split") if acts.has_column("split") else np.ones_like(piece)
    rows = np.flatnonzero(split == 1)
    if rows.size == 0:
        raise ValueError(f"{acts.path}: no held-out rows (split == 1) to measure loss recovered on")
    return np.unique(piece[rows])[: max_pieces or None]


def piece_tokens(corpus, pieces, vocab) -> list[np.ndarray]:
    """The pieces' tokens re-encoded in the model's vocabulary (which may order tokens differently)."""
    return [vocab.encode(corpus.token_vocab.decode(corpus.tunes[int(p)]), where=f"piece {p}") for p in pieces]


@torch.no_grad()
def mean_loss(model, pieces: list[np.ndarray], vocab, batch_size: int = 32) -> tuple[float, int]:
    """The model's loss per target over all pieces (summed per batch, then divided), and the count."""
    total, count = 0.0, 0
    for start in range(0, len(pieces), batch_size):
        batch = model.make_batch(pieces[start : start + batch_size], vocab)
        total += float(model.loss(batch, reduction="sum"))
        count += batch.n_targets
    return total / max(count, 1), count


def loss_recovered(model, vocab, pieces: list[np.ndarray], sae, site: str) -> dict:
    """Clean, spliced and zero-ablated losses at ``site`` and the share of loss recovered."""
    clean, n_tokens = mean_loss(model, pieces, vocab)
    with replace_site(model, site, lambda a: sae(a).to(a.dtype)):
        spliced, _ = mean_loss(model, pieces, vocab)
    with replace_site(model, site, torch.zeros_like):
        zero, _ = mean_loss(model, pieces, vocab)
    recovered = (zero - spliced) / (zero - clean) if zero != clean else float("nan")
    return {"loss_clean": clean, "loss_sae": spliced, "loss_zero": zero, "loss_recovered": recovered,
            "splice_site": site, "splice_pieces": len(pieces), "splice_tokens": n_tokens}


def add_loss_recovered(sae_dir: str | Path, model_dir: str | Path, acts_path: str | Path, site: str,
                       corpus_dir: str | Path | None = None, max_pieces: int | None = None) -> dict:
    """Measure loss recovered at ``site`` and add it to the SAE's ``metrics.json`` (rewritten
    atomically). ``corpus_dir`` defaults to the one the activation file was recorded from."""
    from .corpus.formats import get_format
    from .corpus.store import load_corpus
    from .models import load
    from .sae.saelens import load_sae

    t0 = time.time()
    metrics_path = Path(sae_dir) / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    model, meta = load(model_dir)
    sites = {s.name: s for s in model.sites()}
    if site not in sites:
        raise ValueError(f"{model_dir}: {model.family} has no site {site!r}; sites: {list(sites)}")
    if not sites[site].replaceable:
        # Recorded, not hidden: a reader of metrics.json sees why there is no number.
        replaceable = [name for name, s in sites.items() if s.replaceable]
        metrics.update({"loss_recovered": None, "splice_site": site,
                        "splice_note": f"{model.family} cannot splice site {site!r}; replaceable sites: {replaceable}"})
        write_json(metrics_path, metrics)
        return metrics
    sae = load_sae(sae_dir)
    with ActivationFile(acts_path) as acts:
        if acts.d != sae.d_in:
            raise ValueError(f"{sae_dir}: SAE d_in={sae.d_in} but {acts_path} has d={acts.d}")
        pieces = heldout_pieces(acts, max_pieces)
        corpus_dir = corpus_dir or acts.attrs.get("corpus_dir")
    if corpus_dir is None:
        raise ValueError(f"{acts_path}: no corpus_dir attribute; pass the corpus the activations were recorded from")
    corpus = load_corpus(corpus_dir)
    vocab = get_format(corpus.format).vocab(meta["vocab"])
    result = loss_recovered(model, vocab, piece_tokens(corpus, pieces, vocab), sae, site)
    log.info("%s at %s: clean %.4f, spliced %.4f, zero %.4f -> loss recovered %.3f (%.1f s)", sae_dir, site,
             result["loss_clean"], result["loss_sae"], result["loss_zero"], result["loss_recovered"], time.time() - t0)
    metrics.update(result)
    write_json(metrics_path, metrics)
    return metrics
