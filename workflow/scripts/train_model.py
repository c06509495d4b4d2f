"""Snakemake adapter: train a reference model on its subject's corpus."""

from pathlib import Path

import torch

from musinterp.logs import setup_logging
from musinterp.models import train_model

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
sampling = dict(snakemake.params.sampling)
train_model(
    snakemake.params.family,
    Path(snakemake.input.tokens).parent,
    Path(snakemake.output.model).parent,
    dict(snakemake.params.model),
    dict(snakemake.params.train),
    n_samples=sampling["n_samples"],
    temperature=sampling["temperature"],
)
