# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # S2: making sense of a folk-rnn model
#
# After Bob Sturm's blog series "making sense of the folk-rnn v2 model". We look inside one
# folk-rnn model (an LSTM that writes tunes one ABC token at a time) while it reads a tune it
# generated itself and the tunes of the subject's `s2:` section (by default Sturm's C-major reel):
# what it expects next at every step, how busy its units are, which units pulse once per bar, what
# happens to the bar lines when those units are silenced, and whether the generated tune copies
# bars from the training tunes. The study itself runs in the workflow rule `s2_folkrnn`
# (`musinterp.analysis.folkrnn_dynamics.run_s2`), which writes the tables (`units.tsv`,
# `interventions.tsv`, `copying.tsv`, `summary.tsv`, `intervention_summary.tsv`, `bars.tsv`) and
# the arrays behind the figures (`arrays.npz`, `s2.json`) to `s2_dir`; this notebook only reads
# those files and plots them, and every number below comes from them.

# %% tags=["parameters"]
subject = "folkrnn_small"
s2_dir = "results/analyses/folkrnn_small/s2"  # the files of rule s2_folkrnn

# %%
import logging

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from musinterp.analysis.folkrnn_outputs import read_s2
from musinterp.analysis.folkrnn_tunes import BAR_TYPES, LOG10_FLOOR
from musinterp.analysis.folkrnn_units import (
    DB_CUT,
    DEAD,
    LARGE,
    SATURATED,
    SMALL,
    activation_distribution,
)
from musinterp.corpus.tokens import token_type

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
pd.set_option("display.max_colwidth", 100)
plt.rcParams.update({"figure.dpi": 90, "figure.figsize": (10, 3.5)})

result = read_s2(s2_dir)
analyses = result.tunes
seconds = result.seconds
params = result.parameters
display(Markdown(
    f"**Subject:** `{subject}`; {len(analyses)} tunes analysed in {seconds.get('total', float('nan')):.0f} s "
    f"(interventions {seconds.get('interventions', float('nan')):.0f} s, "
    f"copying {seconds.get('copying', float('nan')):.0f} s); the tune `{result.generated}` was generated "
    f"with seed {params.get('seed')} at temperature {params.get('temperature')}."
))
for name, a in analyses.items():
    display(Markdown(f"**{name}** ({len(a.tokens) - 2} tokens, bar length {a.bar_length} tokens): "
                     f"`{' '.join(a.tokens[1:-1] if a.tokens[-1] == '</s>' else a.tokens[1:])}`"))


def last_layer(name: str) -> pd.Series:
    """The summary.tsv row of a tune's last layer."""
    rows = result.summary[result.summary.tune == name]
    return rows.loc[rows.layer.idxmax()]


# %% [markdown]
# ## What the model expects at every step
# Each column is one step of the tune; the symbol under it is the one that actually comes next.
# Each row is one token of the model's vocabulary; the colour is log10 of the probability the
# model gave that token at that step (−1 = one chance in ten, values below −10 are shown as −10).
# A confident model shows one bright cell per column; bar lines (`|`) should light up every bar.

# %%
for name, a in analyses.items():
    fig, ax = plt.subplots(figsize=(max(10, 0.09 * len(a.emitted)), 0.09 * len(result.vocab) + 1.5))
    im = ax.imshow(a.log10p.T, aspect="auto", cmap="magma", vmin=LOG10_FLOOR, vmax=0, interpolation="nearest")
    ax.set_yticks(range(len(result.vocab)), result.vocab, fontsize=5)
    ax.set_xticks(range(len(a.emitted)), a.emitted, fontsize=5, rotation=90)
    ax.set(title=f"{name}: log10 P(token) at each step", xlabel="emitted symbol", ylabel="vocabulary")
    fig.colorbar(im, ax=ax, fraction=0.02, label="log10 probability")
    plt.tight_layout()
    plt.show()

# %% [markdown]
# ## How busy the last layer is
# The last LSTM layer feeds the softmax. Its units output values between −1 and 1. Sturm found
# folk-rnn v2's last layer sparse: most values near zero, a few near ±1. Left: all values of all
# units at all steps; right: at each step the units' values sorted from lowest to highest (one
# thin line per step), so a sparse layer shows a long flat stretch around zero.

