"""Study S2, units: sparsity, dead and saturated units, spectra and bar periodicity, traces.

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

``units.tsv`` (:func:`unit_table`), one row per tune, layer and unit:

- ``tune``: name of the tune; ``layer``: LSTM layer (0 = first); ``unit``: unit index in the layer;
- ``max_abs``: max over steps of ``|a|``; ``mean``, ``std``: of ``a`` over steps;
- ``share_small``: share of steps with ``|a| < 0.07``; ``share_large``: share with ``|a| > 0.8``;
- ``dominant_period``: tokens (NaN for a constant unit);
- ``power_at_bar_period_db``: dB relative to the unit's peak (≤ 0; NaN without a bar length);
- ``is_dead``, ``is_saturated``, ``bar_periodic``: booleans as defined above.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..corpus.tokens import token_type
from .folkrnn_tunes import TuneRun

SMALL = 0.07
LARGE = 0.8
DEAD = 0.07
SATURATED = 0.99
ALWAYS_LARGE_SHARE = 0.95
N_FFT = 512
DB_CUT = -6.0
PERIOD_TOLERANCE = 0.5

UNIT_COLUMNS = ["tune", "layer", "unit", "max_abs", "mean", "std", "share_small", "share_large",
                "dominant_period", "power_at_bar_period_db", "is_dead", "is_saturated", "bar_periodic"]


def activation_distribution(acts: np.ndarray, small: float = SMALL, large: float = LARGE) -> dict:
    """Sparsity of activations ``[T, d]``: ``share_small`` (``|a| < small``), ``share_large``
    (``|a| > large``), ``sorted`` (each step's activations sorted ascending, ``[T, d]``)."""
    a = np.abs(acts)
    return {"share_small": float((a < small).mean()), "share_large": float((a > large).mean()),
            "sorted": np.sort(acts, axis=1)}


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
