"""The download source: a file:// URL, verified by its git blob id, read as folk-rnn text."""

import hashlib
import shutil
from pathlib import Path

import pytest

from musinterp.corpus import build_corpus, load_corpus, read_folkrnn_text, read_manifest
from musinterp.io import ChecksumError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FOLKWIKI_BLOB = "672334a308429cd72468794af9ee3d9875b5310f"

SMALL_FILE = """M:4/4
K:Cmaj
B, | G, C C 2 G, C E C | G, C E G F D B, D | C 8 :|

M:6/8
K:Cdor
|: G c c B G F | E F G c 3 :|
"""


def git_blob_id(data: bytes) -> str:
    """Computed here independently of musinterp.io: sha1 of b"blob <size>\\0" + data."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def spec_for(path: Path, blob: str) -> dict:
    return {"source": "download", "url": path.as_uri(), "git_blob": blob, "format": "folkrnn"}


def test_git_blob_id_matches_git():
    # `printf 'hello\n' | git hash-object --stdin`
    assert git_blob_id(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_download_verified_by_git_blob(tmp_path):
    mirror = tmp_path / "mirror" / "tunes.txt"
    mirror.parent.mkdir()
    mirror.write_bytes(SMALL_FILE.encode())
    downloads = tmp_path / "downloads"
    counts = build_corpus("small", spec_for(mirror, git_blob_id(SMALL_FILE.encode())), tmp_path / "corpus",
                          seed=0, heldout_fraction=0.5, download_dir=downloads)
    assert (downloads / "tunes.txt").read_bytes() == SMALL_FILE.encode()
    assert counts["n_ok"] == 2 and counts["n_skipped"] == 0 and counts["n_heldout"] == 1
    corpus = load_corpus(tmp_path / "corpus")
    assert corpus.tune_tokens(1) == "M:6/8 K:Cdor |: G c c B G F | E F G c 3 :|".split()
    assert [r["source"] for r in read_manifest(tmp_path / "corpus")] == [mirror.as_uri()] * 2

    # A second build finds the verified file in place; the mirror is no longer needed.
    mirror.unlink()
    again = build_corpus("small", spec_for(mirror, git_blob_id(SMALL_FILE.encode())), tmp_path / "corpus2",
                         seed=0, heldout_fraction=0.5, download_dir=downloads)
    assert again["n_ok"] == 2


def test_download_with_sha256(tmp_path):
    mirror = tmp_path / "tunes.txt"
    mirror.write_bytes(SMALL_FILE.encode())
    spec = {"source": "download", "url": mirror.as_uri(), "sha256": hashlib.sha256(SMALL_FILE.encode()).hexdigest(),
            "format": "folkrnn", "filename": "renamed.txt"}
    counts = build_corpus("small", spec, tmp_path / "corpus", 0, 0.5, download_dir=tmp_path / "dl")
    assert counts["n_ok"] == 2 and (tmp_path / "dl" / "renamed.txt").is_file()


def test_corrupted_download_is_rejected_and_leaves_nothing(tmp_path):
    good = SMALL_FILE.encode()
    corrupted = good.replace(b"C 8", b"C 7")
    mirror = tmp_path / "tunes.txt"
    mirror.write_bytes(corrupted)
    downloads = tmp_path / "downloads"
    expected, actual = git_blob_id(good), git_blob_id(corrupted)
    with pytest.raises(ChecksumError) as err:
        build_corpus("small", spec_for(mirror, expected), tmp_path / "corpus", 0, 0.5, download_dir=downloads)
    message = str(err.value)
    assert expected in message and actual in message and "git_blob" in message
    assert not (downloads / "tunes.txt").exists()
    assert not downloads.exists() or list(downloads.iterdir()) == []
    assert not (tmp_path / "corpus").exists()


def test_download_spec_needs_a_checksum(tmp_path):
    with pytest.raises(ValueError, match=r"corpus 'x': source download needs 'git_blob' or 'sha256'"):
        build_corpus("x", {"source": "download", "url": "file:///nowhere.txt"}, tmp_path, 0, 0.1)


def test_folkwiki_is_read_completely(tmp_path):
    source = SHARED_DATA / "folkwiki" / "9_nov_folkwiki.txt"
    if not source.exists():
        pytest.skip(f"{source} is absent (the shared development data folder ../shared/data is not here)")
    mirror = tmp_path / "mirror" / source.name
    mirror.parent.mkdir()
    shutil.copyfile(source, mirror)
    counts = build_corpus("folkwiki", spec_for(mirror, FOLKWIKI_BLOB), tmp_path / "corpus",
                          seed=0, heldout_fraction=0.1, download_dir=tmp_path / "downloads")
    assert counts["n_items"] == 4083 and counts["n_ok"] == 4083 and counts["n_skipped"] == 0
    assert counts["n_heldout"] == 408
    corpus = load_corpus(tmp_path / "corpus")
    assert len(corpus) == 4083 and corpus.tune_ids[0] == "9_nov_folkwiki.txt#1"
    assert corpus.tune_tokens(0)[:8] == "[L:1/16] [M:3/4] [K:GMaj] G 2 A c B".split()
    assert corpus.tune_tokens(1)[:6] == "[L:1/8] [M:3/4] [K:DMin] A > ^c".split()
    # Tokens are kept exactly as written: the whole file's tokens, in order.
    assert [t for i in range(len(corpus)) for t in corpus.tune_tokens(i)] == source.read_text().split()
    assert all(r.status == "ok" for r in read_folkrnn_text(source))
