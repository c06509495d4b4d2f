"""Snakemake adapter: build one corpus (tokens.h5, vocab.json, manifest.tsv)."""

from pathlib import Path

from musinterp.corpus.build import build_corpus
from musinterp.logs import setup_logging

setup_logging(snakemake.log[0])
build_corpus(
    snakemake.wildcards.corpus,
    dict(snakemake.params.spec),
    Path(snakemake.output.tokens).parent,
    seed=snakemake.params.seed,
    heldout_fraction=snakemake.params.heldout_fraction,
    download_dir=snakemake.params.download_dir,
)
