"""Snakemake adapter: import a published checkpoint with its family's importer (see the registry)."""

from pathlib import Path

from musinterp.io import verify_file
from musinterp.logs import setup_logging
from musinterp.models import load, write_samples
from musinterp.registry import get_family

setup_logging(snakemake.log[0])
source = snakemake.input.source
if snakemake.params.checksum is not None:
    # A file placed by hand (offline use) is verified here, since no download rule ran for it.
    kind, expected = snakemake.params.checksum
    verify_file(source, expected, kind)
out_dir = Path(snakemake.output.model).parent
importer = get_family(snakemake.params.family).importer()
importer(source, out_dir, source=snakemake.params.url or str(source))
model, meta = load(out_dir)
sampling = dict(snakemake.params.sampling)
write_samples(model, meta["vocab"], snakemake.output.samples, sampling["n_samples"], sampling["temperature"],
              snakemake.params.seed)