# %%
display(result.summary[["tune", "layer", "n_steps", "share_small", "share_large", "n_dead", "n_saturated",
                        "n_bar_periodic"]].style.format({"share_small": "{:.1%}", "share_large": "{:.1%}"}))
for name, a in analyses.items():
    acts = a.acts(-1)
    d = activation_distribution(acts)  # the sorted traces; the shares come from summary.tsv
    row = last_layer(name)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    axes[0].hist(acts.ravel(), bins=80, color="steelblue")
    for x in (-SMALL, SMALL, -LARGE, LARGE):
        axes[0].axvline(x, color="grey", lw=0.6, ls="--")
    axes[0].set(title=f"{name}: last layer, |a|<{SMALL}: {row.share_small:.0%}, |a|>{LARGE}: "
                f"{row.share_large:.0%}", xlabel="activation", ylabel="count")
    axes[1].plot(d["sorted"].T, color="black", alpha=0.08, lw=0.7)
    axes[1].set(title="sorted activations, one line per step", xlabel="rank of unit", ylabel="activation")
    plt.tight_layout()
    plt.show()

# %% [markdown]
# ## Dead and saturated units
# For every unit, the largest value it reaches over the whole tune, units sorted by it. A *dead*
# unit never gets beyond 0.07: it says nothing during this tune. A *saturated* unit reaches 0.99
# or sits beyond 0.8 at 95 % of the steps: it is pinned near its limit and carries little change.

# %%
for name, a in analyses.items():
    fig, axes = plt.subplots(1, a.n_layers, figsize=(4 * a.n_layers, 3), sharey=True)
    for layer, ax in zip(range(a.n_layers), np.atleast_1d(axes)):
        t = a.units[a.units.layer == layer].sort_values("max_abs").reset_index(drop=True)
        colors = np.where(t.is_dead, "tab:red", np.where(t.is_saturated, "tab:orange", "tab:blue"))
        ax.bar(range(len(t)), t.max_abs, color=colors, width=1.0)
        ax.axhline(DEAD, color="tab:red", lw=0.7, ls="--")
        ax.axhline(SATURATED, color="tab:orange", lw=0.7, ls="--")
        ax.set(title=f"{name}: layer {layer} ({int(t.is_dead.sum())} dead, {int(t.is_saturated.sum())} saturated)",
               xlabel="units sorted by max |a|", ylabel="max |a|" if layer == 0 else None)
    plt.tight_layout()
    plt.show()
    rows = result.summary[result.summary.tune == name][["layer", "dead_units", "saturated_units"]]
    display(rows.set_index("layer"))

# %% [markdown]
# ## Which units keep time: the spectrum of each unit
# A unit that pulses once per bar repeats every *bar length* tokens (9 for a reel: eight notes and
# the bar line). The discrete Fourier transform of a unit's values from the first note on (mean removed,
# zero-padded to 512) shows how strongly it repeats at each period. Each row is one unit, sorted by
# its strongest period; the colour is the strength in dB relative to that unit's strongest period,
# and only the part within 6 dB of it is shown. The dashed line marks the bar period: a column of
# colour there means many units keep the bar. Pulses once per bar also ring at half and a third of
# the bar (the harmonics).

# %%
for name, a in analyses.items():
    fig, axes = plt.subplots(1, a.n_layers, figsize=(4.5 * a.n_layers, 4), sharey=True)
    for layer, ax in zip(range(a.n_layers), np.atleast_1d(axes)):
        spec = a.spectra[layer]
        order = np.argsort(-np.nan_to_num(spec.dominant_period, nan=0.0))  # long periods (left) on top
        keep = spec.periods <= 64  # periods up to 64 tokens
        im = ax.imshow(spec.cut()[order][:, keep], aspect="auto", cmap="viridis", vmin=DB_CUT, vmax=0,
                       interpolation="nearest", extent=(spec.bins[keep][0] - 0.5, spec.bins[keep][-1] + 0.5,
                                                        len(order), 0))
        ticks = [p for p in (32, 16, 12, 9, 8, 6, 4.5, 4, 3, 2) if spec.periods[keep].min() <= p]
        ax.set_xticks([spec.n_fft / p for p in ticks], [f"{p:g}" for p in ticks], fontsize=7)
        if a.bar_length:
            ax.axvline(spec.n_fft / a.bar_length, color="red", lw=0.8, ls="--")
        n_bar = int(a.units[(a.units.layer == layer)].bar_periodic.sum())
        ax.set(title=f"{name}: layer {layer} ({n_bar} bar-periodic)", xlabel="period (tokens)",
               ylabel="units, by dominant period" if layer == 0 else None)
    fig.colorbar(im, ax=axes, fraction=0.02, label="dB re unit max")
    plt.show()
