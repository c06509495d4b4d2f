"""Snakemake adapter: record one site's activations over corpus tunes."""

from pathlib import Path

import torch

from musinterp.activations import record_activations
from musinterp.logs import setup_logging

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
record_activations(
    Path(snakemake.input.model).parent,
    snakemake.params.corpus,
    Path(snakemake.output[0]).parent,
    subject=snakemake.wildcards.subject,
    sites=[snakemake.wildcards.site],
    max_tunes=dict(snakemake.params.max_tunes),
    seed=snakemake.params.seed,
)
