"""Snakemake adapter: execute the S2 (folk-rnn dynamics) notebook on the files of rule s2_folkrnn."""

from pathlib import Path

from musinterp.logs import setup_logging
from musinterp.notebooks import execute_notebook

setup_logging(snakemake.log[0])
parameters = {"subject": snakemake.wildcards.subject, "s2_dir": str(Path(snakemake.input.meta).parent)}
execute_notebook(snakemake.input.notebook, snakemake.output.notebook, parameters)
