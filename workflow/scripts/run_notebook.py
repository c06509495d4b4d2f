"""Snakemake adapter: execute a jupytext notebook with papermill, every input as a parameter."""

from musinterp.logs import setup_logging
from musinterp.notebooks import execute_notebook

setup_logging(snakemake.log[0])
parameters = {
    key: (list(value) if not isinstance(value, str) else value)
    for key, value in snakemake.input.items()
    if key != "notebook"
}
parameters["subject"] = snakemake.wildcards.subject
execute_notebook(snakemake.input.notebook, snakemake.output[0], parameters)
