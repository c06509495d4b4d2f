"""Sparse autoencoders on recorded activations: architectures, trainer, metrics, SAELens files.

- :mod:`.base`: what the architectures share (parameters, decoder constraint, resampling, export);
- :mod:`.relu_l1`: ReLU + L1 SAE (the S1 recipe); :mod:`.topk`: TopK + AuxK (Gao et al.);
  :mod:`.batchtopk`: BatchTopK (Bussmann et al.); :mod:`.jumprelu`: JumpReLU (Rajamanoharan et al.);
- :mod:`.trainer`: :func:`train_sae`, the shared streaming, checkpointing trainer;
- :mod:`.metrics`: held-out FVU, L0, dead and dense fractions, accumulated over batches;
- :mod:`.saelens`: the SAE directory contract (:func:`save_sae`, :func:`load_sae`).
"""

from musinterp.sae.base import LossOutput, SparseAutoencoder
from musinterp.sae.batchtopk import BatchTopKConfig, BatchTopKSAE
from musinterp.sae.jumprelu import JumpReLUConfig, JumpReLUSAE
from musinterp.sae.metrics import MetricsAccumulator, SAEMetrics, compute_metrics
from musinterp.sae.relu_l1 import S1_PRESET, ReluL1Config, ReluL1SAE
from musinterp.sae.saelens import LoadedSAE, SAEFormatError, load_sae, save_sae
from musinterp.sae.topk import TopKConfig, TopKSAE
from musinterp.sae.trainer import ARCHITECTURES, ActivationStore, TrainSettings, train_sae, train_sae_with

__all__ = [
    "ARCHITECTURES",
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
    "S1_PRESET",
    "SAEFormatError",
    "SAEMetrics",
    "SparseAutoencoder",
    "TopKConfig",
    "TopKSAE",
    "TrainSettings",
    "compute_metrics",
    "load_sae",
    "save_sae",
    "train_sae",
    "train_sae_with",
]
