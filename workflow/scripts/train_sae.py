"""Snakemake adapter: train one SAE on one activation site, then splice it into the model."""

from pathlib import Path

import torch

from musinterp.logs import setup_logging
from musinterp.sae.trainer import train_sae
from musinterp.splice import add_loss_recovered

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
spec = dict(snakemake.params.spec)
# Everything in the spec except what names and places it is a training setting.
options = {key: value for key, value in spec.items() if key not in ("name", "sites", "arch")}
sae_dir = Path(snakemake.output.cfg).parent
site = snakemake.params.site
train_sae(snakemake.input.acts, sae_dir, arch=spec["arch"], site=site, **{"seed": snakemake.params.seed, **options})
add_loss_recovered(sae_dir, Path(snakemake.input.model).parent, snakemake.input.acts, site=site,
                   corpus_dir=Path(snakemake.input.tokens).parent)
