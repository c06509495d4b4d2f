"""What every model family implements, so that no stage needs family code.

The stages (recording, SAE splicing, interventions, training, sampling) talk to a model only
through :class:`MusicModel` and :class:`Batch`; a family's sites are declared in the registry
(:mod:`musinterp.registry`) and :meth:`MusicModel.sites` must return the same list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import (
    Any,
    Callable,
    ClassVar,
    NamedTuple,
    Protocol,
    Sequence,
    runtime_checkable,
)

import numpy as np
import torch

from ..registry import Site


@dataclass
class Batch:
    """Right-padded model inputs for several pieces.

    ``inputs`` ``[batch, time]`` (or ``[batch, time, fields]`` for multi-field tokens) are what the
    model reads; ``targets`` the same shape, what it is trained to predict (``None`` where the
    family predicts nothing per position); ``lengths`` ``[batch]`` the number of valid positions of
    each row (padding beyond is never recorded or scored); ``source`` ``[batch, time]`` (optional)
    the index of the piece's token that each input position reads, −1 for framing tokens such as
    ``<s>`` (the recorder uses it to align a corpus's per-token columns).
    """

    inputs: torch.Tensor
    targets: torch.Tensor | None
    lengths: torch.Tensor
    source: torch.Tensor | None = None

    @property
    def mask(self) -> torch.Tensor:
        """``[batch, time]`` True at valid positions."""
        steps = torch.arange(self.inputs.shape[1], device=self.lengths.device)
        return steps[None, :] < self.lengths[:, None]

    @property
    def n_targets(self) -> int:
        return int(self.lengths.sum())

    def to(self, device) -> "Batch":
        def move(t):
            return None if t is None else t.to(device)

        return Batch(self.inputs.to(device), move(self.targets), self.lengths.to(device), move(self.source))


def next_token_batch(pieces: Sequence[np.ndarray], bos: int, eos: int, max_len: int | None = None) -> Batch:
    """The batch of a next-token model: each piece framed ``bos piece eos`` (cut to ``max_len``),
    inputs the frame without its last token, targets without its first, right-padded with ``eos``."""
    framed = [np.concatenate([[bos], np.asarray(p, dtype=np.int64), [eos]]) for p in pieces]
    if max_len is not None:
        framed = [f[:max_len] for f in framed]
    lengths = torch.tensor([len(f) - 1 for f in framed])
    inputs = torch.full((len(framed), int(lengths.max())), eos, dtype=torch.long)
    targets = inputs.clone()
    for row, f in enumerate(framed):
        inputs[row, : len(f) - 1] = torch.from_numpy(f[:-1])
        targets[row, : len(f) - 1] = torch.from_numpy(f[1:])
    # input position t reads the piece's token t − 1 (position 0 is bos)
    source = torch.arange(inputs.shape[1])[None, :].expand(len(framed), -1) - 1
    return Batch(inputs, targets, lengths, source)


def next_token_loss(logits: torch.Tensor, batch: Batch, reduction: str = "mean") -> torch.Tensor:
    """Cross entropy of ``logits [B, T, V]`` against ``batch.targets`` over the valid positions:
    ``"mean"`` per target (Σ losses·mask / Σ mask) or ``"sum"``."""
    import torch.nn.functional as F

    mask = batch.mask
    if reduction == "sum":
        targets = batch.targets.masked_fill(~mask, -100)
        return F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="sum")
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    losses = F.cross_entropy(logits.transpose(1, 2), batch.targets, reduction="none")
    m = mask.float()
    return (losses * m).sum() / m.sum().clamp(min=1)


class HookPoint(NamedTuple):
    """Where a replaceable site lives: ``module``'s forward output holds it; ``get(output)`` reads
    the site, ``put(output, new)`` returns the output with the site replaced."""

    module: torch.nn.Module
    get: Callable[[Any], torch.Tensor]
    put: Callable[[Any, torch.Tensor], Any]


@runtime_checkable
class MusicModel(Protocol):
    """The interface of a model family (a ``torch.nn.Module``)."""

    family: ClassVar[str]
    config: Any

    def sites(self) -> list[Site]:
        """Every recordable site, equal to the registry's list for this config."""

    def make_batch(self, pieces: Sequence[np.ndarray], vocab, max_len: int | None = None) -> Batch:
        """Frame and pad pieces of token ids (in this model's vocabulary, a
        :class:`musinterp.corpus.vocab.Vocab`) into a :class:`Batch`."""

    def record(self, batch: Batch, sites: Sequence[str]) -> dict[str, torch.Tensor]:
        """The requested sites for a batch, without gradients: token sites ``[batch, time, d]``
        (row ``t`` is the state after reading input ``t``), piece sites ``[batch, d]``. Families
        with attention also accept ``attn{layer}`` sites: patterns ``[batch, heads, time, time]``."""

    def loss(self, batch: Batch, reduction: str = "mean") -> torch.Tensor:
        """The family's own training loss on a batch: ``"mean"`` per target, or ``"sum"``."""

    def hook_point(self, site: str) -> HookPoint:
        """Where a replaceable site can be read and replaced (see :mod:`musinterp.models.hooks`)."""


class GenerativeModel(MusicModel, Protocol):
    def generate(self, start: list[int], end_id: int, max_len: int = 512, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> list[int]:
        """Sample token ids after ``start`` until ``end_id`` or ``max_len`` tokens."""


def site_map(model: MusicModel) -> dict[str, Site]:
    return {s.name: s for s in model.sites()}


def check_sites(model: MusicModel, requested: Sequence[str] | None) -> list[Site]:
    """The requested sites (default all) as :class:`Site` objects; unknown names are an error."""
    sites = site_map(model)
    names = list(sites) if not requested else list(requested)
    unknown = [n for n in names if n not in sites]
    if unknown:
        raise ValueError(f"unknown sites {unknown} for {model.family}; available: {list(sites)}")
    return [sites[n] for n in names]
