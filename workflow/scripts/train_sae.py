"""Snakemake adapter: train one SAE on one activation site, then splice it into the model."""

from pathlib import Path

import torch

from musinterp.logs import setup_logging
from musinterp.sae.trainer import train_sae
from musinterp.splice import add_loss_recovered

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
spec = dict(snakemake.params.spec)
options = {k: spec[k] for k in ("width", "l1_coeff", "lr", "batch_size", "epochs", "max_tokens") if k in spec}
sae_dir = Path(snakemake.output.cfg).parent
train_sae(
    snakemake.input.acts,
    sae_dir,
    arch=spec["arch"],
    seed=snakemake.params.seed,
    **options,
)
add_loss_recovered(sae_dir, Path(snakemake.input.model).parent, snakemake.input.acts)
