"""The settings of an SAE training run: generic ones in :class:`TrainSettings`, each
architecture's own in its config dataclass, and the registry of architectures.

A run's settings arrive as one flat mapping (``train_sae(..., **settings)``, a ``saes:`` item of
the workflow config, the ``musinterp sae train`` flags). :func:`split_settings` sends each name to
its owner:

- a field of :class:`TrainSettings` (``arch``, ``width``, ``lr``, ``batch_size``, ...) is generic:
  the shared trainer reads it whatever the architecture;
- any other name must be a setting of the chosen architecture: a field of its config dataclass
  (:class:`~musinterp.sae.relu_l1.ReluL1Config`, :class:`~musinterp.sae.topk.TopKConfig`,
  :class:`~musinterp.sae.batchtopk.BatchTopKConfig`, :class:`~musinterp.sae.jumprelu.JumpReLUConfig`),
  which holds its default and its checks (e.g. topk requires ``k``). A value of ``None`` means
  "the default". A setting that only other architectures read is an error naming them, and a
  name nobody reads is an error listing the known ones.

A new architecture is one module (an :class:`~musinterp.sae.base.SparseAutoencoder` subclass and
its config dataclass) plus one entry in :data:`ARCHITECTURES`; its settings need no change here
(the workflow schema lists them as ``saes:`` item properties, tests/test_sae_settings_schema.py
checks that it does).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from musinterp.sae.base import SparseAutoencoder
from musinterp.sae.batchtopk import BatchTopKSAE
from musinterp.sae.jumprelu import JumpReLUSAE
from musinterp.sae.relu_l1 import ReluL1SAE
from musinterp.sae.store import HELDOUT_FRACTION
from musinterp.sae.topk import TopKSAE

ARCHITECTURES: dict[str, type[SparseAutoencoder]] = {
    "relu_l1": ReluL1SAE,
    "topk": TopKSAE,
    "batchtopk": BatchTopKSAE,
    "jumprelu": JumpReLUSAE,
}


@dataclass
class TrainSettings:
    """The settings every architecture's run reads; see :mod:`musinterp.sae.trainer` for their
    meaning in the training loop."""

    arch: str = "relu_l1"
    width: int | None = None  # d_sae; None means 4 · d_in
    # optimisation
    lr: float = 1e-3
    batch_size: int = 2048
    epochs: int = 2
    seed: int = 0  # initialisation, shuffle, resampling and (without a split column) the split
    max_tokens: int | None = None  # stop after this many training tokens (all epochs together)
    warmup_fraction: float = 0.05
    decay_fraction: float = 0.2
    # dead latents
    dead_tokens: int | None = None  # None: min(10M, max(batch, total tokens / 10))
    resample_every: int | None = None  # steps between resamplings of dead latents; None: never
    # evaluation, data, memory, checkpoints
    eval_every: int = 500  # steps between held-out evaluations
    eval_tokens: int = 65_536  # held-out rows used by the periodic evaluations (the final uses all)
    heldout_fraction: float = HELDOUT_FRACTION  # pieces held out when the file has no split column
    buffer_tokens: int | None = None  # shuffle buffer rows; None means about 256 MiB of float32
    checkpoint_every: int | None = 1000  # steps between checkpoints; None: no checkpoints
    device: str = "cpu"

    def check(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown SAE architecture {self.arch!r}; known: {sorted(ARCHITECTURES)}")
        for name in ("batch_size", "epochs", "eval_every", "eval_tokens"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("width", "max_tokens", "buffer_tokens", "dead_tokens", "resample_every", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1 (or None), got {value!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("warmup_fraction", "decay_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.warmup_fraction + self.decay_fraction > 1:
            raise ValueError(
                f"warmup_fraction + decay_fraction must be at most 1, got "
                f"{self.warmup_fraction} + {self.decay_fraction}"
            )
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device must be a torch device name such as 'cpu' or 'cuda', got {self.device!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def generic_setting_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(TrainSettings))


def setting_names() -> tuple[str, ...]:
    """Every setting a run can be given: the generic ones, then every architecture's."""
    names = list(generic_setting_names())
    for arch_names in architecture_setting_names().values():
        names += [name for name in arch_names if name not in names]
    return tuple(names)


def architecture_setting_names() -> dict[str, tuple[str, ...]]:
    """Each architecture's own settings (its config dataclass's fields but d_in, d_sae)."""
    return {arch: cls.setting_names() for arch, cls in ARCHITECTURES.items()}


def check_architecture_settings(arch: str, settings: Mapping[str, Any]) -> None:
    """Refuse a setting given (not ``None``) that the ``arch`` architecture does not read."""
    own = ARCHITECTURES[arch].setting_names()
    by_arch = architecture_setting_names()
    for name in sorted(settings):
        if name in own or settings[name] is None:
            continue
        users = [a for a, names in by_arch.items() if name in names]
        if users:
            raise ValueError(
                f"{name}={settings[name]!r} is a setting of {', '.join(users)}, not of the {arch} architecture"
            )
        raise ValueError(
            f"unknown SAE setting {name!r}; generic settings: {', '.join(generic_setting_names())}; "
            f"{arch} settings: {', '.join(own) or 'none'}"
        )


def split_settings(settings: Mapping[str, Any]) -> tuple[TrainSettings, dict[str, Any]]:
    """``(generic settings, the architecture's settings)`` from one flat mapping, both checked
    as far as they can be without the data (the architecture's config is validated once d_in
    and d_sae are known). The architecture's settings keep only those given (not ``None``)."""
    generic = set(generic_setting_names())
    train = TrainSettings(**{k: v for k, v in settings.items() if k in generic})
    train.check()
    own = {k: v for k, v in settings.items() if k not in generic}
    check_architecture_settings(train.arch, own)
    return train, {k: v for k, v in own.items() if v is not None}
