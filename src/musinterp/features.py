"""Feature reports: what each SAE latent and each raw neuron responds to, in musical tokens.

``build_features`` streams every row of an activation file once through the SAE (after a cheap
first pass over the raw activations) and keeps, per unit, only running sums, counts and the
running top-k examples, never the whole latent matrix. One output row per unit:

- ``kind`` ("latent" or "neuron") and ``index`` (latent number or neuron dimension);
- ``density``: fraction of all tokens on which the unit is *active*. A latent is active when it is
  > 0. A neuron can be negative and is rarely exactly 0, so it is active when
  ``|a| > 0.1 · max |a|`` of that neuron over the file (``density_threshold`` holds that
  number; 0 for latents);
- ``max_activation``, ``mean_activation``: over all tokens (zeros included);
- ``top_examples``: up to ``top_k`` tokens with the largest activation (for neurons the most
  positive ones; for latents only tokens where it is > 0), each with ``row`` (row of the
  activation file), ``piece``, ``position``, ``activation``, ``token`` (decoded) and
  ``context``: the decoded tokens of the same piece from ``position − context`` to
  ``position + context``, space-separated, the centre token marked ``⟦G⟧``;
- ``top_tokens``: the input tokens most associated with the unit: score = the unit's mean
  activation over all occurrences of the token (zeros included), over tokens occurring at least
  ``MIN_TOKEN_COUNT`` times; the ``TOP_ASSOCIATIONS`` best, and for latents only scores > 0;
- ``top_token_types``: the same rule over the ``token_type`` categories (empty when the
  activation file has no ``/tokens/token_type``).

Memory: besides the per-unit state (``top_k`` × units, and vocabulary × units sums), the
``piece``, ``position``, ``token`` columns are held in memory (12 bytes per token) to decode
contexts.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from musinterp import PRODUCER
from musinterp.dashboard import CENTRE_CLOSE, CENTRE_OPEN, write_dashboard
from musinterp.io import atomic_path
from musinterp.sae.saelens import load_sae
from musinterp.sae.trainer import ActivationStore

log = logging.getLogger(__name__)

MIN_TOKEN_COUNT = 5
TOP_ASSOCIATIONS = 5
NEURON_ACTIVE_FRACTION_OF_MAX = 0.1

EXAMPLE_TYPE = pa.struct(
    [
        ("row", pa.int64()),
        ("piece", pa.int64()),
        ("position", pa.int64()),
        ("activation", pa.float64()),
        ("token", pa.string()),
        ("context", pa.string()),
    ]
)
TOKEN_SCORE_TYPE = pa.struct([("token", pa.string()), ("score", pa.float64()), ("count", pa.int64())])
TYPE_SCORE_TYPE = pa.struct([("token_type", pa.string()), ("score", pa.float64()), ("count", pa.int64())])
SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("index", pa.int64()),
        ("density", pa.float64()),
        ("density_threshold", pa.float64()),
        ("max_activation", pa.float64()),
        ("mean_activation", pa.float64()),
        ("top_examples", pa.list_(EXAMPLE_TYPE)),
        ("top_tokens", pa.list_(TOKEN_SCORE_TYPE)),
        ("top_token_types", pa.list_(TYPE_SCORE_TYPE)),
    ]
)


class _UnitStats:
    """Running per-unit statistics over row batches: counts, sums, maxima, top-k, associations."""

    def __init__(self, n_units: int, top_k: int, n_tokens_vocab: int, n_types: int):
        self.count_active = torch.zeros(n_units, dtype=torch.int64)
        self.sum_act = torch.zeros(n_units, dtype=torch.float64)
        self.top_values = torch.full((top_k, n_units), -torch.inf)
        self.top_rows = torch.full((top_k, n_units), -1, dtype=torch.int64)
        self.token_sums = torch.zeros(n_tokens_vocab, n_units, dtype=torch.float64)
        self.type_sums = torch.zeros(n_types, n_units, dtype=torch.float64)

    def update(self, values: torch.Tensor, active: torch.Tensor, first_row: int, tokens, types) -> None:
        values64 = values.to(torch.float64)
        self.count_active += active.sum(dim=0)
        self.sum_act += values64.sum(dim=0)
        # Top-k of this batch, then merge with the running top-k (whose first row is the maximum).
        k = min(self.top_values.shape[0], values.shape[0])
        batch_values, batch_rows = torch.topk(values, k, dim=0)
        merged_values = torch.cat([self.top_values, batch_values])
        merged_rows = torch.cat([self.top_rows, batch_rows + first_row])
        self.top_values, order = torch.topk(merged_values, self.top_values.shape[0], dim=0)
        self.top_rows = merged_rows.gather(0, order)
        self.token_sums.index_add_(0, tokens, values64)
        if types is not None:
            self.type_sums.index_add_(0, types, values64)


@dataclass
class _ContextIndex:
    """Finds the rows of a piece's neighbouring positions and decodes them."""

    piece: np.ndarray
    position: np.ndarray
    token: np.ndarray
    vocab: list[str]
    width: int

    def __post_init__(self):
        # Key each row by (piece, position); the stride leaves room for position + width so that
        # keys past a piece's end never collide with the next piece.
        self.stride = int(self.position.max()) + self.width + 1
        key = self.piece.astype(np.int64) * self.stride + self.position.astype(np.int64)
        if len(key) < 2 or bool(np.all(key[1:] > key[:-1])):
            self.order, self.sorted_key = None, key
        else:
            self.order = np.argsort(key, kind="stable")
            self.sorted_key = key[self.order]

    def contexts(self, rows: np.ndarray) -> dict[int, str]:
        offsets = np.arange(-self.width, self.width + 1)
        positions = self.position[rows].astype(np.int64)[:, None] + offsets[None, :]
        keys = self.piece[rows].astype(np.int64)[:, None] * self.stride + positions
        slot = np.searchsorted(self.sorted_key, keys).clip(max=len(self.sorted_key) - 1)
        found = (self.sorted_key[slot] == keys) & (positions >= 0)
        neighbour = slot if self.order is None else self.order[slot]
        out = {}
        for i, row in enumerate(rows):
            words = []
            for j, offset in enumerate(offsets):
                if not found[i, j]:
                    continue
                word = self.vocab[self.token[neighbour[i, j]]]
                words.append(f"{CENTRE_OPEN}{word}{CENTRE_CLOSE}" if offset == 0 else word)
            out[int(row)] = " ".join(words)
        return out


