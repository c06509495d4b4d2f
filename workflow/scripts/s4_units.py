"""Snakemake adapter: S4 item 10, neurons and SAE latents against chord attributes."""

from pathlib import Path

from musinterp.analysis.s4_units import polysemanticity_summary, unit_attribute_table
from musinterp.io import atomic_path
from musinterp.logs import setup_logging

setup_logging(snakemake.log[0])
table = unit_attribute_table(snakemake.input.acts, Path(snakemake.input.cfg).parent)
summary = polysemanticity_summary(table).assign(subject=snakemake.wildcards.subject, site=snakemake.wildcards.site,
                                                sae=snakemake.wildcards.sae)
for frame, path in ((table, snakemake.output.table), (summary, snakemake.output.summary)):
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False)
