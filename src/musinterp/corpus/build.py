"""Build a corpus directory from the source a config names: music21's corpus, a download, a file.

``spec`` is the corpus entry of config.yaml:

- ``{source: music21, collections: [oneills1850, ...], max_tunes_per_collection: null}``
- ``{source: download, url: ..., git_blob: ... | sha256: ..., format: folkrnn, filename: optional}``
- ``{source: local, path: ..., format: folkrnn}``
- ``{source: popgen, popgen: {n_songs: 2000, periods: [4, 8], ...}}`` (generated pop songs; see
  :class:`musinterp.corpus.pop_songs.PopGenConfig`)
- ``{source: rs200, rs200: {annotator: dt, base_url: ..., layout: repo, ...}}`` (the RS200 rock corpus
  of de Clercq & Temperley, files fetched by URL and git blob id; see :mod:`musinterp.corpus.rs200`)
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

from tqdm.auto import tqdm

from musinterp.corpus.folkrnn_text import read_folkrnn_text
from musinterp.corpus.store import TuneRecord, write_corpus
from musinterp.io import fetch

log = logging.getLogger(__name__)

SOURCES = ("music21", "download", "local", "popgen", "rs200")
DEFAULT_DOWNLOAD_DIR = Path("resources/downloads")


def _music21_records(name: str, spec: dict) -> list[TuneRecord]:
    from musinterp.corpus.music21_abc import collection_files, convert_collection

    collections = spec.get("collections")
    if not collections or not isinstance(collections, (list, tuple)):
        raise ValueError(f"corpus {name!r}: source music21 needs a list 'collections'")
    max_tunes = spec.get("max_tunes_per_collection")
    records: list[TuneRecord] = []
    for collection in collections:
        files = collection_files(collection)
        n_ok = 0
        with tqdm(total=len(files), desc=f"{name}: {collection}", unit="file") as bar:
            for record in convert_collection(collection, max_tunes, progress=lambda _: bar.update()):
                records.append(record)
                n_ok += record.status == "ok"
                bar.set_postfix(ok=n_ok, refresh=False)
    return records


def _folkrnn_file_records(name: str, spec: dict, path: Path, source: str) -> list[TuneRecord]:
    fmt = spec.get("format", "folkrnn")
    if fmt != "folkrnn":
        raise ValueError(f"corpus {name!r}: unsupported format {fmt!r} (expected 'folkrnn')")
    return read_folkrnn_text(path, id_prefix=path.name, source=source, progress=f"{name}: {path.name}")


def _download_records(name: str, spec: dict, download_dir: str | os.PathLike | None) -> list[TuneRecord]:
    url = spec.get("url")
    if not url:
        raise ValueError(f"corpus {name!r}: source download needs 'url'")
    if spec.get("git_blob"):
        expected, kind = spec["git_blob"], "git_blob"
    elif spec.get("sha256"):
        expected, kind = spec["sha256"], "sha256"
    else:
        raise ValueError(f"corpus {name!r}: source download needs 'git_blob' or 'sha256' to verify {url}")
    filename = spec.get("filename") or Path(urlparse(url).path).name
    if not filename:
        raise ValueError(f"corpus {name!r}: cannot tell a file name from {url}; set 'filename'")
    dest = Path(download_dir or DEFAULT_DOWNLOAD_DIR) / filename
    fetch(url, dest, expected, kind)
    return _folkrnn_file_records(name, spec, dest, source=url)


def _local_records(name: str, spec: dict) -> list[TuneRecord]:
    if not spec.get("path"):
        raise ValueError(f"corpus {name!r}: source local needs 'path'")
    path = Path(spec["path"])
    if not path.is_file():
        raise FileNotFoundError(f"corpus {name!r}: {path} does not exist")
    return _folkrnn_file_records(name, spec, path, source=str(path))


def _popgen_corpus(name: str, spec: dict, out_dir, seed: int, heldout_fraction: float) -> dict:
    """Source popgen: generated pop songs (musinterp.corpus.pop_songs), with per-token columns
    (/columns/<name>) and songs.json beside the corpus files."""
    from musinterp.corpus.pop_songs import build_popgen

    return build_popgen(name, spec.get("popgen"), out_dir, seed=seed, heldout_fraction=heldout_fraction)


def _rs200_corpus(name: str, spec: dict, out_dir, seed: int, heldout_fraction: float, download_dir) -> dict:
    """Source rs200: the RS200 harmony analyses (musinterp.corpus.rs200), with per-token section,
    key and degree columns (/columns/<name>) and songs.json beside the corpus files."""
    from musinterp.corpus.rs200 import build_rs200

    return build_rs200(name, spec.get("rs200"), out_dir, seed=seed, heldout_fraction=heldout_fraction,
                       download_dir=download_dir or DEFAULT_DOWNLOAD_DIR)


def build_corpus(
    name: str,
    spec: dict,
    out_dir: str | os.PathLike,
    seed: int = 0,
    heldout_fraction: float = 0.1,
    download_dir: str | os.PathLike | None = None,
) -> dict:
    """Convert the source, write ``out_dir/{tokens.h5,vocab.json,manifest.tsv}``, return counts."""
    started = time.perf_counter()
    source = spec.get("source")
    if source == "music21":
        records = _music21_records(name, spec)
    elif source == "download":
        records = _download_records(name, spec, download_dir)
    elif source == "local":
        records = _local_records(name, spec)
    elif source == "popgen":
        return _popgen_corpus(name, spec, out_dir, seed, heldout_fraction)
    elif source == "rs200":
        return _rs200_corpus(name, spec, out_dir, seed, heldout_fraction, download_dir)
    else:
        raise ValueError(f"corpus {name!r}: unknown source {source!r} (expected one of {', '.join(SOURCES)})")

    ok = [r for r in records if r.status == "ok"]
    skip_reasons = Counter(r.reason for r in records if r.status != "ok")
    log.info("corpus %s: %d items, %d ok, %d skipped", name, len(records), len(ok), len(records) - len(ok))
    for reason, count in skip_reasons.most_common(10):
        log.info("corpus %s: skipped %d x %s", name, count, reason)

    corpus = write_corpus(
        out_dir, name,
        tune_token_lists=[r.tokens for r in ok],
        tune_ids=[r.id for r in ok],
        manifest_rows=[r.manifest_row() for r in records],
        seed=seed, heldout_fraction=heldout_fraction,
    )
    seconds = time.perf_counter() - started
    counts = {
        "corpus": name,
        "source": source,
        "n_items": len(records),
        "n_ok": len(ok),
        "n_skipped": len(records) - len(ok),
        "n_tokens": corpus.n_tokens,
        "vocab_size": len(corpus.vocab),
        "n_train": int(len(corpus.indices("train"))),
        "n_heldout": int(len(corpus.indices("heldout"))),
        "skip_reasons": dict(skip_reasons.most_common()),
        "seconds": round(seconds, 2),
    }
    log.info("corpus %s built in %.1f s: %d tunes, %d tokens, vocab %d",
             name, seconds, counts["n_ok"], counts["n_tokens"], counts["vocab_size"])
    return counts
