"""Study S2: the dynamics of a folk-rnn model, after Sturm's "making sense of the folk-rnn v2 model".

Pure functions over a loaded ``folkrnn`` model (``musinterp.models.load``) and token lists; no
Snakemake. :func:`run_s2` runs the whole study; :func:`.folkrnn_outputs.write_outputs` writes its
tables and arrays (rule ``s2_folkrnn``) and :func:`.folkrnn_outputs.read_s2` reads them back for
the notebook ``workflow/notebooks/s2_folkrnn.py``, which only plots.

The study is split by concern; this module re-exports their public names:

- :mod:`.folkrnn_tunes`: tune tokens (Sturm's :data:`BLOG_REEL`), generation, teacher forcing
  (:class:`TuneRun`), log10 probabilities, bar length and bar durations (conventions there);
- :mod:`.folkrnn_units`: sparsity, dead and saturated units, unit spectra and bar periodicity,
  traces; thresholds and the ``units.tsv`` columns there;
- :mod:`.folkrnn_interventions`: clamping units, bar-line probabilities, bar correctness of
  generated tunes; the ``interventions.tsv`` columns there;
- :mod:`.folkrnn_copying`: ``copying.tsv``, bars and n-grams found in the training tunes;
- :mod:`.folkrnn_outputs`: the files of the rule and how the notebook reads them.

``summary.tsv`` (:func:`summary_table`), one row per tune and layer: ``n_steps``, ``bar_length``,
``share_small``, ``share_large``, ``n_units``, ``n_dead``, ``n_saturated``, ``n_bar_periodic`` and the
unit lists ``dead_units``, ``saturated_units``, ``bar_periodic_units`` (comma separated).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .folkrnn_copying import NgramIndex, copying_table
from .folkrnn_interventions import (  # noqa: F401  (re-exported)
    INTERVENTION_METRICS,
    bar_line_probabilities,
    clamp_units,
    generation_metrics,
    intervention_experiment,
    random_units,
    summarize_interventions,
)
from .folkrnn_outputs import write_tsv
from .folkrnn_tunes import (  # noqa: F401  (re-exported)
    BAR_TYPES,
    BLOG_REEL,
    BOS,
    EOS,
    LOG10_FLOOR,
    TuneRun,
    bar_correctness,
    bar_durations,
    bar_length,
    encode,
    generate_tune,
    log10_probabilities,
    one_thread,
    parse_tune,
    read_tunes,
    teacher_force,
    tune_tokens,
)
from .folkrnn_units import (  # noqa: F401  (re-exported)
    ALWAYS_LARGE_SHARE,
    DB_CUT,
    DEAD,
    LARGE,
    N_FFT,
    PERIOD_TOLERANCE,
    SATURATED,
    SMALL,
    UNIT_COLUMNS,
    Spectra,
    activation_distribution,
    choose_trace_units,
    dominant_period,
    first_body_step,
    format_units,
    strongest_bar_units,
    unit_spectra,
    unit_table,
    unit_traces,
    units_by_layer,
)

log = logging.getLogger(__name__)


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

            def names(col: str, g: pd.DataFrame = g) -> str:
                return ",".join(str(u) for u in g.loc[g[col].astype(bool), "unit"])

            rows.append({"tune": a.name, "layer": int(layer), "n_steps": len(a.run.emitted),
                         "bar_length": a.bar_length, "share_small": float((acts < SMALL).mean()),
                         "share_large": float((acts > LARGE).mean()), "n_units": len(g),
                         "n_dead": int(g["is_dead"].sum()), "n_saturated": int(g["is_saturated"].sum()),
                         "n_bar_periodic": int(g["bar_periodic"].sum()), "dead_units": names("is_dead"),
                         "saturated_units": names("is_saturated"), "bar_periodic_units": names("bar_periodic")})
    return pd.DataFrame(rows)


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
    parameters: dict = field(default_factory=dict)  # the study's arguments, as run_s2 used them


def run_s2(model_dir: str | Path, corpus_dir: str | Path, tunes: Mapping[str, str | Sequence[str]] | None = None,
           seed: int = 0, temperature: float = 1.0, intervention_seeds: Sequence[int] = (0, 1, 2, 3, 4),
           ngram: int | Sequence[int] = (4, 5, 6, 7, 8), tables_dir: str | Path | None = None,
           n_generate: int = 10, modes: Sequence = ("zero", "mean"), max_len: int = 512, n_trace: int = 4,
           intervention_tunes: Sequence[str] | None = None, intervention_units: int | None = None,
           index_split: str | None = "train", n_examples: int = 3, subject: str = "") -> S2Result:
    """Run study S2 on a folkrnn model directory.

    Analyses a tune generated from ``<s>`` (``seed``, ``temperature``; named ``generated``) and
    every tune of ``tunes`` (name -> plain folk-rnn tokens; default ``{"blog_reel": BLOG_REEL}``,
    Sturm's C-major reel); intervenes on the bar-periodic units
    of each tune in ``intervention_tunes`` (default: every given tune; with ``intervention_units``
    = k, on the k units strongest at the bar period instead, see :func:`strongest_bar_units`,
    for models with few or no strictly bar-periodic units); counts the bars and
    ``ngram``-grams of every tune in the corpus's ``index_split``. With ``tables_dir``, writes
    ``units.tsv``, ``interventions.tsv``, ``copying.tsv`` and ``summary.tsv`` there.
    """
    from ..corpus.store import load_corpus
    from ..models import load

    if tunes is None:
        tunes = {"blog_reel": BLOG_REEL}
    t_start = time.time()
    seconds = {}
    model, meta = load(model_dir)
    if getattr(model, "family", None) != "folkrnn":
        raise ValueError(f"{model_dir}: S2 needs a folkrnn model, got {getattr(model, 'family', None)!r}")
    vocab = list(meta["vocab"])
    subject = subject or Path(model_dir).name
    ns = [int(ngram)] if isinstance(ngram, (int, np.integer)) else [int(n) for n in ngram]
    given = {str(k): tune_tokens(v) for k, v in tunes.items()}
    parameters = {"tunes": {k: " ".join(v) for k, v in given.items()}, "seed": seed, "temperature": temperature,
                  "intervention_seeds": list(intervention_seeds), "ngram": ns, "n_generate": n_generate,
                  "modes": list(modes), "max_len": max_len, "n_trace": n_trace,
                  "intervention_tunes": None if intervention_tunes is None else list(intervention_tunes),
                  "intervention_units": intervention_units, "index_split": index_split, "n_examples": n_examples}
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
                      pd.DataFrame(), copying=copying, seconds=seconds,
                      parameters=parameters)
    if tables_dir is not None:
        tables_dir = Path(tables_dir)
        for stem, df in (("units", units), ("interventions", interventions), ("copying", copying),
                         ("summary", summary)):
            result.tables[stem] = write_tsv(df, tables_dir / f"{stem}.tsv")
    seconds["total"] = time.time() - t_start
    log.info("S2 on %s: %d tunes in %.1f s (%s)", subject, len(analyses), seconds["total"],
             ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items() if k != "total"))
    return result
