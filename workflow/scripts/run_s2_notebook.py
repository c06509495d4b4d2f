"""Snakemake adapter: execute the S2 (folk-rnn dynamics) notebook for one subject."""

from pathlib import Path

from musinterp.logs import setup_logging
from musinterp.notebooks import execute_notebook

setup_logging(snakemake.log[0])
parameters = {
    "subject": snakemake.wildcards.subject,
    "model_dir": str(Path(snakemake.input.model).parent),
    "corpus_dir": str(Path(snakemake.input.tokens).parent),
    "tables_dir": str(Path(snakemake.output.units).parent),
    **snakemake.params.s2,
}
execute_notebook(snakemake.input.notebook, snakemake.output.notebook, parameters)
