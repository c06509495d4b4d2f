"""Snakemake adapter: download a source file and verify its checksum (file:// works).

Offline, the error says where to put the file by hand; a file placed there is verified and used.
"""

from musinterp.io import fetch
from musinterp.logs import setup_logging

setup_logging(snakemake.log[0])
kind, expected = snakemake.params.checksum
fetch(snakemake.params.url, snakemake.output[0], expected, kind=kind)
