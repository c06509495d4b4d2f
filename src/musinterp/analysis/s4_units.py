"""Study S4, units (items 10 and 11): which chord attribute a neuron or SAE latent stands for, how
polysemantic units are, and whether SAE latents recur across training seeds.

Rows and activity
-----------------
All functions read an activation file of a chordlm model (:class:`musinterp.activations.ActivationFile`).
Rows: the held-out rows (``split == 1``, :data:`musinterp.activations.SPLITS`) when the file has a
``split`` column (an error when it has none of them), else every row; then the first ``max_rows``
of those in file order (whole pieces but the last; pieces are in corpus order, which is random for
generated songs). A unit is *active* on a token when

- SAE latent: ``z > 0``;
- neuron (a raw dimension of ``/acts``): ``|a| > NEURON_ACTIVE_FRACTION_OF_MAX · max|a|`` with the
  max over the analysed rows (the rule of :mod:`musinterp.features`, whose max is over the whole file).

``unit_attribute_table`` (item 10), one row per (kind, index, attribute)
------------------------------------------------------------------------
For attribute ``x`` only the rows with ``x >= 0`` count (−1 marks framing tokens: ``<s>``, specials).
Over those rows, for every value ``v`` of ``x`` the rule "active ⇒ x == v" has precision
``P(x = v | active)``, recall ``P(active | x = v)`` and ``F1 = 2PR / (P + R) = 2·n(active, v) /
(n(active) + n(v))``; the row reports the ``v`` of highest F1 (ties: the lowest code; a unit never
active on those rows gets the lowest code with precision = recall = F1 = 0). Columns:

- ``kind``: ``"neuron"`` or ``"latent"``; ``index``: the dimension or latent index;
- ``attribute``; ``value``: the code ``v``; ``value_label``: its category name where the column has
  categories (e.g. ``quality``), else the code as text;
- ``precision``, ``recall``, ``f1``; ``base_rate``: ``P(x = v)`` over the rows with ``x >= 0`` (the
  precision of a unit active everywhere, the baseline the precision must beat);
- ``density``: share of all analysed rows (framing tokens included) where the unit is active, the
  same for every attribute of a unit; ``n_active``: active rows among those with ``x >= 0``;
  ``n_rows``: rows with ``x >= 0``.

Counts come from one matmul per batch: the active matrix ``[rows, units]`` (0/1) times the one-hot
of every attribute's values (plus one "valid" column per attribute), accumulated exactly.

``polysemanticity_summary`` (item 10), one row per kind
-------------------------------------------------------
``units``; ``labelled``: share of units whose best F1 over the attributes exceeds ``threshold``;
``concepts_per_unit``: mean number of attributes with F1 > threshold; ``mean_best_f1``.
The threshold, 0.5 (:data:`F1_THRESHOLD`), is fixed in advance and not tuned on these results: an
F1 above 0.5 means the unit's activity and the value's tokens overlap by more than they differ (a
unit firing on exactly the value's tokens and on as many others again has F1 = 2/3; one firing on
a third of them and nothing else has F1 = 1/2). It is a convention, so the notebook should also
show the F1 distributions. "Concepts" are attributes, not values: a unit can only have one best
value per attribute, and attributes overlap by construction (``degree`` is ``root`` relative to
the key; in C-major songs they coincide), so a count of 2 may be one concept seen twice.

``match_latents`` (item 11): universality across seeds
------------------------------------------------------
Two activation files of the same site of two models on the same tokens (``piece`` and
``position`` columns identical), each with its SAE. Over the shared rows, the Pearson correlation
of every latent of A with every latent of B, from standardized latents and a float64 matmul
(two passes over batches: means and standard deviations, then ``Za^T Zb / n``). Latents that never
fire on these rows (zero variance there: for a ReLU-type latent, never active) are excluded and
counted. Each live A latent gets its best match
in B (highest ``r``, signed: latents are non-negative, so a negative ``r`` is no match). The raw
dimensions of the two files' ``/acts`` are matched the same way (constant ones excluded) as the
baseline: a residual stream has no privileged basis, so its neurons should match far less than
the latents if the SAE finds shared features.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..activations import SPLITS, ActivationFile
from ..features import NEURON_ACTIVE_FRACTION_OF_MAX
from ..sae.saelens import load_sae

# "token" is the chord itself (root and quality together): an SAE latent often stands for one chord
ATTRIBUTES = ("token", "root", "quality", "degree", "loop_position", "section_label")
F1_THRESHOLD = 0.5
MATCH_THRESHOLD = 0.7
HELDOUT = SPLITS.index("heldout")
BATCH = 8192
TABLE_COLUMNS = ["kind", "index", "attribute", "value", "value_label", "precision", "recall", "f1",
                 "base_rate", "density", "n_active", "n_rows"]
MATCH_COLUMNS = ["latent_a", "latent_b", "r", "mutual"]


def analysed_rows(f: ActivationFile, max_rows: int) -> np.ndarray:
    """Row indices (increasing) the analyses use: held-out rows if there is a split column, else
    all; the first ``max_rows`` of them."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    if f.has_column("split"):
        rows = np.flatnonzero(f.column("split") == HELDOUT)
        if rows.size == 0:
            raise ValueError(f"{f.path}: has a split column but no held-out rows (split == {HELDOUT})")
    else:
        rows = np.arange(f.n_rows)
    return rows[:max_rows]


