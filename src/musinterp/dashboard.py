"""The static feature dashboard (``index.html`` + density histogram) of a feature table."""

from __future__ import annotations

import html
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from musinterp import PRODUCER
from musinterp.io import atomic_dir

log = logging.getLogger(__name__)

CENTRE_OPEN, CENTRE_CLOSE = "⟦", "⟧"  # how features.py marks the centre token of a context

_CONTEXT_RE = re.compile(rf"^(.*?){CENTRE_OPEN}(.*?){CENTRE_CLOSE}(.*)$", re.S)

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
.unit { border-top: 1px solid #ddd; padding: 0.6rem 0; }
.unit h3 { margin: 0.2rem 0; font-size: 1.05rem; }
.stats, .assoc { color: #555; font-size: 0.9rem; margin: 0.1rem 0; }
ol.contexts { margin: 0.3rem 0; padding-left: 1.6rem; }
ol.contexts li { font-family: ui-monospace, monospace; font-size: 0.9rem; white-space: pre-wrap; }
mark { background: #ffd54f; font-weight: bold; padding: 0 0.15rem; border-radius: 0.2rem; }
.act { color: #888; font-family: system-ui, sans-serif; font-size: 0.8rem; }
"""


def _context_html(context: str) -> str:
    match = _CONTEXT_RE.match(context)
    if match is None:
        return html.escape(context)
    before, centre, after = (html.escape(part) for part in match.groups())
    return f"{before}<mark>{centre}</mark>{after}"


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.2g} %" if fraction < 0.01 else f"{100 * fraction:.1f} %"


def _unit_html(row, n_contexts: int) -> str:
    def assoc(entries, key):
        return ", ".join(f"{html.escape(str(e[key]))} ({e['score']:.2g})" for e in entries) or "none"

    contexts = "\n".join(
        f'<li>{_context_html(e["context"])} <span class="act">'
        f'{e["activation"]:.3g} · piece {e["piece"]}, position {e["position"]}</span></li>'
        for e in list(row["top_examples"])[:n_contexts]
    )
    return (
        f'<div class="unit"><h3>{row["kind"].capitalize()} {row["index"]}</h3>\n'
        f'<p class="stats">active on {_percent(row["density"])} of tokens · strongest '
        f'{row["max_activation"]:.3g} · mean {row["mean_activation"]:.3g}</p>\n'
        f'<p class="assoc">symbols it responds to most: {assoc(row["top_tokens"], "token")}</p>\n'
        f'<p class="assoc">kinds of symbol: {assoc(row["top_token_types"], "token_type")}</p>\n'
        f'<ol class="contexts">\n{contexts}\n</ol></div>'
    )


def _density_histogram(features: pd.DataFrame, path: Path) -> None:
    # The object-oriented Agg canvas draws without pyplot, so no global backend is changed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    densities = {
        kind: features.loc[features["kind"] == kind, "density"].to_numpy() for kind in ("latent", "neuron")
    }
    positive = np.concatenate([v[v > 0] for v in densities.values()])
    low = np.log10(positive.min()) if len(positive) else -6.0
    bins = np.linspace(min(low, -1.0) - 0.1, 0.0, 40)
    for kind, values in densities.items():
        alive = values[values > 0]
        label = f"{kind}s ({len(values) - len(alive)} never active)"
        ax.hist(np.log10(alive), bins=bins, alpha=0.6, label=label)
    ax.axvline(-1, color="k", linestyle=":", linewidth=1, label="10 % (denser counts as dense)")
    ax.set_xlabel("log10 density (fraction of tokens on which the unit is active)")
    ax.set_ylabel("units")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def write_dashboard(
    features: pd.DataFrame,
    dashboard_dir: str | os.PathLike,
    summary: dict[str, Any] | None = None,
    n_units: int = 50,
    n_contexts: int = 5,
) -> Path:
    """A static page: the strongest live latents with their contexts, plus a density histogram."""
    summary = summary or {}
    dashboard_dir = Path(dashboard_dir)
    latents = features[features["kind"] == "latent"]
    alive = latents[latents["density"] > 0].sort_values("max_activation", ascending=False, kind="stable")
    n_dead = int((latents["density"] == 0).sum())
    n_dense = int((latents["density"] > 0.1).sum())
    title = " / ".join(str(summary[k]) for k in ("subject", "site") if summary.get(k)) or "features"
    cards = "\n".join(_unit_html(row, n_contexts) for _, row in alive.head(n_units).iterrows())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Features: {html.escape(title)}</title>
<style>{_CSS}</style></head><body>
<h1>Features of {html.escape(title)}</h1>
<p>A sparse autoencoder splits the model's internal state at each symbol of a tune into
{len(latents)} <em>latents</em>, each meant to stand for one musical idea. Below are the {min(n_units, len(alive))}
latents with the strongest responses. For each, the lines show the passages where it responds
most strongly; the <mark>highlighted</mark> symbol is the one it responds to, with
{html.escape(str(summary.get("context", "a few")))} symbols of the same tune on either side.
"Active on" says how often it responds at all.</p>
<p class="stats">{summary.get("n_tokens", "?")} tokens · {len(latents)} latents: {len(latents) - n_dead} active,
{n_dead} never active, {n_dense} active on more than 10 % of tokens ·
activations: {html.escape(str(summary.get("acts_path", "")))} · SAE: {html.escape(str(summary.get("sae_dir", "")))}</p>
<h2>How often units are active</h2>
<p><img src="density_histogram.png" alt="histogram of latent and neuron densities" width="700"></p>
<h2>Strongest latents</h2>
{cards}
<p class="stats">{html.escape(PRODUCER)}</p>
</body></html>
"""
    with atomic_dir(dashboard_dir) as tmp:
        (tmp / "index.html").write_text(page, encoding="utf-8")
        _density_histogram(features, tmp / "density_histogram.png")
    log.info("wrote dashboard %s (%d latents shown)", dashboard_dir, min(n_units, len(alive)))
    return dashboard_dir
