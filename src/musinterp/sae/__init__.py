"""Sparse autoencoders on recorded activations: architectures, trainer, metrics, SAELens files.

Module layout (one concern each):

- :mod:`.base`: what the architectures share (parameters, decoder constraint, resampling, export)
  and the interface the trainer relies on;
- one module per architecture, each with its model class and its config dataclass (the
  architecture's own settings, defaults and checks): :mod:`.relu_l1` (ReLU + L1, the S1 recipe),
  :mod:`.topk` (TopK + AuxK, Gao et al.), :mod:`.batchtopk` (BatchTopK, Bussmann et al.),
  :mod:`.jumprelu` (JumpReLU, Rajamanoharan et al.);
- :mod:`.settings`: :data:`ARCHITECTURES`, the generic :class:`TrainSettings`, and the split of a
  flat settings mapping into generic and architecture settings (with the errors for settings the
  chosen architecture does not read);
- :mod:`.store`: :class:`ActivationStore` (an activation file opened for training, with the file's
  split or a seeded split by piece), blocks and the seeded global shuffle (``iter_shuffled_rows``,
  ``iter_rows``);
- :mod:`.normalisation`: training-row statistics and the input normalisation of an architecture;
- :mod:`.schedule`: steps of a run, learning rate schedule, dead-latent horizon, the optimiser;
- :mod:`.checkpoint`: checkpoint directory, fingerprint, save/load/resume, the training log;
- :mod:`.allocator`: glibc allocator tuning for the training steps;
- :mod:`.trainer`: :func:`train_sae`, the training loop, which ties these together and has no
  architecture-specific code (it re-exports the names other code imports from it);
- :mod:`.metrics`: held-out FVU, L0, dead and dense fractions, accumulated over batches, and
  ``evaluate``;
- :mod:`.saelens`: the SAE directory contract (:func:`save_sae`, :func:`load_sae`).
"""

from musinterp.sae.base import LossOutput, SparseAutoencoder
from musinterp.sae.batchtopk import BatchTopKConfig, BatchTopKSAE
from musinterp.sae.jumprelu import JumpReLUConfig, JumpReLUSAE
from musinterp.sae.metrics import MetricsAccumulator, SAEMetrics, compute_metrics
from musinterp.sae.relu_l1 import S1_PRESET, ReluL1Config, ReluL1SAE
from musinterp.sae.saelens import LoadedSAE, SAEFormatError, load_sae, save_sae
from musinterp.sae.settings import (
    ARCHITECTURES,
    TrainSettings,
    setting_names,
    split_settings,
)
from musinterp.sae.store import ActivationStore
from musinterp.sae.topk import TopKConfig, TopKSAE
from musinterp.sae.trainer import read_metrics, train_sae, train_sae_with

__all__ = [
    "ARCHITECTURES",
    "S1_PRESET",
    "ActivationStore",
    "BatchTopKConfig",
    "BatchTopKSAE",
    "JumpReLUConfig",
    "JumpReLUSAE",
    "LoadedSAE",
    "LossOutput",
    "MetricsAccumulator",
    "ReluL1Config",
    "ReluL1SAE",
    "SAEFormatError",
    "SAEMetrics",
    "SparseAutoencoder",
    "TopKConfig",
    "TopKSAE",
    "TrainSettings",
    "compute_metrics",
    "load_sae",
    "read_metrics",
    "save_sae",
    "setting_names",
    "split_settings",
    "train_sae",
    "train_sae_with",
]
