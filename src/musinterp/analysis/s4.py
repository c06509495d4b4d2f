"""Study S4 for one chordlm model: every table of :mod:`.s4_circuits` and :mod:`.s4_songs`, written
to a directory the S4 notebook reads (it loads no model).

``run_s4(model_dir, corpus_dir, out_dir, ...)`` writes ``copies.tsv``, ``heads.tsv``,
``composition.tsv``, ``ablation.tsv``, ``dynamics.tsv``, ``loops.tsv``, ``sections.tsv``,
``transposition.tsv`` (columns in those modules' docstrings), ``curves.npz`` (mean loss per position
of the repeated random sequences, per length) and ``model.json`` (the model's config and training
seed, so the notebook can group models by layers, MLPs and seed).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ..io import atomic_path, write_json
from .s4_circuits import ablation_table, composition_table, copies_table, dynamics_table, heads_table
from .s4_songs import (
    loops_table,
    section_returns_table,
    sections_table,
    song_predictions,
    transposition_table,
)

log = logging.getLogger(__name__)

TABLES = ("copies", "heads", "composition", "ablation", "dynamics", "loops", "sections", "transposition")


def run_s4(model_dir: str | Path, corpus_dir: str | Path, out_dir: str | Path, *, lengths=(11, 8, 16),
           n_sequences: int = 64, seed: int = 0, max_songs: int = 200, shifts=(0, 2, 5, 7),
           n_random: int = 100) -> dict:
    """Run S4 on one model; ``lengths`` of the repeated random sequences (the first is used for the
    head scores, ablations and dynamics), ``n_sequences`` of them, ``max_songs`` held-out songs,
    ``shifts`` (semitones) for transposition, ``n_random`` random matrices for the composition
    baseline. Returns the tables as DataFrames."""
    from ..corpus.formats import get_format
    from ..corpus.store import load_corpus
    from ..models import load

    t0 = time.time()
    model, meta = load(model_dir)
    if model.family != "chordlm":
        raise ValueError(f"{model_dir}: S4 needs a chordlm model, got {model.family!r}")
    corpus = load_corpus(corpus_dir)
    vocab = get_format(corpus.format).vocab(meta["vocab"])
    rng = np.random.default_rng(seed)
    held = corpus.indices("heldout")
    if len(held) > max_songs:
        held = np.sort(rng.choice(held, max_songs, replace=False))
    known = [int(p) for p in held if not vocab.unknown(corpus.token_vocab.decode(corpus.tunes[p]))]
    songs = [vocab.encode(corpus.token_vocab.decode(corpus.tunes[p])) for p in known]
    length = int(lengths[0])

    tables, seconds = {}, {}

    def timed(name, fn):
        t = time.time()
        out = fn()
        seconds[name] = round(time.time() - t, 2)
        return out

    tables["copies"], curves = timed("copies", lambda: copies_table(model, vocab, lengths, n_sequences, seed))
    tables["heads"] = timed("heads", lambda: heads_table(model, vocab, songs[:32], length, n_sequences, seed))
    tables["composition"] = timed("composition", lambda: composition_table(model, n_random, seed))
    tables["ablation"] = timed("ablation", lambda: ablation_table(model, vocab, tables["heads"], length,
                                                                 n_sequences, seed))
    tables["dynamics"] = timed("dynamics", lambda: dynamics_table(model, vocab, Path(model_dir) / "snapshots",
                                                                 length, n_sequences, seed))
    for name in ("loops", "sections", "transposition"):
        tables[name] = None
    columns = {name: [corpus.token_columns[name][p] for p in known] for name in corpus.token_columns}
    has_loops = all(c in columns for c in ("period", "loop_repeat", "ambiguous", "section_occurrence"))
    if has_loops or "section_occurrence" in columns:
        pred = timed("predictions", lambda: song_predictions(model, vocab, songs, columns, known))
    if has_loops:  # generated songs
        tables["loops"] = loops_table(pred)
        tables["sections"] = sections_table(pred)
        tables["transposition"] = timed("transposition",
                                        lambda: transposition_table(model, vocab, corpus, known, shifts))
    elif "section_occurrence" in columns:  # real songs with sections (RS200): in-context learning
        tables["sections"] = section_returns_table(pred)
        log.info("%s has sections but no loops: loops and transposition left empty", corpus_dir)
    else:
        log.warning("%s has no loop or section columns: loops, sections, transposition left empty", corpus_dir)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        df = tables[name]
        with atomic_path(out_dir / f"{name}.tsv") as tmp:
            (df if df is not None else _empty()).to_csv(tmp, sep="\t", index=False)
    with atomic_path(out_dir / "curves.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **curves)  # a file object: np.savez would append ".npz" to a temporary name
    config = dict(model.config.to_dict())
    write_json(out_dir / "model.json", {
        "model_dir": str(model_dir), "corpus_dir": str(corpus_dir), "config": config,
        "attn_only": config.get("d_mlp", 0) == 0, "seed": meta.get("train_config", {}).get("seed"),
        "best_valid_loss": meta.get("best_valid_loss"), "n_songs": len(songs),
        "n_songs_skipped": int(len(held) - len(songs)), "seconds": seconds,
        "parameters": {"lengths": list(lengths), "n_sequences": n_sequences, "seed": seed, "max_songs": max_songs,
                       "shifts": list(shifts), "n_random": n_random}})
    log.info("S4 on %s: %d layers, %d held-out songs, %.1f s (%s)", model_dir, config["n_layers"], len(songs),
             time.time() - t0, ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    return tables


def _empty():
    import pandas as pd

    return pd.DataFrame()
