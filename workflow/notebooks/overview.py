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
# # Subject overview: corpus, model, sparse autoencoders, features
#
# This notebook is executed by the workflow (papermill) for one subject: a model plus the
# corpus it reads. Every number below is computed from the workflow's own files, named in the
# parameters cell.

# %% tags=["parameters"]
subject = "folkrnn_small"
manifest = "resources/corpora/embedded_folk/manifest.tsv"
tokens = "resources/corpora/embedded_folk/tokens.h5"
model_meta = "results/models/folkrnn_small/model.json"
samples = "results/models/folkrnn_small/samples.txt"
sae_metrics = []
features = []

# %%
import json
from collections import Counter
from pathlib import Path

import h5py
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

pd.set_option("display.max_colwidth", 120)
plt.rcParams.update({"figure.dpi": 90, "figure.figsize": (8, 3.5)})
display(Markdown(f"**Subject:** `{subject}`"))

# %% [markdown]
# ## Corpus
# Every source item has a manifest row; skipped items carry the reason.

# %%
man = pd.read_csv(manifest, sep="\t", keep_default_na=False)
man["collection"] = man["id"].str.split("/").str[0]
counts = man.pivot_table(index="collection", columns="status", values="id", aggfunc="count", fill_value=0)
counts["total"] = counts.sum(axis=1)
if "ok" in counts:
    counts["ok %"] = (100 * counts["ok"] / counts["total"]).round(1)
display(counts)
reasons = man.loc[man.status == "skipped", "reason"].str.replace(r"\d+", "N", regex=True).value_counts().head(10)
display(reasons.rename("skipped tunes").to_frame())

# %%
with h5py.File(tokens, "r") as f:
    offsets = f["offsets"][:]
    ids = f["tokens"][:]
    split = f["split"][:]
vocab = json.loads(Path(tokens).with_name("vocab.json").read_text())["tokens"]
lengths = np.diff(offsets)
display(Markdown(
    f"{len(lengths):,} tunes ({int((split == 0).sum()):,} train, {int((split == 1).sum()):,} held out), "
    f"{len(ids):,} tokens, vocabulary of {len(vocab)} tokens; median tune length {int(np.median(lengths))} tokens."
))
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
axes[0].hist(lengths, bins=50, color="steelblue")
axes[0].set(title="Tune length", xlabel="tokens", ylabel="tunes")
top = Counter(ids.tolist()).most_common(30)
axes[1].bar([vocab[i] for i, _ in top], [c for _, c in top], color="darkorange")
axes[1].set(title="Most frequent tokens", ylabel="count")
axes[1].tick_params(axis="x", rotation=90)
plt.tight_layout()
plt.show()

heads = Counter()
for start in offsets[:-1]:
    heads[" ".join(vocab[i] for i in ids[start : start + 2])] += 1
display(pd.Series(heads).sort_values(ascending=False).head(12).rename("tunes").to_frame("meter and mode"))

# %% [markdown]
# ## Model training
# Teacher-forced next-token cross entropy per epoch; the held-out curve chooses the weights kept.

# %%
meta = json.loads(Path(model_meta).read_text())
n_parameters = meta.get("n_parameters")
display(Markdown(f"Family `{meta['family']}`, config `{meta['config']}`"
                 + (f", {n_parameters:,} parameters." if n_parameters else ".")))
if "history" in meta:
    hist = pd.DataFrame(meta["history"])
    display(Markdown(
        f"Trained here on {meta['n_train_tokens']:,} tokens in {meta['training_seconds']:.0f} s; best held-out "
        f"loss {meta['best_valid_loss']:.3f} nats/token (perplexity {np.exp(meta['best_valid_loss']):.2f}) "
        f"at epoch {meta['best_epoch']}."
    ))
    ax = hist.plot(x="epoch", y=["train_loss", "valid_loss"], marker="o")
    ax.set(ylabel="nats / token", title="Training curves")
    plt.show()
else:
    # An imported checkpoint: no training happened here; show where it came from.
    display(Markdown("Imported checkpoint; provenance:"))
    display(pd.Series({k: str(v) for k, v in meta.get("provenance", {}).items()}).to_frame("value"))

# %% [markdown]
# ### Tunes sampled from the model

# %%
for i, tune in enumerate(Path(samples).read_text().strip().split("\n\n")[:3]):
    display(Markdown(f"**Sample {i + 1}:** `{tune}`"))

# %% [markdown]
# ## Sparse autoencoders
# Held-out metrics (DESIGN.md): FVU = Σ‖x−x̂‖²/Σ‖x−x̄‖², L0 = mean active latents per token,
# dead = never active on held-out tokens, dense = active on more than 10 % of them.

# %%
rows = []
for path in sae_metrics:
    m = json.loads(Path(path).read_text())
    site, sae = Path(path).parts[-3], Path(path).parts[-2]
    rows.append({"site": site, "sae": sae, **{k: v for k, v in m.items() if not isinstance(v, (dict, list))}})
metrics_table = pd.DataFrame(rows)
display(metrics_table)

# %% [markdown]
# ## Features
# Activation density of SAE latents next to that of the raw neurons of the same site, and the
# contexts that most activate a few latents (the centre token is marked ⟦ ⟧).

# %%
for path in features:
    table = pd.read_parquet(path)
    site, sae = Path(path).parts[-3], Path(path).parts[-2]
    latents = table[table.kind == "latent"]
    neurons = table[table.kind == "neuron"]
    fig, ax = plt.subplots()
    bins = np.logspace(-5, 0, 40)
    ax.hist(latents.density.clip(lower=1e-5), bins=bins, alpha=0.7, label=f"SAE latents ({len(latents)})")
    ax.hist(neurons.density.clip(lower=1e-5), bins=bins, alpha=0.7, label=f"neurons ({len(neurons)})")
    ax.set(xscale="log", xlabel="activation density (dead latents at 1e-5)", ylabel="count",
           title=f"{site} / {sae}: activation density")
    ax.legend()
    plt.show()
    alive = latents[latents.density > 0]
    display(Markdown(f"**{site} / {sae}**: {len(alive)} of {len(latents)} latents fire at least once."))

    def best_type(row):
        types = list(row["top_token_types"])
        return types[0]["token_type"] if types else None

    # A few latents worth reading: the strongest one, then the strongest whose best-associated
    # token type is a bar line, a pitch and a duration (when such latents exist).
    chosen = list(alive.sort_values("max_activation", ascending=False).head(1).index)
    for kind in ("bar", "repeat", "pitch", "duration"):
        of_kind = alive[alive.apply(best_type, axis=1) == kind].sort_values("max_activation", ascending=False)
        chosen += [i for i in of_kind.index[:1] if i not in chosen]
    for _, row in alive.loc[chosen].iterrows():
        tokens_md = ", ".join(f"`{t['token']}` ({t['score']:.2f})" for t in list(row["top_tokens"])[:5])
        display(Markdown(
            f"**Latent {row['index']}** — density {row['density']:.4f}, max {row['max_activation']:.2f}, "
            f"most associated token type: {best_type(row)}; tokens: {tokens_md}"
        ))
        examples = pd.DataFrame(list(row["top_examples"])[:5])
        display(examples[["piece", "position", "activation", "context"]])
