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
# # S4: induction heads in transformers trained on chord progressions
#
# The study asks how many attention layers a transformer needs to continue a repeated chord
# progression, `[A][B][C][D] … [A][B][C] → [D]`; whether period 8 needs more than period 4; and
# whether models trained on music show the circuit known from language models (Olsson et al.,
# "In-context learning and induction heads", 2022): a previous-token head in one layer whose output
# the keys of an induction head in a later layer read (K-composition). Every number here comes from
# the tables of rule `s4_chordlm`, one directory per model; this notebook loads no model.

# %% tags=["parameters"]
s4_dirs = []
units = []  # polysemanticity summaries of rule s4_units (neurons vs SAE latents)
universality = []  # seed-pair summaries of rule s4_universality

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

pd.set_option("display.precision", 3)
plt.rcParams.update({"figure.dpi": 90, "figure.figsize": (9, 3.5)})
TABLES = ["copies", "heads", "composition", "ablation", "dynamics", "loops", "sections", "transposition"]


def model_label(meta):
    c = meta["config"]
    return f"{c['n_layers']}L {'attn-only' if meta['attn_only'] else 'MLP'} s{meta['seed']}"


models, tables = [], {name: [] for name in TABLES}
for d in map(Path, s4_dirs):
    meta = json.loads((d / "model.json").read_text())
    info = {"model": model_label(meta), "n_layers": meta["config"]["n_layers"], "attn_only": meta["attn_only"],
            "seed": meta["seed"], "held_out_loss": meta["best_valid_loss"], "songs": meta["n_songs"]}
    models.append(info)
    for name in TABLES:
        path = d / f"{name}.tsv"
        df = pd.read_csv(path, sep="\t") if path.stat().st_size > 1 else pd.DataFrame()
        if len(df):
            tables[name].append(df.assign(**info))
models = pd.DataFrame(models).sort_values(["attn_only", "n_layers", "seed"], ascending=[False, True, True])
T = {name: (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()) for name, frames in tables.items()}
display(models.set_index("model"))

# %% [markdown]
# ## 1. Repeated random chords: loss on the first and the second copy
# `<s>` then N random chords, then the same N again. A model that looks up what followed the
# current chord last time predicts the second copy; without in-context copying both copies are
# unpredictable (loss ≈ log of the number of chords).

# %%
cp = T["copies"]
display(cp.pivot_table(index="model", columns="length", values=["first", "second", "gap"]).round(3))
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
for ax, attn_only in zip(axes, (True, False)):
    for d in map(Path, s4_dirs):
        meta = json.loads((d / "model.json").read_text())
        if meta["attn_only"] != attn_only:
            continue
        curves = np.load(d / "curves.npz")
        key = sorted(curves.files)[0]
        ax.plot(curves[key], label=model_label(meta))
    ax.set(title=("attention-only" if attn_only else "with MLPs") + f" ({key.split('_')[-1]})",
           xlabel="position", ylabel="loss (nats)")
    ax.legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Heads: previous-token, duplicate-token and induction scores
# Attention-pattern scores as TransformerLens's head detector defines them (the share of a head's
# attention on the detection pattern), on the random repeats and on held-out songs, and each
# head's OV copying score Σλ/Σ|λ| of W_E W_V W_O W_U.

# %%
hd = T["heads"]
best = hd.sort_values("induction", ascending=False).groupby("model").head(1)
display(best[["model", "layer", "head", "induction", "induction_songs", "previous_token", "copying"]]
        .set_index("model"))
lookback = hd.sort_values("lookback_7_songs", ascending=False).groupby("model").head(1)
display(Markdown("Heads that look a fixed distance back on the songs (3 and 7: the positional shortcut "
                 "for 4- and 8-chord loops, which needs no induction):"))
display(lookback[["model", "layer", "head", "lookback_3_songs", "lookback_7_songs", "induction"]].set_index("model"))
prev_best = hd.sort_values("previous_token", ascending=False).groupby("model").head(1)
display(prev_best[["model", "layer", "head", "previous_token", "previous_token_songs"]].set_index("model"))
fig, ax = plt.subplots(figsize=(10, 3.5))
for label, df in hd.groupby("model"):
    ax.scatter(df["previous_token"], df["induction"], label=label, s=18)
ax.set(xlabel="previous-token score", ylabel="induction score (random repeats)")
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# ## 3. Composition: does a later head read an earlier head's output?
# Q-, K- and V-composition scores between every pair of heads in different layers, as z-scores
# against random matrices of the same shapes.

