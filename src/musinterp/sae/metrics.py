"""Held-out SAE metrics, one definition each (DESIGN.md, "SAE engine"), accumulated over batches.

For held-out activations ``x`` (``n`` tokens × ``d_in``), reconstructions ``x̂`` and latents ``z``
(``n`` × ``d_sae``):

- FVU (fraction of variance unexplained) = Σ‖x − x̂‖² / Σ‖x − x̄‖², with x̄ the mean of the
  held-out tokens themselves; 0 is perfect, 1 is no better than predicting x̄.
- L0 = mean number of non-zero latents per token.
- dead fraction = fraction of latents that are zero on every held-out token.
- dense fraction = fraction of latents non-zero on more than 10 % of held-out tokens.

Everything is computed in the space the ``x`` given are in: the trainer passes raw activations, so
these are the numbers a user of the saved SAE measures. The held-out set may not fit in memory,
so :class:`MetricsAccumulator` keeps only sums: per-dimension means and squared deviations are
merged batch by batch (Chan et al.'s parallel variance update, in float64), which gives x̄ and
Σ‖x − x̄‖² without a second pass and without the cancellation of Σx² − n·x̄².
:func:`evaluate` runs an SAE that reads normalised inputs over raw held-out rows and accumulates
these metrics of its raw-space reconstructions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from musinterp.sae.allocator import release_free_memory

DENSE_THRESHOLD = 0.1


@dataclass
class SAEMetrics:
    fvu: float
    l0: float
    dead_fraction: float
    dense_fraction: float
    n_tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def _as_tensor(a) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))


class MetricsAccumulator:
    """Feed batches with :meth:`update`; read the metrics of everything seen with :meth:`result`."""

    def __init__(self, d_in: int, d_sae: int, dense_threshold: float = DENSE_THRESHOLD):
        self.d_in = d_in
        self.d_sae = d_sae
        self.dense_threshold = dense_threshold
        self.n_tokens = 0
        self.x_mean = torch.zeros(d_in, dtype=torch.float64)
        self.x_sq_dev = torch.zeros(d_in, dtype=torch.float64)  # Σ (x − running mean)² per dim
        self.sum_sq_error = 0.0
        self.n_nonzero = 0  # Σ over tokens of the number of non-zero latents
        self.fire_counts = torch.zeros(d_sae, dtype=torch.int64)  # tokens on which each latent fires

    @torch.no_grad()
    def update(self, x, x_hat, z) -> None:
        x, x_hat, z = _as_tensor(x), _as_tensor(x_hat), _as_tensor(z)
        if x.ndim != 2 or x.shape != x_hat.shape or z.ndim != 2 or z.shape[0] != x.shape[0]:
            raise ValueError(
                f"expected x and x_hat [n, {self.d_in}] and z [n, {self.d_sae}], got "
                f"{tuple(x.shape)}, {tuple(x_hat.shape)} and {tuple(z.shape)}"
            )
        if x.shape[1] != self.d_in or z.shape[1] != self.d_sae:
            raise ValueError(f"expected d_in={self.d_in}, d_sae={self.d_sae}, got {x.shape[1]}, {z.shape[1]}")
        n = x.shape[0]
        if n == 0:
            return
        # Reduce on the tensors' own device; only per-dimension and per-latent vectors come back.
        x64 = x.detach().to(torch.float64)
        batch_mean = x64.mean(dim=0)
        batch_sq_dev = ((x64 - batch_mean) ** 2).sum(dim=0).cpu()
        batch_mean = batch_mean.cpu()
        total = self.n_tokens + n
        delta = batch_mean - self.x_mean
        self.x_sq_dev += batch_sq_dev + delta**2 * (self.n_tokens * n / total)
        self.x_mean += delta * (n / total)
        self.n_tokens = total

        self.sum_sq_error += float(((x64 - x_hat.detach().to(x64.device, torch.float64)) ** 2).sum())
        fires = z.detach() != 0
        self.n_nonzero += int(fires.sum())
        self.fire_counts += fires.sum(dim=0).cpu()

    def result(self) -> SAEMetrics:
        if self.n_tokens == 0:
            raise ValueError("no held-out tokens were given, so no metrics can be computed")
        total_var = float(self.x_sq_dev.sum())
        # A constant held-out set has no variance to explain; report NaN rather than divide by 0.
        fvu = self.sum_sq_error / total_var if total_var > 0 else math.nan
        fire_rate = self.fire_counts.to(torch.float64) / self.n_tokens
        return SAEMetrics(
            fvu=fvu,
            l0=self.n_nonzero / self.n_tokens,
            dead_fraction=float((self.fire_counts == 0).to(torch.float64).mean()),
            dense_fraction=float((fire_rate > self.dense_threshold).to(torch.float64).mean()),
            n_tokens=self.n_tokens,
        )


def compute_metrics(x, x_hat, z, dense_threshold: float = DENSE_THRESHOLD) -> SAEMetrics:
    """The metrics of one in-memory batch (same definitions as :class:`MetricsAccumulator`)."""
    x = _as_tensor(x)
    z = _as_tensor(z)
    acc = MetricsAccumulator(x.shape[1], z.shape[1], dense_threshold)
    acc.update(x, x_hat, z)
    return acc.result()


EVAL_BATCH_ROWS = 8192


@torch.no_grad()
def evaluate(sae: torch.nn.Module, row_blocks, shift: torch.Tensor, divisor: torch.Tensor) -> SAEMetrics:
    """Held-out metrics of ``sae`` (which reads ``(x − shift) / divisor``) on raw activations
    ``row_blocks`` (float32 arrays [rows, d_in]), fed :data:`EVAL_BATCH_ROWS` rows at a time."""
    device = shift.device
    release_free_memory()
    acc = MetricsAccumulator(sae.cfg.d_in, sae.cfg.d_sae)
    was_training = sae.training
    sae.eval()
    for rows in row_blocks:
        for i in range(0, len(rows), EVAL_BATCH_ROWS):
            x = torch.from_numpy(rows[i : i + EVAL_BATCH_ROWS]).to(device)
            x_hat_n, z = sae((x - shift) / divisor)
            acc.update(x, x_hat_n * divisor + shift, z)
    sae.train(was_training)
    return acc.result()