def _row_batches(f: ActivationFile, rows: np.ndarray, batch: int | None = None):
    """Yield ``(positions into rows, acts float32 [b, d])``, reading the file in contiguous blocks
    that hold selected rows (memory bounded by ``batch · d``)."""
    ds, batch = f.acts, batch or BATCH
    start = 0
    while start < rows.size:
        lo = int(rows[start])
        stop = int(np.searchsorted(rows, lo + batch, side="left"))
        block = ds[lo : int(rows[stop - 1]) + 1]
        yield np.arange(start, stop), np.asarray(block[rows[start:stop] - lo], dtype=np.float32)
        start = stop


def _neuron_thresholds(f: ActivationFile, rows: np.ndarray) -> np.ndarray:
    max_abs = np.zeros(f.d, dtype=np.float32)
    for _, x in _row_batches(f, rows):
        if not np.isfinite(x).all():
            raise ValueError(f"{f.path}: /acts has non-finite values")
        np.maximum(max_abs, np.abs(x).max(axis=0), out=max_abs)
    return NEURON_ACTIVE_FRACTION_OF_MAX * max_abs


def _load_sae_for(f: ActivationFile, sae_dir):
    sae = load_sae(sae_dir)
    if sae.d_in != f.d:
        raise ValueError(f"{sae_dir}: SAE reads d_in={sae.d_in}, but {f.path} has d={f.d}")
    return sae


def _encode(sae, x: np.ndarray) -> np.ndarray:
    return sae.encode(torch.from_numpy(x)).numpy()


