"""Snakemake adapter: execute the S4 notebook on the tables of every S4 model."""

from pathlib import Path

from musinterp.logs import setup_logging
from musinterp.notebooks import execute_notebook

setup_logging(snakemake.log[0])
s4_dirs = [str(Path(meta).parent) for meta in snakemake.input.meta]
parameters = {"s4_dirs": s4_dirs, "units": list(snakemake.input.units), "universality": list(snakemake.input.universality)}
execute_notebook(snakemake.input.notebook, snakemake.output.notebook, parameters)