# %%
co = T["composition"]
if len(co):
    pair = co.merge(prev_best[["model", "layer", "head"]].rename(columns={"layer": "layer1", "head": "head1"}))
    pair = pair.merge(best[["model", "layer", "head"]].rename(columns={"layer": "layer2", "head": "head2"}))
    display(pair[["model", "layer1", "head1", "layer2", "head2", "k_comp", "k_comp_z", "q_comp_z", "v_comp_z"]]
            .set_index("model"))
    strongest = co.sort_values("k_comp_z", ascending=False).groupby("model").head(1)
    display(strongest[["model", "layer1", "head1", "layer2", "head2", "k_comp", "k_comp_z"]].set_index("model"))
else:
    pair = strongest = pd.DataFrame()
    display(Markdown("No model with two or more layers: no composition."))

# %% [markdown]
# ## 4. Next-chord accuracy inside repeated loops: layers × period
# Accuracy on the loop's second and later passes (`loop_repeat ≥ 1`), where the previous pass
# tells the next chord; loops start at a random offset and sections repeat a random number of
# times, so position in the song does not. Loops whose chords repeat inside the loop (one chord of
# context is ambiguous there) are scored separately.

# %%
lp = T["loops"]
if len(lp):
    rep = lp[lp["loop_repeat"] >= 1]
    agg = rep.groupby(["model", "n_layers", "attn_only", "period", "ambiguous"])[["n", "n_correct"]].sum()
    agg["accuracy"] = agg["n_correct"] / agg["n"]
    acc = agg.reset_index().pivot_table(index=["attn_only", "n_layers"], columns=["period", "ambiguous"],
                                        values="accuracy", aggfunc="mean")
    display(acc.round(3))
    fig, ax = plt.subplots(figsize=(9, 3.5))
    by_model = agg.reset_index().groupby(["model", "period"])[["n", "n_correct"]].sum()
    (by_model["n_correct"] / by_model["n"]).unstack().plot.bar(ax=ax)
    ax.set(ylabel="accuracy on repeated loop passes", ylim=(0, 1), xlabel="")
    plt.tight_layout()
    plt.show()
    first = lp[lp["loop_repeat"] == 0].groupby(["model", "period"])[["n", "n_correct"]].sum()
    display((first["n_correct"] / first["n"]).rename("accuracy on the first pass").unstack().round(3))

# %% [markdown]
# ## 5. Song structure: a returning section's first chords
# The first pass of a section's loop can only be predicted from an earlier occurrence of that
# section (the chorus after a verse): accuracy by occurrence. For a corpus with sections but no loops
# (RS200, real songs) every chord of a named section is scored instead: in-context learning on real
# music, a section's later occurrences against its first.

# %%
sc = T["sections"]
if len(sc):
    returns = sc.pivot_table(index="model", columns="section_occurrence", values="accuracy")
    display(returns.round(3))
    ax = returns.plot.bar(figsize=(9, 3.5), ylim=(0, 1), ylabel="accuracy", xlabel="")
    ax.legend(title="section occurrence", fontsize=7)
    plt.tight_layout()
    plt.show()

# %% [markdown]
# ## 6. Transposition invariance
# The same held-out songs with every chord root moved (songs with a chord the vocabulary lacks are
# skipped and counted).

# %%
tr = T["transposition"]
if len(tr):
    display(tr.pivot_table(index="model", columns="shift", values=["accuracy_repeats", "skipped"]).round(3))

# %% [markdown]
# ## 7. Causal test: ablate the previous-token head
# Zeroing the previous-token head's output, or only its path into the induction head's keys, against
# zeroing a random other head of the same layer.

# %%
ab = T["ablation"]
if len(ab):
    ab = ab.assign(loss_change=ab["second"] - ab.groupby("model")["second"].transform(
        lambda s: s[ab.loc[s.index, "condition"] == "clean"].iloc[0]))
    display(ab.pivot_table(index="model", columns="condition", values=["induction", "second"]).round(3))
    spread = ab.groupby(["n_layers", "attn_only", "condition"])["loss_change"].agg(["mean", "std", "count"])
    display(spread.round(3))

# %% [markdown]
# ## 8. Training dynamics
# Induction score of the best head and the copy-loss gap at each saved training snapshot.

# %%
dy = T["dynamics"]
if len(dy):
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    for label, df in dy.groupby("model"):
        axes[0].plot(df["step"], df["induction_max"], marker=".", label=label)
        axes[1].plot(df["step"], df["gap"], marker=".", label=label)
    axes[0].set(xlabel="training step", ylabel="best induction score")
    axes[1].set(xlabel="training step", ylabel="loss gap first − second copy")
    axes[0].legend(fontsize=7)
    plt.tight_layout()
    plt.show()

# %% [markdown]
# ## 10. Neurons against SAE latents: which chord attribute does a unit stand for?
# For each unit and each attribute (the chord itself, root, quality, scale degree, position in the loop,
# section), the
# best value v of the rule "active ⇒ attribute = v" on held-out tokens, with its F1. A unit is
# labelled when its best F1 exceeds 0.5 and the rule's precision is at least twice the value's base rate (fixed
# conventions, not tuned: a unit active on most tokens would otherwise "predict" the commonest value);
# concepts per unit counts
# the attributes above it (attributes overlap: in C, degree equals root).

