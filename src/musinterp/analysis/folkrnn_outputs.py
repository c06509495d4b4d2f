"""Study S2, files: what rule ``s2_folkrnn`` writes and how the notebook reads it back.

:func:`write_outputs` writes one :class:`~.folkrnn_dynamics.S2Result`, every file atomically, under
the names of :data:`OUTPUTS` (:func:`output_paths` gives them in one directory):

- ``units.tsv``, ``interventions.tsv``, ``copying.tsv``, ``summary.tsv``: the study's tables
  (columns in :mod:`.folkrnn_units`, :mod:`.folkrnn_interventions`, :mod:`.folkrnn_copying`,
  :mod:`.folkrnn_dynamics`), byte for byte what ``run_s2(tables_dir=...)`` writes;
- ``intervention_summary.tsv``: :func:`.folkrnn_interventions.summarize_interventions`, mean and
  sd over seeds per tune, condition and mode (empty file without interventions);
- ``bars.tsv``: :func:`.folkrnn_tunes.bar_durations` of every analysed tune, a ``tune`` column first;
- ``arrays.npz``: per analysed tune ``i`` (the order of ``s2.json``'s ``tunes``):
  ``t{i}_log10p`` ``[T, V]`` (log10 softmax probabilities, clipped at −10, float64),
  ``t{i}_acts{l}`` ``[T, d]`` (layer ``l``'s outputs ``h``, float32),
  ``t{i}_db{l}`` ``[d, K]`` (the unit spectra in dB re each unit's peak, DC bin dropped),
  ``t{i}_dominant_period{l}`` ``[d]`` and ``t{i}_trace_units`` ``[n, 2]`` (``layer, unit`` pairs);
- ``s2.json``: ``subject``, ``vocab``, ``generated`` (the name of the generated tune),
  ``tunes`` (per tune ``name``, ``tokens``, ``bar_length``, ``n_layers``, ``n_fft``,
  ``first_step``), ``parameters`` (the arguments of ``run_s2``) and ``seconds`` (timings).

:func:`read_s2` reads all of it into an :class:`S2Outputs`; it never loads a model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..io import atomic_path
from .folkrnn_units import Spectra, unit_traces

if TYPE_CHECKING:
    from .folkrnn_dynamics import S2Result

log = logging.getLogger(__name__)

OUTPUTS = {
    "units": "units.tsv",
    "interventions": "interventions.tsv",
    "copying": "copying.tsv",
    "summary": "summary.tsv",
    "intervention_summary": "intervention_summary.tsv",
    "bars": "bars.tsv",
    "arrays": "arrays.npz",
    "meta": "s2.json",
}
TABLES = ("units", "interventions", "copying", "summary", "intervention_summary", "bars")
# columns read back as text whatever they hold (tune names, unit lists, token text, modes)
TEXT_COLUMNS = ("tune", "mode", "units", "text", "examples", "examples_same_position", "dead_units",
                "saturated_units", "bar_periodic_units", "opens_with", "closes_with", "reason", "kind")


def output_paths(directory: str | Path) -> dict[str, Path]:
    """``{key: directory / name}`` for every file of :data:`OUTPUTS`."""
    return {key: Path(directory) / name for key, name in OUTPUTS.items()}


def write_tsv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` as a tab-separated file with a header, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False)
    log.info("wrote %s (%d rows)", path, len(df))
    return path


def read_tsv(path: str | Path) -> pd.DataFrame:
    """A table written by :func:`write_tsv`: empty cells are NaN in numeric columns and ``""`` in
    the text columns (:data:`TEXT_COLUMNS`); an empty file is an empty frame."""
    try:
        header = pd.read_csv(path, sep="\t", nrows=0).columns
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    text = [c for c in header if c in TEXT_COLUMNS]
    df = pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[""], dtype={c: str for c in text})
    for c in text:
        df[c] = df[c].fillna("")
    return df


def _arrays(result: S2Result) -> dict[str, np.ndarray]:
    arrays = {}
    for i, a in enumerate(result.analyses.values()):
        arrays[f"t{i}_log10p"] = a.log10p
        for layer in range(a.run.n_layers):
            arrays[f"t{i}_acts{layer}"] = a.run.acts(layer)
            arrays[f"t{i}_db{layer}"] = a.spectra[layer].db
            arrays[f"t{i}_dominant_period{layer}"] = a.spectra[layer].dominant_period
        arrays[f"t{i}_trace_units"] = np.array(a.trace_units, dtype=np.int64).reshape(-1, 2)
    return arrays


def _meta(result: S2Result) -> dict:
    tunes = [{"name": name, "tokens": a.tokens, "bar_length": a.bar_length, "n_layers": a.run.n_layers,
              "n_fft": a.spectra[0].n_fft if a.spectra else None,
              "first_step": a.spectra[0].first_step if a.spectra else 0}
             for name, a in result.analyses.items()]
    return {"subject": result.subject, "vocab": result.vocab, "generated": result.generated, "tunes": tunes,
            "parameters": result.parameters, "seconds": result.seconds}


def _json_scalar(value):
    return value.item() if isinstance(value, np.generic) else str(value)


def write_outputs(result: S2Result, paths: Mapping[str, str | Path]) -> dict[str, Path]:
    """Write every file of :data:`OUTPUTS` to ``paths[key]`` (e.g. :func:`output_paths` or a
    rule's ``snakemake.output``; keys that are absent are not written). Returns the paths written."""
    bars = pd.concat([a.bars.assign(tune=name)[["tune", *a.bars.columns]] for name, a in result.analyses.items()],
                     ignore_index=True)
    frames = {"units": result.units, "interventions": result.interventions, "copying": result.copying,
              "summary": result.summary, "intervention_summary": result.intervention_summary, "bars": bars}
    written = {}
    for key, df in frames.items():
        if key in paths:
            written[key] = write_tsv(df, paths[key])
    if "arrays" in paths:
        with atomic_path(paths["arrays"], suffix=".npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **_arrays(result))
        written["arrays"] = Path(paths["arrays"])
    if "meta" in paths:
        with atomic_path(paths["meta"], suffix=".json") as tmp:
            tmp.write_text(json.dumps(_meta(result), indent=1, default=_json_scalar) + "\n", encoding="utf-8")
        written["meta"] = Path(paths["meta"])
    log.info("S2 outputs of %s: %s", result.subject, ", ".join(str(p) for p in written.values()))
    return written


# --- reading back (the notebook) ---------------------------------------------------------------


@dataclass
class StoredTune:
    """One analysed tune as read back: what the notebook plots (cf. ``TuneAnalysis``).

    ``acts(layer)`` and ``emitted`` behave as on :class:`~.folkrnn_tunes.TuneRun`; ``units`` and
    ``bars`` are the tune's rows of ``units.tsv`` and ``bars.tsv``; ``spectra[layer]`` carries
    ``db`` and ``dominant_period`` (``magnitude`` is not stored and is None).
    """

    name: str
    tokens: list[str]
    bar_length: int | None
    log10p: np.ndarray
    layers: list[np.ndarray]
    spectra: dict[int, Spectra]
    trace_units: list[tuple[int, int]]
    units: pd.DataFrame
    bars: pd.DataFrame

    @property
    def emitted(self) -> list[str]:
        return self.tokens[1:]

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def acts(self, layer: int) -> np.ndarray:
        """Layer ``layer``'s outputs ``[T, d]`` (negative counts from the last layer)."""
        return self.layers[layer % self.n_layers]

    @property
    def traces(self) -> pd.DataFrame:
        """:func:`.folkrnn_units.unit_traces` of the traced units."""
        return unit_traces(self, self.trace_units)


@dataclass
class S2Outputs:
    """Everything rule ``s2_folkrnn`` wrote for one subject (see :func:`read_s2`)."""

    subject: str
    vocab: list[str]
    generated: str
    tunes: dict[str, StoredTune]
    units: pd.DataFrame
    interventions: pd.DataFrame
    intervention_summary: pd.DataFrame
    copying: pd.DataFrame
    summary: pd.DataFrame
    bars: pd.DataFrame
    parameters: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


def read_s2(directory: str | Path | None = None, paths: Mapping[str, str | Path] | None = None) -> S2Outputs:
    """Read the files of :func:`write_outputs` from ``directory`` (or from ``paths[key]``)."""
    if paths is None:
        if directory is None:
            raise ValueError("read_s2 needs a directory or paths")
        paths = output_paths(directory)
    tables = {key: read_tsv(paths[key]) for key in TABLES}
    meta = json.loads(Path(paths["meta"]).read_text(encoding="utf-8"))
    tunes = {}
    with np.load(paths["arrays"]) as z:
        for i, t in enumerate(meta["tunes"]):
            n_layers, n_fft = t["n_layers"], t["n_fft"]
            spectra = {}
            for layer in range(n_layers):
                bins = np.arange(1, n_fft // 2 + 1)
                spectra[layer] = Spectra(n_fft=n_fft, bins=bins, periods=n_fft / bins, magnitude=None,
                                         db=z[f"t{i}_db{layer}"], dominant_period=z[f"t{i}_dominant_period{layer}"],
                                         first_step=t["first_step"])
            name = t["name"]
            units, bars = tables["units"], tables["bars"]
            tunes[name] = StoredTune(
                name=name, tokens=list(t["tokens"]), bar_length=t["bar_length"], log10p=z[f"t{i}_log10p"],
                layers=[z[f"t{i}_acts{layer}"] for layer in range(n_layers)], spectra=spectra,
                trace_units=[(int(a), int(b)) for a, b in z[f"t{i}_trace_units"]],
                units=units[units["tune"] == name].reset_index(drop=True) if len(units) else units,
                bars=bars[bars["tune"] == name].drop(columns="tune").reset_index(drop=True) if len(bars) else bars)
    return S2Outputs(subject=meta["subject"], vocab=list(meta["vocab"]), generated=meta["generated"], tunes=tunes,
                     parameters=meta.get("parameters", {}), seconds=meta.get("seconds", {}), **tables)
