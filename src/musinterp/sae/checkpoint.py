"""Checkpoints and the training log of an SAE run, and when a checkpoint may be resumed.

While a run writing ``out_dir`` trains, ``{out_dir}.ckpt/`` beside it (:func:`checkpoint_dir_for`)
holds ``training_log.tsv`` (one row per step, :class:`TrainingLog`) and, every
``checkpoint_every`` steps, ``checkpoint.pt``: the whole training state (model, optimiser,
generator, the per-latent counts of tokens since firing, the running loss sums, the step, the
tokens seen and the log's size then), written atomically.

A checkpoint is resumed only when its *fingerprint* equals the new run's (:func:`fingerprint`):
the checkpoint format, the producer version, every resolved setting except those in
:data:`RESUMABLE_ACROSS` (which do not touch the trajectory of the weights), and the identity of
the activation file (path, size, modification time, shape). Otherwise, or when it cannot be read,
the directory is removed and the run starts afresh (:func:`resumable_checkpoint`). A resumed run
cuts the log back to its size at the checkpoint, so it ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from musinterp import PRODUCER
from musinterp.io import atomic_path

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "training_log.tsv"
CHECKPOINT_FORMAT = 1
# Settings that may change between a killed run and its resumption (they do not touch the
# trajectory of the weights).
RESUMABLE_ACROSS = ("checkpoint_every",)


class TrainingLog:
    """``training_log.tsv``: one row per step; held-out columns filled at evaluation steps.

    Opened for a fresh run (header written) or to resume (cut back to ``resume_bytes``, the size
    it had when the checkpoint was written)."""

    def __init__(self, path: Path, part_names: list[str], resume_bytes: int | None = None):
        self.columns = [
            "step", "tokens_seen", "lr", "loss", *part_names, "dead_latents", "heldout_fvu", "heldout_l0",
        ]  # fmt: skip
        header = "\t".join(self.columns) + "\n"
        if resume_bytes is None:
            self.file = open(path, "w")  # noqa: SIM115 - open for the whole run, closed by close()
            self.file.write(header)
        else:
            self.file = open(path, "r+")  # noqa: SIM115
            if self.file.readline() != header:
                self.file.close()
                raise ValueError(f"{path}: its header does not match this run's columns")
            self.file.truncate(resume_bytes)
            self.file.seek(resume_bytes)

    def write(self, row: dict[str, Any]) -> None:
        def fmt(value):
            if value is None:
                return ""
            return f"{value:.7g}" if isinstance(value, float) else str(value)

        self.file.write("\t".join(fmt(row.get(c)) for c in self.columns) + "\n")

    def flush(self) -> int:
        """Flush to disk; return the file's size."""
        self.file.flush()
        os.fsync(self.file.fileno())
        return self.file.tell()

    def close(self) -> None:
        self.file.close()


def checkpoint_dir_for(out_dir: str | os.PathLike) -> Path:
    """Where the checkpoints of a run writing ``out_dir`` go: ``{out_dir}.ckpt/`` beside it."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".ckpt")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically (a kill while writing leaves the previous one)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)


def fingerprint(settings: dict[str, Any], identity: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for a checkpoint to be resumed."""
    kept = {k: v for k, v in settings.items() if k not in RESUMABLE_ACROSS}
    return {"format": CHECKPOINT_FORMAT, "producer": PRODUCER, "settings": kept, "acts": identity}


def resumable_checkpoint(ckpt_dir: Path, expected: dict[str, Any], device: torch.device):
    """The checkpoint in ``ckpt_dir`` if its fingerprint is ``expected``, else None (stale ones
    removed)."""
    path = ckpt_dir / CHECKPOINT_FILE
    if not path.is_file():
        if ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)
        return None
    try:
        state = load_checkpoint(path, device)
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is discarded the same way
        log.warning("%s: unreadable checkpoint (%s); starting afresh", path, err)
        shutil.rmtree(ckpt_dir)
        return None
    if state.get("fingerprint") != expected or not (ckpt_dir / LOG_FILE).is_file():
        log.warning(
            "%s was written by a run with other settings or another activation file; "
            "starting afresh and removing it",
            path,
        )
        shutil.rmtree(ckpt_dir)
        return None
    return state