# %%
poly = pd.concat([pd.read_csv(p, sep="\t") for p in units], ignore_index=True) if units else pd.DataFrame()
if len(poly):
    display(poly.set_index(["subject", "site", "sae", "kind"]).round(3))

# %% [markdown]
# ## 11. Universality across seeds
# The same circuit in every seed (best previous-token and induction heads per seed, above), and SAE
# latents of two seeds matched by activation correlation over the same held-out tokens: the share of
# live latents whose best match has r > 0.7, against the same for the raw neurons.

# %%
uni = pd.DataFrame([json.loads(Path(p).read_text()) for p in universality])
if len(uni):
    display(uni[["a", "b", "site", "sae", "share_latents_matched", "share_neurons_matched", "mean_best_r_latents",
                 "n_live_latents_a", "n_live_latents_b", "n_rows"]].set_index(["a", "b"]).round(3))
seed_heads = best.merge(prev_best[["model", "previous_token"]].rename(columns={"previous_token": "prev_best"}))
display(seed_heads[["model", "seed", "layer", "head", "induction", "prev_best"]].set_index("model"))

# %% [markdown]
# ## Findings
# The numbers of the tables above, beside the expectations the study starts from (Olsson et al.
# 2022: induction heads need two layers — a one-layer attention-only model cannot form them — and
# appear in a sudden phase change during training).

# %%
lines = []
for _, row in lookback.iterrows():
    lines.append(f"- {row['model']}: the head most attending 7 chords back on the songs is {int(row['layer'])}."
                 f"{int(row['head'])} (mean attention {row['lookback_7_songs']:.2f} to i − 7; induction score on "
                 f"random repeats {row['induction']:.2f}).")
L = (cp[cp["length"] == cp["length"].min()].groupby(["n_layers", "attn_only"])[["first", "second", "gap"]].mean())
for (n_layers, attn_only), row in L.iterrows():
    lines.append(f"- {n_layers} layer(s), {'attention-only' if attn_only else 'with MLPs'}: loss on the first copy "
                 f"{row['first']:.2f}, second copy {row['second']:.2f} nats (gap {row['gap']:.2f}).")
if len(lp):
    for (attn_only, n_layers), row in acc.iterrows():
        cells = ", ".join(f"period {p}{' ambiguous' if a else ''}: {v:.2f}" for (p, a), v in row.items()
                          if not np.isnan(v))
        lines.append(f"- next-chord accuracy on repeated loop passes, {n_layers} layer(s) "
                     f"{'attention-only' if attn_only else 'with MLPs'}: {cells}.")
if len(pair):
    top = pair.sort_values("k_comp_z", ascending=False).iloc[0]
    lines.append(f"- strongest previous-token → induction K-composition: {top['model']}, head "
                 f"{int(top['layer1'])}.{int(top['head1'])} → {int(top['layer2'])}.{int(top['head2'])}, "
                 f"score {top['k_comp']:.3f} ({top['k_comp_z']:.1f} sd above random matrices).")
if len(ab):
    for cond in ("ablate_previous_token_head", "k_only_patch_previous_token_head", "ablate_random_head"):
        s = spread.xs(cond, level="condition") if cond in spread.index.get_level_values("condition") else None
        if s is not None:
            for (n_layers, attn_only), row in s.iterrows():
                lines.append(f"- {cond.replace('_', ' ')} ({n_layers}L {'attn-only' if attn_only else 'MLP'}): "
                             f"second-copy loss {row['mean']:+.2f} ± {0 if np.isnan(row['std']) else row['std']:.2f} "
                             f"nats over {int(row['count'])} model(s).")
if len(sc):
    for label, row in sc.pivot_table(index="model", columns="section_occurrence", values="accuracy").iterrows():
        lines.append(f"- {label}: accuracy on a section's first pass (every chord where the corpus has no loops), "
                     f"first occurrence {row.get(0, np.nan):.2f}, first return {row.get(1, np.nan):.2f}.")
for _, row in poly.iterrows():
    lines.append(f"- {row['subject']} {row['site']}: {row['labelled']:.0%} of {int(row['units'])} {row['kind']}s are "
                 f"labelled (best F1 > {row['threshold']}), {row['concepts_per_unit']:.2f} concepts per unit.")
for _, row in uni.iterrows():
    lines.append(f"- {row['a']} vs {row['b']} ({row['sae']}): {row['share_latents_matched']:.0%} of SAE latents and "
                 f"{row['share_neurons_matched']:.0%} of neurons have a partner with r > {row['threshold']}.")
display(Markdown("\n".join(lines)))
