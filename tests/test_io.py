"""Atomic writes, checksums and verified downloads (file:// URLs, never the network)."""

import hashlib
import subprocess

import pytest

from musinterp.io import ChecksumError, atomic_dir, atomic_path, fetch, git_blob_id_file, sha256_file, verify_file


def test_git_blob_id_matches_git(tmp_path):
    path = tmp_path / "tune.txt"
    path.write_bytes(b"M:4/4 K:Cmaj |: G, C 2 E C :|\n")
    expected = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True).stdout.strip()
    assert git_blob_id_file(path) == expected
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"


def test_atomic_dir_replaces_whole_directory(tmp_path):
    target = tmp_path / "sae"
    with pytest.raises(ValueError):
        with atomic_dir(target) as tmp:
            (tmp / "cfg.json").write_text("{}")
            raise ValueError("bad")
    assert not target.exists()
    with atomic_dir(target) as tmp:
        (tmp / "cfg.json").write_text("{}")
    assert (target / "cfg.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["sae"]


def test_fetch_file_url_verifies(tmp_path):
    src = tmp_path / "src.txt"
    src.write_text("X:1\n")
    dest = tmp_path / "downloads" / "copy.txt"
    fetch(src.as_uri(), dest, git_blob_id_file(src), kind="git_blob")
    assert dest.read_text() == "X:1\n"


def test_fetch_rejects_corrupt_copy_with_both_checksums(tmp_path):
    src = tmp_path / "src.txt"
    src.write_text("corrupted\n")
    good = "0" * 64
    dest = tmp_path / "downloads" / "copy.txt"
    with pytest.raises(ChecksumError) as err:
        fetch(src.as_uri(), dest, good, kind="sha256")
    assert good in str(err.value) and sha256_file(src) in str(err.value)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_fetch_missing_source_says_where_to_put_file(tmp_path):
    dest = tmp_path / "downloads" / "data_v2"
    with pytest.raises(OSError, match="put the file at"):
        fetch((tmp_path / "nope").as_uri(), dest, "a" * 40, kind="git_blob")
    assert not dest.exists()


def test_file_placed_by_hand_is_verified(tmp_path):
    dest = tmp_path / "model.pkl"
    dest.write_bytes(b"placed by hand")
    fetch("https://unreachable.invalid/model.pkl", dest, sha256_file(dest))  # no download attempted
    with pytest.raises(ChecksumError):
        verify_file(dest, "f" * 64)
