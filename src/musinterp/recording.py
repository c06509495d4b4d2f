"""Record a model's activations over corpus pieces: one pass of the model writes every requested
site of a subject to ``{out_dir}/{site}.h5`` (the contract in :mod:`musinterp.activations`).

Nothing here knows a family or a token format: pieces become a :class:`Batch` through
``model.make_batch``, sites come from ``model.record``, and the musical columns of token-level
files come from the corpus's token format (:mod:`musinterp.corpus.formats`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import PRODUCER
from .activations import SPLITS, SiteWriter

log = logging.getLogger(__name__)


def choose_pieces(corpus, max_pieces: dict[str, int] | None, seed: int) -> tuple[list[tuple[int, int]], dict]:
    """``[(piece, split code)]`` in file order and the ``split`` attribute: every piece of each
    split, or a seeded random subset of ``max_pieces[split]``, kept in corpus order."""
    rng = np.random.default_rng(seed)
    chosen, split_json = [], {}
    for code, split in enumerate(SPLITS):
        idx = corpus.indices(split)
        cap = (max_pieces or {}).get(split)
        if cap is not None and len(idx) > cap:
            idx = np.sort(rng.choice(idx, cap, replace=False))
        chosen += [(int(i), code) for i in idx]
        split_json[split] = [int(i) for i in idx]
    return chosen, split_json


def _token_schema(vocab, fmt, with_targets: bool, corpus_columns=()) -> tuple[dict, dict]:
    columns = {"piece": np.int32, "position": np.int32, "token": np.int32}
    if vocab.multi_field:
        columns.update({f"token_{name}": np.int32 for name in vocab.fields})
    if with_targets and not vocab.multi_field:
        columns["next_token"] = np.int32
    columns["split"] = np.uint8
    columns.update(fmt.columns)
    columns.update({name: np.int32 for name in corpus_columns})
    return columns, {"split": list(SPLITS), **fmt.categories}


def _token_rows(batch, row: int, piece: int, split_code: int, vocab, fmt, corpus) -> dict[str, np.ndarray]:
    n = int(batch.lengths[row])
    ids = batch.inputs[row, :n].numpy()
    values = {"piece": np.full(n, piece), "position": np.arange(n)}
    if vocab.multi_field:
        values["token"] = ids[:, 0]
        values.update({f"token_{name}": ids[:, f] for f, name in enumerate(vocab.fields)})
    else:
        values["token"] = ids
        if batch.targets is not None:
            values["next_token"] = batch.targets[row, :n].numpy()
    values["split"] = np.full(n, split_code)
    values.update(fmt.annotate(vocab.decode(ids)))
    if corpus.token_columns:
        if batch.source is None:
            raise ValueError(f"corpus {corpus.name!r} has per-token columns {sorted(corpus.token_columns)}, but this "
                             "family's batches do not say which piece token each input position reads (Batch.source)")
        source = batch.source[row, :n].numpy()
        for name, per_piece in corpus.token_columns.items():
            values[name] = np.where(source >= 0, per_piece[piece][source.clip(min=0)], -1)
    return values


def record_activations(
    model_dir: str | Path,
    corpus_dir: str | Path,
    out_dir: str | Path,
    subject: str,
    sites: list[str] | None = None,
    max_tunes: dict[str, int] | None = None,
    seed: int = 0,
    batch_size: int = 32,
    compression: str = "none",
) -> dict:
    """Run a model over corpus pieces once and write ``{out_dir}/{site}.h5`` for every site.

    ``max_tunes`` caps the pieces taken from each split (a seeded random subset); a piece with a
    token the model does not know is skipped and counted. Pieces run ``batch_size`` at a time
    (right-padded; padding rows are never written). ``compression`` of ``/acts``: ``none``,
    ``gzip`` or ``lzf`` (see :data:`musinterp.activations.COMPRESSION`).
    """
    from .corpus.formats import get_format
    from .corpus.store import load_corpus
    from .models import load
    from .models.interface import check_sites
    from .registry import get_family

    t0 = time.time()
    model, meta = load(model_dir)
    corpus = load_corpus(corpus_dir)
    family = get_family(model.family)
    if corpus.format not in family.formats:
        raise ValueError(f"{corpus_dir}: token format {corpus.format!r} is not one {model.family} reads "
                         f"({list(family.formats)})")
    fmt = get_format(corpus.format)
    vocab = fmt.vocab(meta["vocab"])
    wanted = check_sites(model, sites)
    chosen, split_json = choose_pieces(corpus, max_tunes, seed)

    out_dir = Path(out_dir)
    writers: dict[str, SiteWriter] = {}
    skipped, n_rows = 0, 0
    batches = [chosen[i : i + batch_size] for i in range(0, len(chosen), batch_size)]
    try:
        for batch in tqdm(batches, desc=f"{subject} activations", unit="batch", mininterval=10):
            pieces = [corpus.token_vocab.decode(corpus.tunes[p]) for p, _ in batch]
            known = [not vocab.unknown(tokens) for tokens in pieces]
            skipped += known.count(False)
            batch = [b for b, ok in zip(batch, known) if ok]
            if not batch:
                continue
            encoded = [vocab.encode(tokens) for tokens, ok in zip(pieces, known) if ok]
            model_batch = model.make_batch(encoded, vocab)
            states = model.record(model_batch, [s.name for s in wanted])
            lengths = [int(n) for n in model_batch.lengths]
            token_cols = None
            for site in wanted:
                if site.granularity == "token":
                    if token_cols is None:
                        parts = [_token_rows(model_batch, row, piece, code, vocab, fmt, corpus)
                                 for row, (piece, code) in enumerate(batch)]
                        token_cols = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
                    # the valid rows, piece after piece in position order (row-major boolean indexing)
                    acts = states[site.name][model_batch.mask].numpy()
                    cols = token_cols
                    schema = _token_schema(vocab, fmt, model_batch.targets is not None, corpus.token_columns)
                else:
                    acts = states[site.name].numpy()
                    cols = {"piece": np.array([p for p, _ in batch]), "split": np.array([c for _, c in batch]),
                            "n_tokens": np.array(lengths)}
                    schema = ({"piece": np.int32, "split": np.uint8, "n_tokens": np.int32}, {"split": list(SPLITS)})
                if site.name not in writers:
                    attrs = {"subject": subject, "site": site.name, "d": acts.shape[1], "family": model.family,
                             "granularity": site.granularity, "format": corpus.format,
                             "vocab": json.dumps(vocab.to_json()), "split": json.dumps(split_json),
                             "producer": PRODUCER, "model_dir": str(model_dir), "corpus_dir": str(corpus_dir)}
                    writers[site.name] = SiteWriter(out_dir / f"{site.name}.h5", acts.shape[1], *schema, attrs,
                                                    granularity=site.granularity, compression=compression)
                columns = writers[site.name].columns
                writers[site.name].append(acts, {k: np.asarray(cols[k], dtype=columns[k]) for k in columns})
            n_rows += sum(lengths)
    except BaseException:
        for w in writers.values():
            w.close(ok=False)
        raise
    if not writers:
        raise ValueError(f"{corpus_dir}: no piece could be run through {model_dir} (all {skipped} skipped)")
    for w in writers.values():
        w.f.attrs["n_skipped_tunes"] = skipped
        w.close()
    seconds = time.time() - t0
    log.info("%s: %d pieces, %d tokens, %d skipped, %d sites in one pass, %.1f s",
             subject, len(chosen) - skipped, n_rows, skipped, len(wanted), seconds)
    return {"tunes": len(chosen) - skipped, "tokens": n_rows, "skipped": skipped,
            "sites": {name: w.d for name, w in writers.items()}, "seconds": seconds}
