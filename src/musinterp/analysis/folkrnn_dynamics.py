"""Study S2: the dynamics of a folk-rnn model, after Sturm's "making sense of the folk-rnn v2 model".

Pure functions over a loaded ``folkrnn`` model (``musinterp.models.load``) and token lists; no
Snakemake. :func:`run_s2` runs the whole study and writes its tables; the notebook
``workflow/notebooks/s2_folkrnn.py`` plots what it returns.

Conventions
-----------
- A *tune* is a list of folk-rnn token strings as the model reads it: ``<s>``, the header
  (``M:4/4 K:Cmaj``), the body, and ``</s>`` when it has one. :func:`tune_tokens` makes one from
  plain text such as Sturm's blog reel; :func:`parse_tune` turns it into ids under a vocabulary
  and names every unknown token in its ``ValueError``.
- Teacher forcing (:func:`teacher_force`) feeds ``tokens[:-1]``; step ``t`` is the state after
  reading ``tokens[t]``, and the *emitted symbol* of step ``t`` is ``tokens[t + 1]``, the token the
  model predicts there (the x-axis labels of every per-step plot).
- *Activations* are the LSTM layer outputs ``h = o·tanh(c)`` (site ``lstm{l}_h``), in ``[-1, 1]``;
  the *last layer* is the one the softmax reads. Cell states are not analysed here.
- *Bar length* (:func:`bar_length`): the most common distance, in tokens, from one bar-line token
  (``|``, ``||``, ``|:``, ``:|``, ``|1``, ...) to the next, counting the bar line itself, so a reel
  bar of 8 notes and ``|`` has bar length 9. Distance 1 (adjacent marks such as ``:| |:``) is ignored.

Thresholds (module constants, all keyword arguments too)
--------------------------------------------------------
- small activation: ``|a| < 0.07`` (:data:`SMALL`); large activation: ``|a| > 0.8`` (:data:`LARGE`);
- dead unit: ``max_t |a_t| < 0.07`` (:data:`DEAD`): it never moves away from zero on the tune;
- saturated unit: ``max_t |a_t| > 0.99`` (:data:`SATURATED`; ``h`` can only get there with the
  output gate open and ``tanh(c)`` saturated) or *always saturated*: ``|a| > 0.8`` at at least
  95 % of the steps (:data:`ALWAYS_LARGE_SHARE`), a unit stuck near ±1 that carries little information;
- spectra: the DFT of each unit's activation sequence **with its mean subtracted** (otherwise the
  constant offset of most units leaks into the lowest bins and hides the periodicities; the DC bin
  is then zero), zero-padded to ``n_fft = 512`` (the next power of two for longer tunes),
  rectangular window, over the steps from the first body token on (the steps reading ``<s>``
  and the header are a start-up transient, not music; ``skip_header=False`` keeps them).
  Magnitude in dB relative to the unit's largest non-DC bin
  (``20 log10 |X_k| / max_k |X_k|``, 0 dB at the peak); plots cut values below −6 dB
  (:data:`DB_CUT`). *Dominant period* = ``n_fft / k*`` tokens for the peak bin ``k* ≥ 1``.
  A unit is *bar-periodic* when it is not dead and its dominant period is within 0.5 tokens of the
  bar length (``|n_fft/k* − bar_length| < 0.5``, :data:`PERIOD_TOLERANCE`; the bins near period 9
  are 512/57 = 8.98 and 512/56 = 9.14). ``power_at_bar_period_db`` is the largest dB value over the
  bins within that tolerance (0 dB for bar-periodic units). A pulse once per bar also has
  harmonics (4.5, 3, ... tokens); such a unit may peak at a harmonic yet show a high power at the
  bar period, which is why that column is reported.
- log10 probabilities are clipped below at −10 (:data:`LOG10_FLOOR`).

Bar durations (:func:`bar_durations`)
-------------------------------------
A bar is a maximal run of tokens between two runs of bar-line tokens. Its duration, in units of L
(1/8 unless an ``[L:]`` token says otherwise), is the metric position that
:func:`musinterp.corpus.tokens.annotate_tune` gives the closing bar line, so broken rhythm
(``A > B``: 3/2 + 1/2), tuplets (``(3``: three in the time of two), chords and duration tokens
are all counted as ABC defines them. The expected duration is the latest meter (``M:``) over L.
A bar is *evaluated* only when it has a bar line on both sides, neither of which is a repeat or
ending mark (``|:`` ``:|`` ``::`` ``|1`` ``|2`` ...; pickups and repeat ends are legitimately
short), and a meter is known; the first bar (before the first bar line, possibly an anacrusis) and
the last one (without a closing bar line) are not evaluated. It is *correct* when its duration
equals the expected one (to 1e-4).

Tables
------
``units.tsv`` (:func:`unit_table`), one row per tune, layer and unit:

- ``tune``: name of the tune; ``layer``: LSTM layer (0 = first); ``unit``: unit index in the layer;
- ``max_abs``: max over steps of ``|a|``; ``mean``, ``std``: of ``a`` over steps;
- ``share_small``: share of steps with ``|a| < 0.07``; ``share_large``: share with ``|a| > 0.8``;
- ``dominant_period``: tokens (NaN for a constant unit);
- ``power_at_bar_period_db``: dB relative to the unit's peak (≤ 0; NaN without a bar length);
- ``is_dead``, ``is_saturated``, ``bar_periodic``: booleans as defined above.

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
  by the rule above (NaN when no bar could be evaluated).

``summary.tsv`` (:func:`summary_table`), one row per tune and layer: ``n_steps``, ``bar_length``,
``share_small``, ``share_large``, ``n_units``, ``n_dead``, ``n_saturated``, ``n_bar_periodic`` and the
unit lists ``dead_units``, ``saturated_units``, ``bar_periodic_units`` (comma separated).

``copying.tsv``: see :mod:`musinterp.analysis.folkrnn_copying`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ..corpus.tokens import annotate_tune, parse_meter, parse_unit, token_type
from ..io import atomic_path
from ..models.hooks import replace_site
from .folkrnn_copying import NgramIndex, copying_table

log = logging.getLogger(__name__)

SMALL = 0.07
LARGE = 0.8
DEAD = 0.07
SATURATED = 0.99
ALWAYS_LARGE_SHARE = 0.95
N_FFT = 512
DB_CUT = -6.0
LOG10_FLOOR = -10.0
PERIOD_TOLERANCE = 0.5
BAR_TYPES = ("bar", "repeat")
BOS, EOS = "<s>", "</s>"

UNIT_COLUMNS = ["tune", "layer", "unit", "max_abs", "mean", "std", "share_small", "share_large",
                "dominant_period", "power_at_bar_period_db", "is_dead", "is_saturated", "bar_periodic"]
INTERVENTION_METRICS = ["p_bar_line_at_bar_ends", "p_pipe_at_bar_ends", "p_emitted_at_bar_ends",
                        "p_bar_line_elsewhere", "nll", "share_bars_correct", "mean_length"]


# --- tunes -------------------------------------------------------------------------------------


def read_tunes(path: str | Path) -> list[str]:
    """Tunes of a text file in folk-rnn token format (tunes separated by blank lines; a tune may
    span several lines, e.g. ``M:4/4`` / ``K:Cmaj`` / body), each as one space-separated string."""
    text = Path(path).read_text(encoding="utf-8")
    blocks = [" ".join(block.split()) for block in text.replace("\r\n", "\n").split("\n\n")]
    tunes = [b for b in blocks if b]
    if not tunes:
        raise ValueError(f"{path}: no tune found")
    return tunes


def tune_tokens(tune: str | Sequence[str]) -> list[str]:
    """``<s>`` + the tokens of ``tune`` (a whitespace-separated string or a token list) + ``</s>``;
    specials already present are kept, not doubled."""
    toks = tune.split() if isinstance(tune, str) else [str(t) for t in tune]
    if not toks or toks == [BOS] or toks == [BOS, EOS]:
        raise ValueError("empty tune")
    if toks[0] != BOS:
        toks = [BOS] + toks
    if toks[-1] != EOS:
        toks = toks + [EOS]
    return toks


def parse_tune(tune: str | Sequence[str], vocab: Sequence[str], name: str = "tune") -> list[int]:
    """Token ids of a tune given as plain folk-rnn tokens, with ``<s>``/``</s>`` added.

    Raises ``ValueError`` naming every token that is not in ``vocab``.
    """
    return encode(tune_tokens(tune), vocab, name=name)


def encode(tokens: Sequence[str], vocab: Sequence[str], name: str = "tune") -> list[int]:
    """Ids of ``tokens`` under ``vocab``; a ``ValueError`` names the unknown tokens."""
    stoi = {t: i for i, t in enumerate(vocab)}
    unknown = sorted({t for t in tokens if t not in stoi})
    if unknown:
        raise ValueError(
            f"{name}: {len(unknown)} token(s) not in the model's vocabulary of {len(vocab)}: "
            f"{', '.join(repr(t) for t in unknown)}")
    return [stoi[t] for t in tokens]


def _generator(seed: int | torch.Generator) -> torch.Generator:
    return seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block: token-by-token steps of a small LSTM are far
    faster without a thread pool's hand-offs (about 20× on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def generate_tune(model, vocab: Sequence[str], seed: int | torch.Generator = 0, temperature: float = 1.0,
                  max_len: int = 512) -> list[str]:
    """Sample one tune from ``<s>`` (a seeded ``torch.Generator``, or a generator to continue);
    returns its tokens, ``<s>`` first and ``</s>`` last unless ``max_len`` was reached.

    Interventions active around the call (:func:`clamp_units`) act at every step.
    """
    stoi = {t: i for i, t in enumerate(vocab)}
    with one_thread():
        ids = model.generate([stoi[BOS]], stoi[EOS], max_len=max_len, temperature=temperature,
                             generator=_generator(seed))
    return [vocab[i] for i in ids]


# --- teacher forcing ---------------------------------------------------------------------------


@dataclass
class TuneRun:
    """One tune read by the model with teacher forcing.

    ``states[site]`` is ``[T, d]`` for ``T = len(tokens) - 1`` steps; row ``t`` is the state after
    reading ``tokens[t]``; ``probs[t]`` the next-token distribution there; ``emitted[t] = tokens[t+1]``.
    """

    tokens: list[str]
    states: dict[str, np.ndarray]
    probs: np.ndarray

    @property
    def emitted(self) -> list[str]:
        return self.tokens[1:]

    @property
    def n_layers(self) -> int:
        return sum(1 for s in self.states if s.endswith("_h"))

    def acts(self, layer: int) -> np.ndarray:
        """Layer ``layer``'s outputs ``h`` ``[T, d]`` (negative counts from the last layer)."""
        return self.states[f"lstm{layer % self.n_layers}_h"]