def unit_attribute_table(acts_path, sae_dir=None, attributes: Sequence[str] = ATTRIBUTES,
                         max_rows: int = 200_000) -> pd.DataFrame:
    """One row per (kind, unit, attribute): the best value of "active ⇒ attribute == value" (module doc)."""
    acts_path = Path(acts_path)
    with ActivationFile(acts_path) as f:
        missing = [a for a in attributes if not f.has_column(a)]
        if missing:
            raise ValueError(f"{acts_path}: no column(s) {missing}; has {f.columns()}")
        rows = analysed_rows(f, max_rows)
        sae = None if sae_dir is None else _load_sae_for(f, sae_dir)
        # The one-hot layout: per attribute its sorted non-negative values, then a "valid" column.
        codes, offsets, values, labels, width = {}, {}, {}, {}, 0
        for a in attributes:
            col = f.column(a)[rows].astype(np.int64)
            vals = np.unique(col[col >= 0])
            cats = f.categories(a)
            codes[a] = np.where(col >= 0, np.searchsorted(vals, np.maximum(col, 0)), -1)
            values[a] = vals
            labels[a] = [cats[v] if cats is not None and 0 <= v < len(cats) else str(v) for v in vals]
            offsets[a] = width
            width += vals.size + 1
        thresholds = _neuron_thresholds(f, rows)
        kinds = {"neuron": f.d} if sae is None else {"neuron": f.d, "latent": sae.d_sae}
        co = {k: np.zeros((n, width), dtype=np.float64) for k, n in kinds.items()}
        active_all = {k: np.zeros(n, dtype=np.float64) for k, n in kinds.items()}
        value_counts = np.zeros(width, dtype=np.float64)
        for pos, x in _row_batches(f, rows):
            onehot = np.zeros((pos.size, width), dtype=np.float32)
            for a in attributes:
                c = codes[a][pos]
                ok = np.flatnonzero(c >= 0)
                onehot[ok, offsets[a] + c[ok]] = 1.0
                onehot[ok, offsets[a] + values[a].size] = 1.0
            value_counts += onehot.sum(axis=0)
            active = {"neuron": (np.abs(x) > thresholds).astype(np.float32)}
            if sae is not None:
                active["latent"] = (_encode(sae, x) > 0).astype(np.float32)
            for k, act in active.items():
                co[k] += act.T @ onehot  # exact: counts <= BATCH < 2**24 per batch
                active_all[k] += act.sum(axis=0)
    frames = []
    for k, n_units in kinds.items():
        density = active_all[k] / rows.size
        for a in attributes:
            lo, nv = offsets[a], values[a].size
            n_valid = value_counts[lo + nv]
            n_active = co[k][:, lo + nv]
            both, n_value = co[k][:, lo : lo + nv], value_counts[lo : lo + nv]
            if nv == 0:  # attribute is -1 on every analysed row
                best = np.zeros(n_units, dtype=np.int64)
                prec = rec = f1 = base = np.full(n_units, np.nan)
                value, label = np.full(n_units, -1), ["" for _ in range(n_units)]
            else:
                with np.errstate(divide="ignore", invalid="ignore"):
                    f1_all = np.nan_to_num(2 * both / (n_active[:, None] + n_value[None, :]))
                best = f1_all.argmax(axis=1)
                hit = both[np.arange(n_units), best]
                with np.errstate(divide="ignore", invalid="ignore"):
                    prec = np.where(n_active > 0, hit / np.maximum(n_active, 1), 0.0)
                rec = hit / n_value[best]
                f1 = f1_all[np.arange(n_units), best]
                base = n_value[best] / n_valid
                value, label = values[a][best], [labels[a][b] for b in best]
            frames.append(pd.DataFrame({
                "kind": k, "index": np.arange(n_units), "attribute": a, "value": value,
                "value_label": label, "precision": prec, "recall": rec, "f1": f1, "base_rate": base,
                "density": density, "n_active": n_active.astype(np.int64), "n_rows": int(n_valid)}))
    if not frames:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    return pd.concat(frames, ignore_index=True)[TABLE_COLUMNS]


MIN_LIFT = 2.0


def polysemanticity_summary(table: pd.DataFrame, threshold: float = F1_THRESHOLD,
                            min_lift: float = MIN_LIFT) -> pd.DataFrame:
    """Per kind: ``units``, ``labelled`` (share of units with a concept), ``concepts_per_unit``
    (mean number of attributes that are concepts of the unit), ``mean_best_f1``, ``threshold``,
    ``min_lift``. An attribute is a concept of a unit when the rule's F1 > ``threshold`` *and* its
    precision is at least ``min_lift`` times the value's base rate: a unit active on nearly every
    token has precision ≈ base rate, and its F1 2p/(1+p) passes 0.5 for any value with p > 1/3, so
    F1 alone would label every dense unit with the commonest value."""
    out = []
    for kind, g in table.groupby("kind", sort=True):
        lift = g["precision"] / g["base_rate"].where(g["base_rate"] > 0)
        per_unit = g.assign(above=(g["f1"] > threshold) & (lift >= min_lift)).groupby("index").agg(
            best=("f1", "max"), concepts=("above", "sum"))
        out.append({"kind": kind, "units": len(per_unit),
                    "labelled": float((per_unit["concepts"] > 0).mean()),
                    "concepts_per_unit": float(per_unit["concepts"].mean()),
                    "mean_best_f1": float(per_unit["best"].mean()), "threshold": threshold, "min_lift": min_lift})
    return pd.DataFrame(out, columns=["kind", "units", "labelled", "concepts_per_unit", "mean_best_f1",
                                      "threshold", "min_lift"])


def _check_same_tokens(fa: ActivationFile, fb: ActivationFile) -> None:
    for name in ("piece", "position", "split"):
        has_a, has_b = fa.has_column(name), fb.has_column(name)
        if name == "split" and not (has_a or has_b):
            continue
        if has_a != has_b or not np.array_equal(fa.column(name), fb.column(name)):
            raise ValueError(f"{fa.path} and {fb.path} do not hold the same tokens: their {name} "
                             f"columns differ; record both models on the same pieces")


