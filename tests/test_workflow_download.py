"""The corpus download rule through the snakemake command, on file:// copies of real data."""

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import run_snakemake

from musinterp.corpus.store import load_corpus

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FOLKWIKI = SHARED / "folkwiki" / "9_nov_folkwiki.txt"
FOLKWIKI_BLOB = "672334a308429cd72468794af9ee3d9875b5310f"

pytestmark = [
    pytest.mark.e2e,  # runs the snakemake command
    pytest.mark.skipif(not FOLKWIKI.exists(), reason=f"development data not present: {FOLKWIKI}"),
]


def run_corpus_rule(workdir: Path, url: str, blob: str):
    config = {
        "seed": 0,
        "download_dir": "resources/downloads",
        "corpora": {"folkwiki": {"source": "download", "url": url, "git_blob": blob, "format": "folkrnn"}},
        "subjects": {"wiki": {"family": "folkrnn", "corpus": "folkwiki", "source": "train"}},
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return run_snakemake(workdir, "--cores", "1", "resources/corpora/folkwiki/tokens.h5", configfile=path, timeout=300)


def test_download_rule_reads_folkwiki_completely(tmp_path):
    mirror = tmp_path / "mirror" / "9_nov_folkwiki.txt"
    mirror.parent.mkdir()
    shutil.copy(FOLKWIKI, mirror)
    result = run_corpus_rule(tmp_path, mirror.as_uri(), FOLKWIKI_BLOB)
    assert result.returncode == 0, result.stderr[-3000:]
    corpus = load_corpus(tmp_path / "resources" / "corpora" / "folkwiki")
    manifest = pd.read_csv(tmp_path / "resources" / "corpora" / "folkwiki" / "manifest.tsv", sep="\t",
                           keep_default_na=False)
    assert len(manifest) == 4083 and (manifest.status == "ok").sum() == len(corpus) == 4083
    assert corpus.tune_tokens(0)[:3] == ["[L:1/16]", "[M:3/4]", "[K:GMaj]"]
    downloaded = list((tmp_path / "resources" / "downloads").rglob("*"))
    assert any(p.is_file() for p in downloaded)


def test_corrupt_download_fails_with_both_checksums(tmp_path):
    mirror = tmp_path / "mirror" / "9_nov_folkwiki.txt"
    mirror.parent.mkdir()
    mirror.write_bytes(FOLKWIKI.read_bytes()[:-100])  # truncated copy
    result = run_corpus_rule(tmp_path, mirror.as_uri(), FOLKWIKI_BLOB)
    assert result.returncode != 0
    log = "\n".join(p.read_text() for p in (tmp_path / "results" / "logs").rglob("*.log"))
    assert FOLKWIKI_BLOB in log + result.stderr and "checksum mismatch" in log + result.stderr
    assert not (tmp_path / "resources" / "corpora" / "folkwiki" / "tokens.h5").exists()
    assert not [p for p in (tmp_path / "resources").rglob("*") if p.is_file()]


def test_offline_download_says_where_to_put_the_file(tmp_path):
    result = run_corpus_rule(tmp_path, (tmp_path / "absent.txt").as_uri(), FOLKWIKI_BLOB)
    assert result.returncode != 0
    log = "\n".join(p.read_text() for p in (tmp_path / "results" / "logs").rglob("*.log"))
    assert "put the file at" in log + result.stderr