def teacher_force(model, vocab: Sequence[str], tokens: Sequence[str], name: str = "tune") -> TuneRun:
    """Run ``tokens`` (``<s>`` first) through the model and keep every site (see :class:`TuneRun`)."""
    if len(tokens) < 2:
        raise ValueError(f"{name}: a tune needs at least two tokens to predict one")
    ids = torch.tensor(encode(tokens, vocab, name=name)[:-1])
    model.eval()
    with one_thread():
        states = {k: v.float().numpy() for k, v in model.run_with_states(ids).items()}
    probs = states.pop("softmax")
    return TuneRun(tokens=list(tokens), states=states, probs=probs)


def log10_probabilities(probs: np.ndarray, floor: float = LOG10_FLOOR) -> np.ndarray:
    """``log10`` of probabilities ``[T, V]``, clipped below at ``floor`` (−10): the heatmap data."""
    with np.errstate(divide="ignore"):
        return np.maximum(np.log10(np.asarray(probs, dtype=np.float64)), floor)


# --- activations -------------------------------------------------------------------------------


def activation_distribution(acts: np.ndarray, small: float = SMALL, large: float = LARGE) -> dict:
    """Sparsity of activations ``[T, d]``: ``share_small`` (``|a| < small``), ``share_large``
    (``|a| > large``), ``sorted`` (each step's activations sorted ascending, ``[T, d]``)."""
    a = np.abs(acts)
    return {"share_small": float((a < small).mean()), "share_large": float((a > large).mean()),
            "sorted": np.sort(acts, axis=1)}