def _best_matches(fa, fb, rows, encode_a, encode_b):
    """Pearson r between every live unit of A and of B: (r [live_a, live_b], live_a, live_b)."""
    n = rows.size
    count, means, m2 = 0, [0.0, 0.0], [0.0, 0.0]
    batches = lambda: zip(_row_batches(fa, rows), _row_batches(fb, rows))  # noqa: E731
    for (_, xa), (_, xb) in batches():  # pass 1: means and sums of squares (Chan et al.'s merge)
        m = xa.shape[0]
        for i, z in enumerate((encode_a(xa), encode_b(xb))):
            z = z.astype(np.float64)
            mean_b = z.mean(axis=0)
            delta = mean_b - means[i]
            m2[i] = m2[i] + ((z - mean_b) ** 2).sum(axis=0) + delta**2 * count * m / (count + m)
            means[i] = means[i] + delta * m / (count + m)
        count += m
    stds = [np.sqrt(s / n) for s in m2]
    live = [np.flatnonzero(s > 0) for s in stds]
    cross = np.zeros((live[0].size, live[1].size), dtype=np.float64)
    for (_, xa), (_, xb) in batches():
        za = (encode_a(xa)[:, live[0]].astype(np.float64) - means[0][live[0]]) / stds[0][live[0]]
        zb = (encode_b(xb)[:, live[1]].astype(np.float64) - means[1][live[1]]) / stds[1][live[1]]
        cross += za.T @ zb
    return np.clip(cross / n, -1.0, 1.0), live[0], live[1]


def _match(r: np.ndarray, live_a: np.ndarray, live_b: np.ndarray) -> pd.DataFrame:
    if live_a.size == 0 or live_b.size == 0:
        return pd.DataFrame({"latent_a": live_a, "latent_b": np.full(live_a.size, -1),
                             "r": np.full(live_a.size, np.nan), "mutual": False})[MATCH_COLUMNS]
    best_b = r.argmax(axis=1)
    best_a_of_b = r.argmax(axis=0)
    return pd.DataFrame({"latent_a": live_a, "latent_b": live_b[best_b],
                         "r": r[np.arange(live_a.size), best_b],
                         "mutual": best_a_of_b[best_b] == np.arange(live_a.size)})[MATCH_COLUMNS]


def match_latents(acts_a, sae_a, acts_b, sae_b, max_rows: int = 100_000,
                  threshold: float = MATCH_THRESHOLD) -> tuple[pd.DataFrame, dict]:
    """Best match in B of every live latent of A (columns ``latent_a, latent_b, r, mutual``) and a
    summary: ``share_latents_matched`` / ``share_neurons_matched`` (share of A's live units whose
    best r > threshold), ``mean_best_r_latents`` / ``_neurons``, ``n_live_latents_a/_b``,
    ``n_dead_latents_a/_b``, ``n_live_neurons_a/_b``, ``n_rows``, ``threshold``."""
    with ActivationFile(acts_a) as fa, ActivationFile(acts_b) as fb:
        _check_same_tokens(fa, fb)
        rows = analysed_rows(fa, max_rows)
        sa, sb = _load_sae_for(fa, sae_a), _load_sae_for(fb, sae_b)
        r, live_a, live_b = _best_matches(fa, fb, rows, lambda x: _encode(sa, x), lambda x: _encode(sb, x))
        latents = _match(r, live_a, live_b)
        del r
        rn, nlive_a, nlive_b = _best_matches(fa, fb, rows, lambda x: x, lambda x: x)
        neurons = _match(rn, nlive_a, nlive_b)

    def share(df):
        return float((df["r"] > threshold).mean()) if len(df) else float("nan")

    summary = {
        "share_latents_matched": share(latents), "share_neurons_matched": share(neurons),
        "mean_best_r_latents": float(latents["r"].mean()) if len(latents) else float("nan"),
        "mean_best_r_neurons": float(neurons["r"].mean()) if len(neurons) else float("nan"),
        "n_live_latents_a": int(live_a.size), "n_live_latents_b": int(live_b.size),
        "n_dead_latents_a": int(sa.d_sae - live_a.size), "n_dead_latents_b": int(sb.d_sae - live_b.size),
        "n_live_neurons_a": int(nlive_a.size), "n_live_neurons_b": int(nlive_b.size),
        "n_rows": int(rows.size), "threshold": float(threshold),
        "acts_a": str(acts_a), "acts_b": str(acts_b),
    }
    return latents, summary
