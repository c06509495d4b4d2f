"""Input statistics and the input normalisation an architecture asks for.

1. One pass over every row checks that all activations are finite and computes the statistics
   of the training rows (split 0) in float64: per-dimension mean and standard deviation, and the
   mean squared norm E‖x‖² (:func:`input_statistics`; blocks merged with Chan et al.'s update).
2. The architecture decides how inputs are normalised before the SAE sees them
   (:data:`musinterp.sae.base.INPUT_NORMALISATIONS`, :func:`input_normalisation`): ``relu_l1``
   z-scores every dimension, ``x_n = (x − mean) / std``; the others scale by one number,
   ``x_n = s · x`` with ``s = sqrt(d_in / E‖x‖²)``, so that E‖x_n‖² = d_in. Either is
   ``x_n = (x − shift) / divisor`` with per-dimension vectors, which
   :func:`musinterp.sae.saelens.fold_input_normalisation` folds into the saved weights
   (``normalize_activations`` stays ``"none"``).

A dimension whose training std is at most :data:`CONSTANT_DIM_REL_STD` times the largest one is
*constant*: it is centred but not scaled (std set to 1), instead of blowing float noise up to unit
variance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from musinterp.sae.store import TRAIN, ActivationStore

CONSTANT_DIM_REL_STD = 1e-6


@dataclass
class InputStatistics:
    """Statistics of the training rows (float64); ``std`` is 1 in constant dimensions."""

    mean: torch.Tensor
    std: torch.Tensor
    mean_squared_norm: float  # E‖x‖² over the training rows
    n_rows: int
    n_constant: int


def input_statistics(store: ActivationStore) -> InputStatistics:
    """Training rows' per-dimension mean and std and mean squared norm.

    Reads every row once, so it is also the finiteness check of the whole file (a bad row is
    reported wherever it is, train or held-out).
    """
    n = 0
    mean = np.zeros(store.d, dtype=np.float64)
    sq_dev = np.zeros(store.d, dtype=np.float64)
    for start, stop in tqdm(store.blocks(), desc="scanning activations", unit="block", mininterval=2.0):
        x = store.read(start, stop, TRAIN).astype(np.float64)  # checks all rows, keeps train ones
        if len(x) == 0:
            continue
        # Chan et al.: merge this block's mean and squared deviations into the running ones.
        b_mean = x.mean(axis=0)
        b_sq_dev = ((x - b_mean) ** 2).sum(axis=0)
        total = n + len(x)
        delta = b_mean - mean
        sq_dev += b_sq_dev + delta**2 * (n * len(x) / total)
        mean += delta * (len(x) / total)
        n = total
    variance = sq_dev / n
    mean_squared_norm = float((variance + mean**2).sum())
    std = np.sqrt(variance)
    constant = std <= CONSTANT_DIM_REL_STD * max(float(std.max()), np.finfo(np.float32).tiny)
    std[constant] = 1.0
    return InputStatistics(
        torch.from_numpy(mean), torch.from_numpy(std), mean_squared_norm, n, int(constant.sum())
    )


def input_normalisation(kind: str, stats: InputStatistics) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(shift, divisor, description)`` with ``x_n = (x − shift) / divisor`` (float64 vectors)."""
    d = len(stats.mean)
    if kind == "per_dimension":
        return (
            stats.mean.clone(),
            stats.std.clone(),
            (
                "per-dimension z-scoring with the training tokens' mean and std, folded into "
                "W_enc, b_enc, W_dec and b_dec"
            ),
        )
    if kind == "scalar":
        scale = math.sqrt(d / stats.mean_squared_norm) if stats.mean_squared_norm > 0 else 1.0
        return (
            torch.zeros(d, dtype=torch.float64),
            torch.full((d,), 1.0 / scale, dtype=torch.float64),
            (
                f"inputs multiplied by s = sqrt(d_in / E|x|^2) = {scale:.8g} over the training tokens "
                "(so that E|s x|^2 = d_in), folded into W_enc, b_enc, W_dec and b_dec"
            ),
        )
    raise ValueError(f"unknown input normalisation {kind!r}")