display(Markdown("Bar-periodic units per tune and layer (dominant period within 0.5 tokens of the bar length):"))
display(result.summary.pivot(index="tune", columns="layer", values="n_bar_periodic"))
fig, ax = plt.subplots(figsize=(8, 3))
for name, a in analyses.items():
    ax.hist(a.units.power_at_bar_period_db.replace(-np.inf, -60).dropna(), bins=40, alpha=0.6, label=name)
ax.set(xlabel="power at the bar period (dB re unit max)", ylabel="units", title="How strongly units keep the bar")
ax.legend()
plt.show()

# %% [markdown]
# ## Traces of single units against the music
# The values of a few units (bar-periodic ones first, else those strongest at the bar period)
# step by step, with the symbol the model emits at each step below. Bar lines are marked by grey
# lines, so a unit that keeps time rises or falls at the same place in every bar.

# %%
for name, a in analyses.items():
    if a.traces.empty:
        continue
    fig, ax = plt.subplots(figsize=(max(10, 0.09 * len(a.emitted)), 3.5))
    for (layer, unit), g in a.traces.groupby(["layer", "unit"], sort=False):
        ax.plot(g.step, g.activation, lw=1, label=f"layer {layer} unit {unit}")
    for step, sym in enumerate(a.emitted):
        if token_type(sym) in BAR_TYPES:
            ax.axvline(step, color="grey", lw=0.5)
    ax.set_xticks(range(len(a.emitted)), a.emitted, fontsize=5, rotation=90)
    ax.set(title=f"{name}: unit traces", ylabel="activation", xlim=(-0.5, len(a.emitted) - 0.5))
    ax.legend(fontsize=7, loc="upper right")
    plt.tight_layout()
    plt.show()

# %% [markdown]
# ## Do the bars add up?
# For each bar of each tune, its length in eighth notes (L) against what the meter asks for.
# Only bars with plain bar lines on both sides are judged: the first bar (maybe a pickup), the
# last, and bars next to repeat or ending marks may legitimately be short.

# %%
for name, a in analyses.items():
    ev = a.bars[a.bars.evaluated]
    display(Markdown(f"**{name}**: {int(ev.correct.sum())} of {len(ev)} judged bars have the right length "
                     f"({len(a.bars)} bars in all)."))
    display(a.bars[["bar", "text", "duration", "expected", "opens_with", "closes_with", "reason", "correct"]])

# %% [markdown]
# ## Silencing the time-keepers
# We clamp the bar-periodic units (set them to zero, or hold them at their average value) and ask
# two things: does the model still expect a bar line where the tune has one (teacher-forced on
# the tune), and do the tunes it now writes still have bars of the right length? To tell whether
# those units matter *as time-keepers* and not just as units, the same number of random units is
# clamped for comparison. Bars show the mean over seeds, error bars one standard deviation.

# %%
summ = result.intervention_summary
if summ.empty:
    display(Markdown("No intervention was run."))
else:
    display(summ[["tune", "condition", "mode", "n_units", "p_bar_line_at_bar_ends_mean", "p_bar_line_at_bar_ends_sd",
                  "p_bar_line_elsewhere_mean", "share_bars_correct_mean", "share_bars_correct_sd", "n_seeds"]])
    for tune_name, g in summ.groupby("tune", sort=False):
        labels = [c if not m else f"{c}\n({m})" for c, m in zip(g.condition, g["mode"])]
        colors = [{"clean": "grey", "bar_periodic": "tab:red", "random": "tab:blue"}[c] for c in g.condition]
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
        for ax, metric, title in ((axes[0], "p_bar_line_at_bar_ends", "P(bar line) where the tune has one"),
                                  (axes[1], "share_bars_correct", "share of generated bars of the right length")):
            ax.bar(labels, g[f"{metric}_mean"], yerr=g[f"{metric}_sd"].fillna(0), color=colors, capsize=4)
            ax.set(title=f"{tune_name}: {title}", ylim=(0, 1))
            ax.tick_params(axis="x", labelsize=8)
        plt.tight_layout()
        plt.show()

