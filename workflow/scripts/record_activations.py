"""Snakemake adapter: record every requested site of one subject in one pass of its model."""

from pathlib import Path

import torch

from musinterp.logs import setup_logging
from musinterp.recording import record_activations

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
record_activations(
    Path(snakemake.input.model).parent,
    Path(snakemake.input.tokens).parent,
    Path(snakemake.output[0]).parent,
    subject=snakemake.params.subject,
    sites=list(snakemake.params.sites),
    max_tunes=dict(snakemake.params.max_tunes),
    seed=snakemake.params.seed,
    batch_size=snakemake.params.batch_size,
    compression=snakemake.params.compression,
)
