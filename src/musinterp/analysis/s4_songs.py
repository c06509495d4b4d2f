"""S4 on songs: next-chord accuracy inside repeated loops, on returning sections, and across
transpositions, from the per-token columns a chord corpus carries (``musinterp.corpus.pop_songs``:
``period``, ``loop_position``, ``loop_repeat``, ``ambiguous``, ``section_occurrence``, …).

Every prediction is the model's argmax for the next chord of a held-out song (teacher forced, the
song cut to the model's context); the ``</s>`` target is not scored. Tables (columns):

- ``predictions`` (the raw material, one row per scored token): ``piece``, ``index`` (the token's
  index in the song), ``correct`` (0/1), and the corpus's columns at that token;
- ``loops``: ``period``, ``loop_repeat`` (0 = the first pass of the loop in its section occurrence,
  3 = the fourth or later), ``ambiguous``, ``n``, ``n_correct``, ``accuracy``;
- ``sections``: ``section_occurrence`` (0 = the label's first appearance in the song, 1 = its
  first return, 2+ later), ``n``, ``n_correct``, ``accuracy`` — over the first pass of each section's
  loop (``loop_repeat == 0``), which nothing inside the section predicts: only an earlier
  occurrence of the section does;
  For a corpus with sections but no loops (RS200) the table is over every chord of a named
  section instead (:func:`section_returns_table`);
- ``transposition``: ``shift`` (semitones every chord root was moved), ``songs``, ``skipped`` (songs
  with a chord the model's vocabulary lacks), ``accuracy_repeats`` (accuracy on loop passes after
  the first), ``accuracy_first_pass``, ``induction_max`` (the best head's induction score on the songs).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..corpus.formats.chords import ROOT_NAMES, parse_chord
from .induction import accuracy_by, induction_scores
from .s4_circuits import patterns

MAX_REPEAT = 3  # loop passes from the fourth on are pooled


def song_predictions(model, vocab, songs: list[np.ndarray], columns: dict[str, list[np.ndarray]],
                     piece_ids=None, batch_size: int = 32) -> pd.DataFrame:
    """One row per scored token of ``songs`` (ids in ``vocab``): is the model's argmax right?"""
    piece_ids = list(range(len(songs))) if piece_ids is None else list(piece_ids)
    frames = []
    for start in range(0, len(songs), batch_size):
        chunk = songs[start : start + batch_size]
        batch = model.make_batch(chunk, vocab)
        with torch.no_grad():
            correct = (model(batch.inputs).argmax(-1) == batch.targets).numpy()
        for row, song in enumerate(chunk):
            # input t predicts the song's token t (t < len: chords; t = len: </s>, not scored)
            n = min(len(song), int(batch.lengths[row]))
            k = start + row
            frame = {"piece": np.full(n, piece_ids[k]), "index": np.arange(n), "correct": correct[row, :n].astype(int)}
            frame.update({name: np.asarray(values[k][:n]) for name, values in columns.items()})
            frames.append(pd.DataFrame(frame))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def loops_table(pred: pd.DataFrame) -> pd.DataFrame:
    """Accuracy by period × loop pass × ambiguity, over tokens inside loops (``period > 0``)."""
    inside = pred[pred["period"] > 0].assign(loop_repeat=lambda d: d["loop_repeat"].clip(upper=MAX_REPEAT))
    return accuracy_by(inside["correct"].to_numpy(), inside, ["period", "loop_repeat", "ambiguous"])


def sections_table(pred: pd.DataFrame) -> pd.DataFrame:
    """Accuracy on the first pass of each section's loop, by the section's occurrence in the song."""
    first = pred[(pred["period"] > 0) & (pred["loop_repeat"] == 0) & (pred["index"] > 0)]
    first = first.assign(section_occurrence=first["section_occurrence"].clip(upper=2))
    return accuracy_by(first["correct"].to_numpy(), first, ["section_occurrence"])


def section_returns_table(pred: pd.DataFrame) -> pd.DataFrame:
    """For corpora with sections but no loop annotation (RS200): accuracy over every chord of a
    section, by the section's occurrence in the song (unnamed passages, occurrence −1, left out)."""
    named = pred[(pred["section_occurrence"] >= 0) & (pred["index"] > 0)]
    named = named.assign(section_occurrence=named["section_occurrence"].clip(upper=2))
    return accuracy_by(named["correct"].to_numpy(), named, ["section_occurrence"])


def transpose_tokens(tokens: list[str], shift: int) -> list[str]:
    """Every chord's root moved by ``shift`` semitones (specials unchanged)."""
    out = []
    for tok in tokens:
        if tok.startswith("<"):
            out.append(tok)
            continue
        root, quality = parse_chord(tok)
        out.append(f"{ROOT_NAMES[(root + shift) % 12]}:{quality}")
    return out


def transposition_table(model, vocab, corpus, pieces, shifts) -> pd.DataFrame:
    rows = []
    for shift in shifts:
        songs, keep = [], []
        for p in pieces:
            tokens = transpose_tokens(corpus.token_vocab.decode(corpus.tunes[p]), shift)
            if vocab.unknown(tokens):
                continue
            songs.append(vocab.encode(tokens))
            keep.append(p)
        row = {"shift": shift, "songs": len(songs), "skipped": len(pieces) - len(songs),
               "accuracy_repeats": np.nan, "accuracy_first_pass": np.nan, "induction_max": np.nan}
        if songs:
            cols = {name: [corpus.token_columns[name][p] for p in keep] for name in ("period", "loop_repeat")}
            pred = song_predictions(model, vocab, songs, cols, keep)
            inside = pred[pred["period"] > 0]
            row["accuracy_repeats"] = float(inside.loc[inside["loop_repeat"] > 0, "correct"].mean())
            row["accuracy_first_pass"] = float(inside.loc[inside["loop_repeat"] == 0, "correct"].mean())
            row["induction_max"] = float(np.nanmax(_song_induction(model, vocab, songs[:16])))
        rows.append(row)
    return pd.DataFrame(rows)


def _song_induction(model, vocab, songs) -> np.ndarray:
    """Per head induction score on songs, ``[layer, head]`` (mean over songs)."""
    scores = []
    for song in songs:
        ids = torch.tensor([[vocab.index("<s>"), *song[: model.config.n_ctx - 1].tolist()]])
        scores.append(induction_scores(patterns(model, ids), ids))
    return np.nanmean(np.stack(scores), axis=0)
