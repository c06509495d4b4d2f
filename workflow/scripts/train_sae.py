"""Snakemake adapter: train one SAE on one activation site."""

from pathlib import Path

import torch

from musinterp.logs import setup_logging
from musinterp.sae.trainer import train_sae

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
spec = dict(snakemake.params.spec)
options = {k: spec[k] for k in ("width", "l1_coeff", "lr", "batch_size", "epochs", "max_tokens") if k in spec}
train_sae(
    snakemake.input[0],
    Path(snakemake.output.cfg).parent,
    arch=spec["arch"],
    seed=snakemake.params.seed,
    **options,
)