def bar_length(tokens: Sequence[str]) -> int | None:
    """Most common distance in tokens between successive bar-line tokens (9 for a reel bar of
    8 notes + ``|``); adjacent marks (distance 1) are ignored; None with fewer than two bar lines."""
    where = [i for i, t in enumerate(tokens) if token_type(t) in BAR_TYPES]
    gaps = Counter(b - a for a, b in zip(where, where[1:]) if b - a > 1)
    if not gaps:
        return None
    best = max(gaps.values())
    return min(g for g, c in gaps.items() if c == best)


@dataclass
class Spectra:
    """DFT magnitudes of each unit's (mean-removed) activation sequence, DC bin dropped.

    ``bins`` k = 1..n_fft/2, ``periods`` = n_fft / k tokens; ``magnitude`` and ``db``
    (relative to the unit's largest bin) are ``[d, K]``; ``dominant_period`` ``[d]``.
    """

    n_fft: int
    bins: np.ndarray
    periods: np.ndarray
    magnitude: np.ndarray
    db: np.ndarray
    dominant_period: np.ndarray
    first_step: int = 0  # the step the analysed sequence starts at (after the header)

    def cut(self, floor: float = DB_CUT) -> np.ndarray:
        """``db`` with values below ``floor`` (−6 dB) set to NaN, as Sturm plots them."""
        return np.where(self.db >= floor, self.db, np.nan)

    def power_at_period(self, period: float | None, tolerance: float = PERIOD_TOLERANCE) -> np.ndarray:
        """Per unit, the largest dB value over bins whose period is within ``tolerance`` of
        ``period`` (the nearest bin when none is); NaN when ``period`` is None."""
        if period is None:
            return np.full(self.db.shape[0], np.nan)
        near = np.abs(self.periods - period) < tolerance
        if not near.any():
            near = np.abs(self.periods - period) == np.abs(self.periods - period).min()
        return self.db[:, near].max(axis=1)


