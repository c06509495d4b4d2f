"""Shared fixtures and helpers."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from musinterp.corpus.store import write_corpus
from musinterp.models import build, save


@pytest.fixture()
def one_torch_thread():
    """Tiny matrices: a thread pool only adds hand-off latency (milliseconds per op when the
    other core is busy), and one thread keeps timings predictable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY_TUNES = [
    "M:4/4 K:Cmaj |: G, C 2 E C G, C E C | D 2 F D A, D F D :|",
    "M:3/4 K:Cmin c 2 B G | F E D 2 | C 6 |",
    "M:6/8 K:Cdor G > A B c 2 d | (3 e f g c 3 |",
    "M:4/4 K:Cmix B, C D E F G A B | c 8 |",
]


@pytest.fixture()
def tiny_subject(tmp_path):
    """A four-tune corpus (tmp_path/corpus) and an untrained 2-layer folkrnn (tmp_path/model)."""
    tunes = [t.split() for t in TINY_TUNES]
    ids = [f"test/{i}" for i in range(len(tunes))]
    rows = [{"id": i, "source": "inline", "status": "ok", "reason": ""} for i in ids]
    corpus = write_corpus(tmp_path / "corpus", "test", tunes, ids, rows, seed=0, heldout_fraction=0.5)
    torch.manual_seed(0)
    model = build("folkrnn", vocab_size=len(corpus.vocab), hidden_size=12, n_layers=2, dropout=0.0)
    save(model, tmp_path / "model", {"vocab": corpus.vocab})
    return tmp_path, corpus


ROOT = Path(__file__).resolve().parents[1]


def run_snakemake(workdir, *args, configfile=None, timeout=900):
    """The real `snakemake` command on this repository's Snakefile, working in ``workdir``."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir)]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout)


def validator_filling_defaults():
    """A jsonschema validator class that fills in defaults, the recipe Snakemake's validate() uses."""
    from jsonschema import Draft202012Validator, validators

    validate_properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        for name, subschema in properties.items():
            if "default" in subschema:
                instance.setdefault(name, subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(Draft202012Validator, {"properties": set_defaults})
