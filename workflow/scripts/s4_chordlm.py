"""Snakemake adapter: study S4 on one chordlm model; tables for the S4 notebook."""

from pathlib import Path

import torch

from musinterp.analysis.s4 import run_s4
from musinterp.logs import setup_logging

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
run_s4(Path(snakemake.input.model).parent, Path(snakemake.input.tokens).parent, Path(snakemake.output.meta).parent,
       **dict(snakemake.params.s4))