def unit_spectra(acts: np.ndarray, n_fft: int = N_FFT, subtract_mean: bool = True) -> Spectra:
    """DFT of every column of ``acts [T, d]`` zero-padded to ``n_fft`` (see the module docstring)."""
    acts = np.asarray(acts, dtype=np.float64)
    if acts.ndim == 1:
        acts = acts[:, None]
    T = acts.shape[0]
    while n_fft < T:
        n_fft *= 2
    x = acts - acts.mean(axis=0) if subtract_mean else acts
    mag = np.abs(np.fft.rfft(x, n=n_fft, axis=0)).T[:, 1:]  # [d, K], DC dropped
    bins = np.arange(1, n_fft // 2 + 1)
    periods = n_fft / bins
    peak = mag.max(axis=1)
    flat = peak <= 1e-9 * max(1.0, float(np.abs(acts).max(initial=0.0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        db = 20 * np.log10(mag / np.where(flat, 1.0, peak)[:, None])
    db[flat] = -np.inf
    dominant = np.where(flat, np.nan, periods[mag.argmax(axis=1)])
    return Spectra(n_fft=n_fft, bins=bins, periods=periods, magnitude=mag, db=db, dominant_period=dominant)


def dominant_period(sequence: np.ndarray, n_fft: int = N_FFT, subtract_mean: bool = True) -> float:
    """Dominant period (tokens) of one activation sequence: ``n_fft / k`` for the peak bin k ≥ 1."""
    return float(unit_spectra(np.asarray(sequence)[:, None], n_fft, subtract_mean).dominant_period[0])


def first_body_step(tokens: Sequence[str]) -> int:
    """Index of the first token that is neither special (``<s>``) nor a header (meta) token."""
    for i, tok in enumerate(tokens):
        if token_type(tok) not in ("special", "meta"):
            return i
    return 0


def unit_table(run: TuneRun, bar_len: int | None, tune: str = "", n_fft: int = N_FFT,
               tolerance: float = PERIOD_TOLERANCE, skip_header: bool = True
               ) -> tuple[pd.DataFrame, dict[int, Spectra]]:
    """Per-unit statistics for every layer (columns in the module docstring) and the spectra.

    With ``skip_header`` the spectra leave out the steps that read ``<s>`` and the header tokens
    (the start-up transient); every other statistic is over all steps.
    """
    frames, spectra = [], {}
    start = first_body_step(run.tokens) if skip_header else 0
    if start >= len(run.emitted) - 1:
        start = 0
    for layer in range(run.n_layers):
        acts = run.acts(layer)
        a = np.abs(acts)
        spec = unit_spectra(acts[start:], n_fft)
        spec.first_step = start
        spectra[layer] = spec
        max_abs = a.max(axis=0)
        share_large = (a > LARGE).mean(axis=0)
        dead = max_abs < DEAD
        periodic = np.zeros(len(max_abs), dtype=bool)
        if bar_len is not None:
            periodic = ~dead & (np.abs(spec.dominant_period - bar_len) < tolerance)
        frames.append(pd.DataFrame({
            "tune": tune, "layer": layer, "unit": np.arange(acts.shape[1]), "max_abs": max_abs,
            "mean": acts.mean(axis=0), "std": acts.std(axis=0), "share_small": (a < SMALL).mean(axis=0),
            "share_large": share_large, "dominant_period": spec.dominant_period,
            "power_at_bar_period_db": spec.power_at_period(bar_len, tolerance), "is_dead": dead,
            "is_saturated": (max_abs > SATURATED) | (share_large >= ALWAYS_LARGE_SHARE),
            "bar_periodic": periodic,
        }))
    return pd.concat(frames, ignore_index=True)[UNIT_COLUMNS], spectra


def units_by_layer(table: pd.DataFrame, column: str = "bar_periodic") -> dict[int, list[int]]:
    """``{layer: [unit, ...]}`` of the rows of a unit table where boolean ``column`` is true."""
    sel = table[table[column].astype(bool)]
    return {int(layer): sorted(int(u) for u in g["unit"]) for layer, g in sel.groupby("layer")}


def strongest_bar_units(table: pd.DataFrame, k: int) -> dict[int, list[int]]:
    """The ``k`` non-dead units (any layer) with the highest power at the bar period: bar-periodic
    units first, then by ``power_at_bar_period_db``, then by ``std``; ``{layer: [unit, ...]}``."""
    alive = table[~table["is_dead"].astype(bool)].copy()
    alive["_p"] = alive["power_at_bar_period_db"].fillna(-np.inf)
    top = alive.sort_values(["bar_periodic", "_p", "std"], ascending=False).head(k)
    return {int(layer): sorted(int(u) for u in g["unit"]) for layer, g in top.groupby("layer")}


def format_units(units: Mapping[int, Sequence[int]]) -> str:
    """``{0: [3, 7], 2: [1]}`` -> ``"0:3,7;2:1"``."""
    return ";".join(f"{layer}:{','.join(str(u) for u in us)}" for layer, us in sorted(units.items()) if len(us))


def choose_trace_units(table: pd.DataFrame, n: int = 4) -> list[tuple[int, int]]:
    """``(layer, unit)`` pairs worth tracing: bar-periodic units first (highest layer first),
    then the strongest at the bar period, then the most variable; dead units never."""
    alive = table[~table["is_dead"].astype(bool)].copy()
    alive["_p"] = alive["power_at_bar_period_db"].fillna(-np.inf)
    alive = alive.sort_values(["bar_periodic", "layer", "_p", "std"], ascending=[False, False, False, False])
    return [(int(r.layer), int(r.unit)) for r in alive.head(n).itertuples()]


def unit_traces(run: TuneRun, units: Sequence[tuple[int, int]]) -> pd.DataFrame:
    """Long table of the activations of ``(layer, unit)`` pairs at every step: ``step``,
    ``input`` (token read), ``emitted`` (token predicted), ``layer``, ``unit``, ``activation``."""
    rows = []
    for layer, unit in units:
        acts = run.acts(layer)[:, unit]
        rows.append(pd.DataFrame({"step": np.arange(len(acts)), "input": run.tokens[:-1],
                                  "emitted": run.emitted, "layer": layer, "unit": unit, "activation": acts}))
    cols = ["step", "input", "emitted", "layer", "unit", "activation"]
    return pd.concat(rows, ignore_index=True)[cols] if rows else pd.DataFrame(columns=cols)


# --- bar durations ----------------------------------------------------------------------------


def bar_durations(tokens: Sequence[str], tol: float = 1e-4) -> pd.DataFrame:
    """One row per bar of a tune: ``bar`` (0-based), ``start``/``end`` (token range, ``end`` the
    closing bar line), ``text``, ``duration`` and ``expected`` (units of L), ``opens_with``,
    ``closes_with``, ``evaluated``, ``reason`` (why not), ``correct`` (rule in the module docstring)."""
    tokens = list(tokens)
    kinds = [token_type(t) for t in tokens]
    ann = annotate_tune(tokens)
    # runs of adjacent bar-line tokens
    runs: list[list[int]] = []
    for i, k in enumerate(kinds):
        if k in BAR_TYPES:
            if runs and runs[-1][-1] == i - 1:
                runs[-1].append(i)
            else:
                runs.append([i])
    meter: Fraction | None = None
    unit = Fraction(1, 8)
    meter_at, unit_at = {}, {}
    for i, (tok, k) in enumerate(zip(tokens, kinds)):
        if k == "meta":
            field_name = tok.strip("[")[:1]
            if field_name == "M":
                meter = parse_meter(tok)
            elif field_name == "L":
                unit = parse_unit(tok) or unit
        meter_at[i], unit_at[i] = meter, unit

    def body(lo: int, hi: int) -> list[int]:
        return [j for j in range(lo, hi) if kinds[j] not in ("special", "meta")]

    segments = []  # (opening run or None, token indices, closing run or None)
    bounds = [None] + runs + [None]
    for left, right in zip(bounds, bounds[1:]):
        lo = left[-1] + 1 if left else 0
        hi = right[0] if right else len(tokens)
        toks = body(lo, hi)
        if toks:
            segments.append((left, toks, right))
    rows = []
    for b, (left, toks, right) in enumerate(segments):
        end = right[0] if right else None
        m, u = meter_at[toks[0]], unit_at[toks[0]]
        expected = float(m / u) if m is not None else np.nan
        duration = float(ann["metric_position"][end]) if end is not None else np.nan
        reason = ""
        if left is None:
            reason = "first bar"
        elif right is None:
            reason = "last bar"
        elif any(kinds[j] == "repeat" for j in left + right):
            reason = "next to a repeat or ending mark"
        elif m is None:
            reason = "no meter"
        rows.append({
            "bar": b, "start": toks[0], "end": end if end is not None else toks[-1] + 1,
            "text": " ".join(tokens[j] for j in toks), "duration": duration, "expected": expected,
            "opens_with": " ".join(tokens[j] for j in left) if left else "",
            "closes_with": " ".join(tokens[j] for j in right) if right else "",
            "evaluated": reason == "", "reason": reason,
            "correct": bool(reason == "" and abs(duration - expected) < tol),
        })
    cols = ["bar", "start", "end", "text", "duration", "expected", "opens_with", "closes_with",
            "evaluated", "reason", "correct"]
    return pd.DataFrame(rows, columns=cols)


def bar_correctness(tokens: Sequence[str]) -> tuple[int, int]:
    """``(n_evaluated, n_correct)`` bars of one tune (see :func:`bar_durations`)."""
    bars = bar_durations(tokens)
    return int(bars["evaluated"].sum()), int(bars["correct"].sum())


# --- interventions ----------------------------------------------------------------------------


@contextlib.contextmanager
def clamp_units(model, units: Mapping[int, Sequence[int]],
                values: float | Mapping[int, Sequence[float]] = 0.0) -> Iterator[None]:
    """Inside the block, units ``{layer: [unit, ...]}`` of each layer's output ``lstm{layer}_h``
    are set to ``values`` (one number for all, or ``{layer: [value per unit]}``) at every step of
    ``forward`` and of incremental ``generate``. Only the listed units change; the layer's own
    recurrence keeps its true state (see ``FolkRNN.site_module``), the layers above and the
    softmax read the clamped values. With no units, nothing is hooked.
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


# --- the whole study --------------------------------------------------------------------------


@dataclass
class TuneAnalysis:
    """Everything S2 computes for one tune (see :func:`analyse_tune`)."""

    name: str
    tokens: list[str]
    run: TuneRun
    bar_length: int | None
    log10p: np.ndarray  # [T, V], clipped at -10
    distribution: dict  # last layer: share_small, share_large, sorted [T, d]
    units: pd.DataFrame
    spectra: dict[int, Spectra]
    trace_units: list[tuple[int, int]]
    traces: pd.DataFrame
    bars: pd.DataFrame

    @property
    def bar_units(self) -> dict[int, list[int]]:
        return units_by_layer(self.units, "bar_periodic")


def analyse_tune(model, vocab: Sequence[str], tokens: Sequence[str], name: str = "tune",
                 n_trace: int = 4, n_fft: int = N_FFT) -> TuneAnalysis:
    """Teacher-force one tune and compute its probabilities, sparsity, unit table and traces."""
    run = teacher_force(model, vocab, tokens, name=name)
    bl = bar_length(tokens)
    if bl is None:
        log.warning("%s: fewer than two bar lines, no bar length; no unit can be bar-periodic", name)
    table, spectra = unit_table(run, bl, tune=name, n_fft=n_fft)
    chosen = choose_trace_units(table, n_trace)
    try:
        bars = bar_durations(tokens)
    except (ValueError, ArithmeticError, IndexError) as err:  # a token sequence ABC cannot time
        log.warning("%s: bar durations not computed (%s)", name, err)
        bars = bar_durations([BOS, EOS])
    analysis = TuneAnalysis(
        name=name, tokens=list(tokens), run=run, bar_length=bl, log10p=log10_probabilities(run.probs),
        distribution=activation_distribution(run.acts(-1)), units=table, spectra=spectra,
        trace_units=chosen, traces=unit_traces(run, chosen), bars=bars)
    d = analysis.distribution
    log.info("%s: %d steps, bar length %s, last layer |a|<%.2f %.1f%%, |a|>%.1f %.1f%%, bar-periodic units %s",
             name, len(run.emitted), bl, SMALL, 100 * d["share_small"], LARGE, 100 * d["share_large"],
             format_units(analysis.bar_units) or "none")
    return analysis


def summary_table(analyses: Sequence[TuneAnalysis]) -> pd.DataFrame:
    """One row per tune and layer (columns in the module docstring)."""
    rows = []
    for a in analyses:
        for layer, g in a.units.groupby("layer"):
            acts = np.abs(a.run.acts(int(layer)))
            names = lambda col: ",".join(str(u) for u in g.loc[g[col].astype(bool), "unit"])  # noqa: E731
            rows.append({"tune": a.name, "layer": int(layer), "n_steps": len(a.run.emitted),
                         "bar_length": a.bar_length, "share_small": float((acts < SMALL).mean()),
                         "share_large": float((acts > LARGE).mean()), "n_units": len(g),
                         "n_dead": int(g["is_dead"].sum()), "n_saturated": int(g["is_saturated"].sum()),
                         "n_bar_periodic": int(g["bar_periodic"].sum()), "dead_units": names("is_dead"),
                         "saturated_units": names("is_saturated"), "bar_periodic_units": names("bar_periodic")})
    return pd.DataFrame(rows)


def write_tsv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` as a tab-separated file with a header, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False)
    log.info("wrote %s (%d rows)", path, len(df))
    return path


@dataclass
class S2Result:
    """What :func:`run_s2` returns: per-tune analyses (generated first) and the tables."""

    subject: str
    vocab: list[str]
    analyses: dict[str, TuneAnalysis]
    generated: str
    summary: pd.DataFrame
    units: pd.DataFrame
    interventions: pd.DataFrame
    intervention_summary: pd.DataFrame
    copying: pd.DataFrame
    seconds: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)


def run_s2(model_dir: str | Path, corpus_dir: str | Path, tunes: Mapping[str, str | Sequence[str]],
           seed: int = 0, temperature: float = 1.0, intervention_seeds: Sequence[int] = (0, 1, 2, 3, 4),
           ngram: int | Sequence[int] = (4, 5, 6, 7, 8), tables_dir: str | Path | None = None,
           n_generate: int = 10, modes: Sequence = ("zero", "mean"), max_len: int = 512, n_trace: int = 4,
           intervention_tunes: Sequence[str] | None = None, intervention_units: int | None = None,
           index_split: str | None = "train", n_examples: int = 3, subject: str = "") -> S2Result:
    """Run study S2 on a folkrnn model directory.

    Analyses a tune generated from ``<s>`` (``seed``, ``temperature``; named ``generated``) and
    every tune of ``tunes`` (name -> plain folk-rnn tokens); intervenes on the bar-periodic units
    of each tune in ``intervention_tunes`` (default: every given tune; with ``intervention_units``
    = k, on the k units strongest at the bar period instead, see :func:`strongest_bar_units`,
    for models with few or no strictly bar-periodic units); counts the bars and
    ``ngram``-grams of every tune in the corpus's ``index_split``. With ``tables_dir``, writes
    ``units.tsv``, ``interventions.tsv``, ``copying.tsv`` and ``summary.tsv`` there.
    """
    from ..corpus.store import load_corpus
    from ..models import load

    t_start = time.time()
    seconds = {}
    model, meta = load(model_dir)
    if getattr(model, "family", None) != "folkrnn":
        raise ValueError(f"{model_dir}: S2 needs a folkrnn model, got {getattr(model, 'family', None)!r}")
    vocab = list(meta["vocab"])
    subject = subject or Path(model_dir).name
    ns = [int(ngram)] if isinstance(ngram, (int, np.integer)) else [int(n) for n in ngram]
    given = {str(k): tune_tokens(v) for k, v in tunes.items()}
    for name, toks in given.items():
        encode(toks, vocab, name=f"tune {name!r}")  # fail early, naming unknown tokens
    if "generated" in given:
        raise ValueError("'generated' is reserved for the tune the model generates; rename that tune")

    t0 = time.time()
    generated = generate_tune(model, vocab, seed, temperature, max_len)
    seconds["generate"] = time.time() - t0
    log.info("generated (seed %d, temperature %g): %d tokens: %s", seed, temperature, len(generated),
             " ".join(generated))
    all_tunes = {"generated": generated, **given}

    t0 = time.time()
    analyses = {name: analyse_tune(model, vocab, toks, name=name, n_trace=n_trace)
                for name, toks in all_tunes.items()}
    seconds["analyse"] = time.time() - t0

    t0 = time.time()
    frames = []
    for name in (given if intervention_tunes is None else intervention_tunes):
        if name not in analyses:
            raise ValueError(f"intervention tune {name!r} is not among {list(analyses)}")
        a = analyses[name]
        chosen = None if intervention_units is None else strongest_bar_units(a.units, intervention_units)
        frames.append(intervention_experiment(
            model, vocab, a.tokens, a.units, a.run, seeds=intervention_seeds, units=chosen, modes=modes,
            n_generate=n_generate, temperature=temperature, max_len=max_len, tune=name))
    interventions = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    seconds["interventions"] = time.time() - t0

    t0 = time.time()
    corpus = load_corpus(corpus_dir)
    if list(corpus.vocab) != vocab:
        log.warning("corpus %s and model %s have different vocabularies; copying matches by token text",
                    corpus_dir, model_dir)
    index = NgramIndex.from_corpus(corpus, split=index_split)
    copying = pd.concat([copying_table(index, a.tokens, ns, n_examples=n_examples, tune=name)
                         for name, a in analyses.items()], ignore_index=True)
    seconds["copying"] = time.time() - t0

    units = pd.concat([a.units for a in analyses.values()], ignore_index=True)
    summary = summary_table(list(analyses.values()))
    result = S2Result(subject=subject, vocab=vocab, analyses=analyses, generated="generated", summary=summary,
                      units=units, interventions=interventions,
                      intervention_summary=summarize_interventions(interventions) if len(interventions) else
                      pd.DataFrame(), copying=copying, seconds=seconds)
    if tables_dir is not None:
        tables_dir = Path(tables_dir)
        for stem, df in (("units", units), ("interventions", interventions), ("copying", copying),
                         ("summary", summary)):
            result.tables[stem] = write_tsv(df, tables_dir / f"{stem}.tsv")
    seconds["total"] = time.time() - t_start
    log.info("S2 on %s: %d tunes in %.1f s (%s)", subject, len(analyses), seconds["total"],
             ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items() if k != "total"))
    return result
