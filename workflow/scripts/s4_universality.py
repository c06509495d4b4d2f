"""Snakemake adapter: S4 item 11, SAE latents of two seeds matched by activation correlation."""

from pathlib import Path

from musinterp.analysis.s4_units import match_latents
from musinterp.io import atomic_path, write_json
from musinterp.logs import setup_logging

setup_logging(snakemake.log[0])
i = snakemake.input
table, summary = match_latents(i.acts_a, Path(i.cfg_a).parent, i.acts_b, Path(i.cfg_b).parent)
with atomic_path(snakemake.output.table) as tmp:
    table.to_csv(tmp, sep="\t", index=False)
write_json(snakemake.output.summary, {"a": snakemake.wildcards.a, "b": snakemake.wildcards.b,
                                      "site": snakemake.wildcards.site, "sae": snakemake.wildcards.sae, **summary})
