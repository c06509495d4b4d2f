"""Study S2, interventions: clamp or zero units and measure bar lines and bar correctness.

``interventions.tsv`` (:func:`intervention_experiment`), one row per tune, seed, condition and mode:

- ``tune``: the tune whose bar-periodic units are targeted and which is teacher-forced;
- ``seed``: seeds the generation (the same stream for every condition) and the random units;
- ``condition``: ``clean`` (no intervention), ``bar_periodic`` (the tune's bar-periodic units,
  all layers, or the units given, e.g. the k strongest at the bar period) or ``random`` (as many
  units per layer, drawn from the layer's other non-dead units);
- ``mode``: ``zero`` (set to 0), ``mean`` (clamp to the unit's mean on the tune), a number
  (clamp to it), empty for ``clean``;
- ``n_units``, ``units``: how many and which (``layer:unit,unit;layer:...``);
- ``p_bar_line_at_bar_ends``: teacher-forced on the tune, mean over the steps whose emitted
  symbol is a bar line of the probability of *any* bar-line token; ``p_pipe_at_bar_ends``: the same
  for ``|`` alone; ``p_emitted_at_bar_ends``: for the bar-line token actually there;
  ``p_bar_line_elsewhere``: probability of any bar line at the other steps (false alarms);
  ``nll``: mean negative log-likelihood (nats per token) of the tune;
- ``n_generated`` tunes generated from ``<s>`` under the intervention, ``n_ended`` of them
  emitted ``</s>`` before ``max_len``, ``mean_length`` (tokens);
- ``n_bars_evaluated``, ``n_bars_correct``, ``share_bars_correct``: over all generated tunes,
  by the rule of :mod:`.folkrnn_tunes` (NaN when no bar could be evaluated).

:func:`summarize_interventions` (``intervention_summary.tsv``) averages the metrics over seeds.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ..corpus.tokens import token_type
from ..models.hooks import replace_site
from .folkrnn_tunes import (
    BAR_TYPES,
    EOS,
    TuneRun,
    _generator,
    bar_correctness,
    encode,
    generate_tune,
)
from .folkrnn_units import format_units, units_by_layer

log = logging.getLogger(__name__)

INTERVENTION_METRICS = ["p_bar_line_at_bar_ends", "p_pipe_at_bar_ends", "p_emitted_at_bar_ends",
                        "p_bar_line_elsewhere", "nll", "share_bars_correct", "mean_length"]


@contextlib.contextmanager
def clamp_units(model, units: Mapping[int, Sequence[int]],
                values: float | Mapping[int, Sequence[float]] = 0.0) -> Iterator[None]:
    """Inside the block, units ``{layer: [unit, ...]}`` of each layer's output ``lstm{layer}_h``
    are set to ``values`` (one number for all, or ``{layer: [value per unit]}``) at every step of
    ``forward`` and of incremental ``generate`` (through :func:`musinterp.models.hooks.replace_site`).
    Only the listed units change; the layer's own recurrence keeps its true state, the layers
    above and the softmax read the clamped values. With no units, nothing is hooked.
    """
    with contextlib.ExitStack() as stack:
        for layer, idx in units.items():
            idx = [int(u) for u in idx]
            if not idx:
                continue
            if isinstance(values, Mapping):
                vals = np.asarray(values[layer], dtype=np.float32)
            else:
                vals = np.full(len(idx), float(values), dtype=np.float32)
            if vals.shape != (len(idx),):
                raise ValueError(f"layer {layer}: {len(idx)} units but values of shape {vals.shape}")
            idx_t, val_t = torch.tensor(idx), torch.from_numpy(vals)

            def fn(a: torch.Tensor, idx_t=idx_t, val_t=val_t) -> torch.Tensor:
                a = a.clone()
                a[..., idx_t] = val_t.to(a.dtype)
                return a

            stack.enter_context(replace_site(model, f"lstm{layer}_h", fn))
        yield


@torch.no_grad()
def bar_line_probabilities(model, vocab: Sequence[str], tokens: Sequence[str]) -> dict:
    """Teacher-forced bar-line metrics of one tune under whatever interventions are active
    (``p_bar_line_at_bar_ends``, ``p_pipe_at_bar_ends``, ``p_emitted_at_bar_ends``,
    ``p_bar_line_elsewhere``, ``nll``; see the module docstring). Uses ``forward``, so hooks act."""
    ids = torch.tensor(encode(tokens, vocab))
    model.eval()
    logp = torch.log_softmax(model(ids[None, :-1])[0], dim=-1).double()
    probs = logp.exp()
    target = ids[1:]
    bar_ids = torch.tensor([i for i, t in enumerate(vocab) if token_type(t) in BAR_TYPES])
    p_bar = probs[:, bar_ids].sum(dim=1)
    at_end = torch.isin(target, bar_ids)
    pipe = list(vocab).index("|") if "|" in vocab else None
    steps = torch.arange(len(target))

    def mean(x: torch.Tensor) -> float:
        return float(x.mean()) if len(x) else float("nan")

    return {
        "p_bar_line_at_bar_ends": mean(p_bar[at_end]),
        "p_pipe_at_bar_ends": mean(probs[at_end, pipe]) if pipe is not None else float("nan"),
        "p_emitted_at_bar_ends": mean(probs[steps[at_end], target[at_end]]),
        "p_bar_line_elsewhere": mean(p_bar[~at_end]),
        "nll": float(-logp[steps, target].mean()),
    }


def random_units(table: pd.DataFrame, like: Mapping[int, Sequence[int]], rng: np.random.Generator
                 ) -> dict[int, list[int]]:
    """As many units per layer as ``like`` has, drawn without replacement from the layer's units
    that are neither in ``like`` nor dead (``table`` is one tune's unit table)."""
    out = {}
    for layer, chosen in like.items():
        rows = table[(table["layer"] == layer) & ~table["is_dead"].astype(bool) & ~table["unit"].isin(chosen)]
        pool = rows["unit"].to_numpy()
        k = min(len(chosen), len(pool))
        out[int(layer)] = sorted(int(u) for u in rng.choice(pool, size=k, replace=False)) if k else []
    return out


def _clamp_values(mode, units: Mapping[int, Sequence[int]], run: TuneRun):
    if mode == "zero":
        return 0.0
    if mode == "mean":
        return {layer: run.acts(layer)[:, list(us)].mean(axis=0) for layer, us in units.items()}
    try:
        return float(mode)
    except (TypeError, ValueError):
        raise ValueError(f"intervention mode must be 'zero', 'mean' or a number, got {mode!r}") from None


def generation_metrics(model, vocab: Sequence[str], seed: int, n_generate: int, temperature: float,
                       max_len: int) -> dict:
    """Generate ``n_generate`` tunes from one seeded stream and score their bars."""
    gen = _generator(seed)
    n_eval = n_ok = n_ended = 0
    lengths = []
    for _ in range(n_generate):
        toks = generate_tune(model, vocab, gen, temperature, max_len)
        try:
            e, c = bar_correctness(toks)
        except (ValueError, ArithmeticError, IndexError) as err:  # a token sequence ABC cannot time
            log.warning("seed %d: bars of a generated tune not evaluated (%s): %s", seed, err, " ".join(toks))
            e = c = 0
        n_eval, n_ok = n_eval + e, n_ok + c
        n_ended += toks[-1] == EOS
        lengths.append(len(toks))
    return {"n_generated": n_generate, "n_ended": n_ended, "mean_length": float(np.mean(lengths)),
            "n_bars_evaluated": n_eval, "n_bars_correct": n_ok,
            "share_bars_correct": n_ok / n_eval if n_eval else float("nan")}


def intervention_experiment(model, vocab: Sequence[str], tokens: Sequence[str], table: pd.DataFrame,
                            run: TuneRun, seeds: Sequence[int] = (0, 1, 2, 3, 4),
                            units: Mapping[int, Sequence[int]] | None = None,
                            modes: Sequence = ("zero", "mean"), n_generate: int = 10,
                            temperature: float = 1.0, max_len: int = 512, tune: str = "") -> pd.DataFrame:
    """Clamp the bar-periodic units (or ``units``) of one tune, and as many random units, and
    measure bar-line probabilities on the tune and bar correctness of generated tunes per seed.

    ``table`` and ``run`` are the tune's unit table and teacher-forced run (for unit means and the
    random draw). Returns the tidy table of the module docstring.
    """
    if units is None:
        units = units_by_layer(table, "bar_periodic")
    n_units = sum(len(u) for u in units.values())
    if n_units == 0:
        log.warning("%s: no units to intervene on; bar_periodic and random rows equal clean "
                    "(run_s2's intervention_units=k targets the k units strongest at the bar period)", tune or "tune")
    t0 = time.time()
    rows = []
    conditions = [(s, "clean", "") for s in seeds]
    conditions += [(s, cond, m) for s in seeds for m in modes for cond in ("bar_periodic", "random")]
    clean_probs = bar_line_probabilities(model, vocab, tokens)
    for seed, cond, mode in tqdm(conditions, desc=f"interventions {tune}", leave=False):
        chosen = {} if cond == "clean" else units
        if cond == "random":
            chosen = random_units(table, units, np.random.default_rng(seed))
        values = 0.0 if cond == "clean" else _clamp_values(mode, chosen, run)
        with clamp_units(model, chosen, values):
            probs = clean_probs if cond == "clean" else bar_line_probabilities(model, vocab, tokens)
            gen = generation_metrics(model, vocab, seed, n_generate, temperature, max_len)
        rows.append({"tune": tune, "seed": seed, "condition": cond, "mode": str(mode),
                     "n_units": sum(len(u) for u in chosen.values()), "units": format_units(chosen),
                     **probs, **gen})
    df = pd.DataFrame(rows)
    log.info("interventions on %s: %d units, %d seeds, %d rows (%.1f s)", tune or "tune", n_units,
             len(seeds), len(df), time.time() - t0)
    return df


def summarize_interventions(df: pd.DataFrame, metrics: Sequence[str] = INTERVENTION_METRICS) -> pd.DataFrame:
    """Mean and sd over seeds per tune, condition and mode: columns ``<metric>_mean``,
    ``<metric>_sd`` and ``n_seeds``."""
    g = df.groupby(["tune", "condition", "mode"], sort=False)
    out = g[list(metrics)].agg(["mean", "std"])
    out.columns = [f"{m}_{'sd' if s == 'std' else s}" for m, s in out.columns]
    out["n_units"] = g["n_units"].mean()
    out["n_seeds"] = g.size()
    return out.reset_index()
