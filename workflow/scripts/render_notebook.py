"""Snakemake adapter: render an executed notebook to HTML without code cells."""

from musinterp.logs import setup_logging
from musinterp.notebooks import render_html

setup_logging(snakemake.log[0])
render_html(snakemake.input[0], snakemake.output[0])