# %% [markdown]
# ## Does it copy? Bars and figures found in the training tunes
# For every bar of a tune, and every run of n tokens, how many training tunes contain it
# anywhere, and how many at the same place in a bar (counted in tokens after the bar line).
# Sturm found one figure of a generated tune in 217 of the 23,636 training tunes: common figures
# are the vocabulary of the style, whole bars shared with few tunes point to copying.

# %%
cp = result.copying
for name in analyses:
    t = cp[cp.tune == name]
    bars = t[t.kind == "bar"]
    display(Markdown(f"**{name}**: {int((bars.n_tunes > 0).sum())} of {len(bars)} bars occur in at least one "
                     "training tune."))
    display(bars[["bar", "text", "n_tunes", "n_tunes_same_position", "examples"]].reset_index(drop=True))
    grams = t[t.kind == "ngram"]
    if len(grams):
        share = grams.groupby("n").agg(queries=("text", "size"),
                                       found_anywhere=("n_tunes", lambda s: (s > 0).mean()),
                                       found_same_position=("n_tunes_same_position", lambda s: (s > 0).mean()),
                                       median_tunes=("n_tunes", "median"))
        display(share.style.format({"found_anywhere": "{:.0%}", "found_same_position": "{:.0%}"}))
        top = grams[grams.n == grams.n.max()].sort_values("n_tunes", ascending=False)
        display(top[["n", "text", "n_tunes", "n_tunes_same_position", "examples"]].head(8).reset_index(drop=True))

# %% [markdown]
# ## Findings, beside Sturm's
# The same numbers as above, read from the tables, next to what Sturm reported for folk-rnn v2.

# %%
lines = []
for name in analyses:
    row = last_layer(name)
    lines.append(f"- **{name}**, last layer: {row.share_small:.0%} of the activations have |a| < {SMALL} and "
                 f"{row.share_large:.0%} have |a| > {LARGE}; {int(row.n_dead)} of {int(row.n_units)} units are dead "
                 f"and {int(row.n_saturated)} saturated (Sturm: the last layer of v2 is sparse, most values near "
                 "zero and a few near ±1).")
for name, g in result.summary.groupby("tune", sort=False):
    bar_len = g.bar_length.iloc[0]
    bar_text = "no bar length" if pd.isna(bar_len) else f"bar length {int(bar_len)} tokens"
    lines.append(f"- **{name}** ({bar_text}): {int(g.n_bar_periodic.sum())} of {int(g.n_units.sum())} units "
                 "have their dominant period at the bar (Sturm: units of v2 pulse once per bar, 9 tokens "
                 "in a reel: 8 notes and the bar line).")


def share(x: float) -> str:
    return "n/a (no bar could be judged)" if pd.isna(x) else f"{x:.0%}"


summ = result.intervention_summary
if not summ.empty:
    for (tune_name, cond, mode), r in summ.set_index(["tune", "condition", "mode"]).iterrows():
        label = cond if not mode else f"{cond} ({mode})"
        lines.append(f"- interventions on **{tune_name}**, {label}, {r.n_units:.0f} units: P(bar line) where the "
                     f"tune has one {r.p_bar_line_at_bar_ends_mean:.3f}, elsewhere {r.p_bar_line_elsewhere_mean:.3f}; "
                     f"generated bars of the right length {share(r.share_bars_correct_mean)} "
                     f"(mean over {int(r.n_seeds)} seeds).")
cp_bars = result.copying[result.copying.kind == "bar"]
for name, t in cp_bars.groupby("tune", sort=False):
    grams = result.copying[(result.copying.tune == name) & (result.copying.kind == "ngram")]
    most = (f"; the most common {int(grams.n.max())}-gram is in {int(grams[grams.n == grams.n.max()].n_tunes.max())} "
            "training tunes" if len(grams) else "")
    lines.append(f"- copying, **{name}**: {int((t.n_tunes > 0).sum())} of {len(t)} bars occur in a training tune"
                 f"{most} (Sturm: one figure of a v2 tune in 217 of 23,636 training tunes).")
display(Markdown("\n".join(lines)))