def _json_attr(attrs: dict[str, Any], name: str, where: str) -> Any:
    if name not in attrs:
        raise ValueError(f"{where}: missing attribute {name!r}")
    try:
        return json.loads(attrs[name])
    except (TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"{where}: attribute {name!r} is not valid JSON ({err})") from None


def _read_token_columns(store: ActivationStore) -> dict[str, Any]:
    """piece/position/token columns and the token names. A piece-level file has one row per piece:
    its "token" is the piece itself, so examples and contexts name the piece."""
    where = str(store.path)
    if store.granularity == "piece":
        pieces = store.column("piece").astype(np.int64)
        return {"piece": pieces, "position": np.zeros_like(pieces), "token": np.zeros_like(pieces),
                "vocab": ["(piece)"], "token_type": None, "type_names": []}
    columns: dict[str, Any] = {
        name: store.column(name).astype(np.int64) for name in ("piece", "position", "token")
    }
    _json_attr(store.attrs, "vocab", where)  # present and valid JSON
    vocab = store.token_vocab()
    # Multi-field tokens: /tokens/token holds the first field's ids (the others have columns of their own).
    names = [str(t) for t in (vocab.tokens if not vocab.multi_field else next(iter(vocab.fields.values())))]
    bad = (columns["token"] < 0) | (columns["token"] >= len(names))
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(
            f"{where}: /tokens/token row {row} is {columns['token'][row]}, outside the vocab of {len(names)}"
        )
    columns["vocab"] = names
    columns["token_type"], columns["type_names"] = None, []
    if store.has_column("token_type"):
        codes = store.column("token_type").astype(np.int64)
        attrs = store.column_attrs("token_type")
        if "categories" in attrs:
            names = [str(c) for c in _json_attr(attrs, "categories", f"{where} /tokens/token_type")]
        else:
            names = [str(c) for c in range(int(codes.max()) + 1)]
        if codes.min() < 0 or codes.max() >= len(names):
            raise ValueError(f"{where}: /tokens/token_type has codes outside its {len(names)} categories")
        columns["token_type"], columns["type_names"] = codes, names
    return columns


