"""Snakemake adapter: run study S2 (folk-rnn dynamics) for one subject and write its tables and arrays."""

from pathlib import Path

import torch

from musinterp.analysis.folkrnn_dynamics import run_s2
from musinterp.analysis.folkrnn_outputs import write_outputs
from musinterp.logs import setup_logging

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
result = run_s2(
    Path(snakemake.input.model).parent,
    Path(snakemake.input.tokens).parent,
    subject=snakemake.wildcards.subject,
    **snakemake.params.s2,
)
write_outputs(result, dict(snakemake.output.items()))
