"""File helpers shared by every stage: atomic writes, checksums and verified downloads.

Nothing half-written may look complete, so every writer goes through :func:`atomic_path`,
which hands out a temporary name beside the target and renames it only on success.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    On an exception the temporary file (or directory) is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".part", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            # mkstemp creates 0600 files; give the result the permissions of any new file.
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` as a whole on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def git_blob_id_file(path: str | os.PathLike) -> str:
    """The id git gives a file's content: sha1(b"blob <len>\\0" + data)."""
    size = os.path.getsize(path)
    h = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


class ChecksumError(ValueError):
    pass


def checksum(path: str | os.PathLike, kind: str) -> str:
    if kind == "sha256":
        return sha256_file(path)
    if kind == "git_blob":
        return git_blob_id_file(path)
    raise ValueError(f"unknown checksum kind {kind!r} (expected 'sha256' or 'git_blob')")


def verify_file(path: str | os.PathLike, expected: str, kind: str = "sha256", label: str | None = None) -> None:
    """Raise :class:`ChecksumError` naming the file (or ``label``) and both checksums when they differ."""
    actual = checksum(path, kind)
    if actual.lower() != expected.lower():
        raise ChecksumError(
            f"{label or path}: {kind} checksum mismatch: expected {expected.lower()}, got {actual}"
        )


def fetch(url: str, dest: str | os.PathLike, expected: str, kind: str = "sha256") -> Path:
    """Download ``url`` to ``dest`` and verify it; ``file://`` URLs work.

    A file already at ``dest`` (for example one placed there by hand on an offline machine) is
    verified and kept. A failed download or a checksum mismatch leaves no file at ``dest``.
    """
    dest = Path(dest)
    if dest.exists():
        log.info("%s exists; verifying its %s", dest, kind)
        verify_file(dest, expected, kind)
        return dest
    log.info("downloading %s -> %s", url, dest)
    with atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out, CHUNK)
        except (urllib.error.URLError, OSError) as err:
            raise OSError(
                f"could not download {url} to {dest}: {err}. If this machine is offline, "
                f"put the file at {dest} by hand (its {kind} must be {expected})."
            ) from err
        verify_file(tmp, expected, kind, label=f"{url} (downloaded for {dest})")
    log.info("verified %s (%s %s)", dest, kind, expected)
    return dest