def _top_associations(sums: torch.Tensor, counts: torch.Tensor, names: list[str], positive_only: bool):
    """Per unit: up to TOP_ASSOCIATIONS (name, mean activation, count), best first."""
    n_names, n_units = sums.shape
    if n_names == 0:
        return [[] for _ in range(n_units)]
    means = sums / counts.clamp(min=1).to(torch.float64)[:, None]
    means[counts < MIN_TOKEN_COUNT] = -torch.inf
    k = min(TOP_ASSOCIATIONS, n_names)
    scores, which = torch.topk(means, k, dim=0)
    out = []
    for u in range(n_units):
        entries = []
        for score, i in zip(scores[:, u].tolist(), which[:, u].tolist()):
            if score == -np.inf or (positive_only and score <= 0):
                continue
            entries.append((names[i], score, int(counts[i])))
        out.append(entries)
    return out


def build_features(
    acts_path: str | os.PathLike,
    sae_dir: str | os.PathLike,
    out_parquet: str | os.PathLike,
    dashboard_dir: str | os.PathLike | None = None,
    top_k: int = 20,
    context: int = 8,
    batch_size: int = 4096,
) -> pd.DataFrame:
    """Write one row per SAE latent and per raw neuron to ``out_parquet``; see the module doc."""
    if top_k < 1 or context < 0 or batch_size < 1:
        raise ValueError(
            f"need top_k >= 1, context >= 0, batch_size >= 1; got {top_k}, {context}, {batch_size}"
        )
    acts_path, sae_dir, out_parquet = Path(acts_path), Path(sae_dir), Path(out_parquet)
    t_start = time.perf_counter()
    sae = load_sae(sae_dir)
    with ActivationStore(acts_path) as store:
        if sae.d_in != store.d:
            raise ValueError(f"{sae_dir}: SAE reads d_in={sae.d_in}, but {acts_path} has d={store.d}")
        columns = _read_token_columns(store)
        n_rows, d = store.n_rows, store.d
        batches = [(s, min(s + batch_size, n_rows)) for s in range(0, n_rows, batch_size)]

        # Pass 1: each neuron's max |a|, which sets its activity threshold (also checks finiteness).
        max_abs = torch.zeros(d, dtype=torch.float32)
        for start, stop in tqdm(batches, desc="features: neuron ranges", unit="batch", mininterval=2.0):
            max_abs = torch.maximum(
                max_abs, torch.from_numpy(store.read(start, stop)).abs().max(dim=0).values
            )
        neuron_threshold = NEURON_ACTIVE_FRACTION_OF_MAX * max_abs

        # Pass 2: latents and neurons together.
        vocab, type_names = columns["vocab"], columns["type_names"]
        tokens_all = torch.from_numpy(columns["token"])
        types_all = None if columns["token_type"] is None else torch.from_numpy(columns["token_type"])
        latents = _UnitStats(sae.d_sae, top_k, len(vocab), len(type_names))
        neurons = _UnitStats(d, top_k, len(vocab), len(type_names))
        for start, stop in tqdm(batches, desc="features: units", unit="batch", mininterval=2.0):
            x = torch.from_numpy(store.read(start, stop))
            z = sae.encode(x)
            tokens = tokens_all[start:stop]
            types = None if types_all is None else types_all[start:stop]
            latents.update(z, z > 0, start, tokens, types)
            neurons.update(x, x.abs() > neuron_threshold, start, tokens, types)
        log.info("features: %d tokens through %d latents and %d neurons in %.1f s",
                 n_rows, sae.d_sae, d, time.perf_counter() - t_start)  # fmt: skip

    token_counts = torch.bincount(tokens_all, minlength=len(vocab))
    type_counts = (
        torch.zeros(0, dtype=torch.int64)
        if types_all is None
        else torch.bincount(types_all, minlength=len(type_names))
    )
    index = _ContextIndex(columns["piece"], columns["position"], columns["token"], vocab, context)
    records: list[dict[str, Any]] = []
    for kind, stats, thresholds in (
        ("latent", latents, torch.zeros(sae.d_sae)),
        ("neuron", neurons, neuron_threshold),
    ):
        positive_only = kind == "latent"
        keep = stats.top_rows >= 0
        if positive_only:
            keep &= stats.top_values > 0
        example_rows = np.unique(stats.top_rows[keep].numpy())
        contexts = index.contexts(example_rows) if len(example_rows) else {}
        top_tokens = _top_associations(stats.token_sums, token_counts, vocab, positive_only)
        top_types = _top_associations(stats.type_sums, type_counts, type_names, positive_only)
        density = (stats.count_active.to(torch.float64) / n_rows).tolist()
        mean = (stats.sum_act / n_rows).tolist()
        max_activation = stats.top_values[0].tolist()
        top_rows, top_values, keep = stats.top_rows.T.tolist(), stats.top_values.T.tolist(), keep.T.tolist()
        for u in range(stats.count_active.shape[0]):
            examples = [
                {
                    "row": row,
                    "piece": int(columns["piece"][row]),
                    "position": int(columns["position"][row]),
                    "activation": value,
                    "token": vocab[columns["token"][row]],
                    "context": contexts[row],
                }
                for row, value, kept in zip(top_rows[u], top_values[u], keep[u])
                if kept
            ]
            records.append(
                {
                    "kind": kind,
                    "index": u,
                    "density": density[u],
                    "density_threshold": float(thresholds[u]),
                    "max_activation": max_activation[u],
                    "mean_activation": mean[u],
                    "top_examples": examples,
                    "top_tokens": [{"token": t, "score": s, "count": c} for t, s, c in top_tokens[u]],
                    "top_token_types": [
                        {"token_type": t, "score": s, "count": c} for t, s, c in top_types[u]
                    ],
                }
            )

    summary = {
        "producer": PRODUCER,
        "acts_path": str(acts_path),
        "sae_dir": str(sae_dir),
        "subject": store.attrs.get("subject"),
        "site": store.attrs.get("site"),
        "n_tokens": n_rows,
        "n_latents": sae.d_sae,
        "n_neurons": d,
        "top_k": top_k,
        "context": context,
        "rules": {
            "density": "latent: fraction of tokens with z > 0; neuron: fraction with |a| > "
            f"{NEURON_ACTIVE_FRACTION_OF_MAX} * max|a| of that neuron (density_threshold)",
            "mean_activation": "mean over all tokens, zeros included",
            "top_examples": "largest activations (most positive for neurons; > 0 only for latents)",
            "top_tokens": f"mean activation over the token's occurrences, tokens with >= {MIN_TOKEN_COUNT} "
            f"occurrences, best {TOP_ASSOCIATIONS}, > 0 only for latents",
            "top_token_types": "same rule over /tokens/token_type categories",
        },
    }
    table = pa.Table.from_pylist(records, schema=SCHEMA).replace_schema_metadata(
        {"musinterp": json.dumps(summary)}
    )
    with atomic_path(out_parquet, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    features = pd.DataFrame.from_records(records, columns=SCHEMA.names)
    is_latent = features["kind"] == "latent"
    log.info(
        "wrote %s: %d latents (%d dead, %d dense > 10%%), %d neurons, %.1f s",
        out_parquet, int(is_latent.sum()), int((features.loc[is_latent, "density"] == 0).sum()),
        int((features.loc[is_latent, "density"] > 0.1).sum()), int((~is_latent).sum()),
        time.perf_counter() - t_start,
    )  # fmt: skip
    if dashboard_dir is not None:
        write_dashboard(features, dashboard_dir, summary)
    return features
