"""Snakemake adapter: feature table and dashboard for one SAE."""

from pathlib import Path

from musinterp.features import build_features
from musinterp.logs import setup_logging

setup_logging(snakemake.log[0])
build_features(
    snakemake.input.acts,
    snakemake.params.sae_dir,
    snakemake.output.table,
    dashboard_dir=Path(snakemake.output.dashboard).parent,
    top_k=snakemake.params.top_k,
    context=snakemake.params.context,
)
