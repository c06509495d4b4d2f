"""Sparse autoencoders on recorded activations: architectures, trainer, metrics, SAELens files.

- :mod:`.relu_l1`: ReLU + L1 SAE (the S1 recipe), one module per architecture;
- :mod:`.trainer`: :func:`train_sae`, the shared streaming trainer;
- :mod:`.metrics`: held-out FVU, L0, dead and dense fractions, accumulated over batches;
- :mod:`.saelens`: the SAE directory contract (:func:`save_sae`, :func:`load_sae`).
"""

from musinterp.sae.metrics import MetricsAccumulator, SAEMetrics, compute_metrics
from musinterp.sae.relu_l1 import ReluL1Config, ReluL1SAE
from musinterp.sae.saelens import LoadedSAE, SAEFormatError, load_sae, save_sae
from musinterp.sae.trainer import ARCHITECTURES, ActivationStore, TrainSettings, train_sae

__all__ = [
    "ARCHITECTURES",
    "ActivationStore",
    "LoadedSAE",
    "MetricsAccumulator",
    "ReluL1Config",
    "ReluL1SAE",
    "SAEFormatError",
    "SAEMetrics",
    "TrainSettings",
    "compute_metrics",
    "load_sae",
    "save_sae",
    "train_sae",
]
