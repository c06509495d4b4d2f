"""TopK sparse autoencoder (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

Inputs are scaled by one number so that E‖x_n‖² = d_in over the training tokens (the trainer
does it and folds it into the saved weights). With ``b_dec`` playing the role of the paper's
``b_pre``::

    pre  = (x_n − b_dec) @ W_enc + b_enc
    z    = TopK_k(ReLU(pre))                  the k largest entries per token, 0 elsewhere
    x̂_n  = z @ W_dec + b_dec                  rows of W_dec kept at unit norm
    mse  = mean over tokens and dimensions of (x̂_n − x_n)²
    loss = mse + aux_coeff · auxk

Sparsity is fixed by k, so there is no sparsity penalty. Latents that stop firing get no
gradient from the main loss; the AuxK loss gives them one. A latent is *dead* when it has not
fired for ``dead_tokens`` training tokens (the trainer counts; Gao et al. use 10M tokens).
With D the dead latents and e the main reconstruction's residual::

    e     = x_n − x̂_n                                      (detached: the aux term only trains D)
    ê     = TopK_{k_aux}(ReLU(pre) restricted to D) @ W_dec  no bias
    auxk  = Σ_batch ‖e − ê‖² / Σ_batch ‖e − ē‖²               0 while no latent is dead

``k_aux`` defaults to d_in / 2 (the paper's heuristic) and is capped at |D|. Normalising by the
residual's own variance (ē its batch mean) makes ``auxk`` an FVU of the residual, so
``aux_coeff`` (1/32 as in the paper) does not depend on the scale of the data; this is the
``normalized_mse`` of OpenAI's reference code. As there, the dead latents' activations go
through ReLU: a dead latent learns to reconstruct the residual with positive activations, which
is what makes it win a place in the top-k again (without ReLU it can fit the residual with
negative activations, pointing its decoder row the wrong way, and stay dead). The price: a latent
whose pre-activation is negative on every input gets no AuxK gradient; resampling
(``resample_every``, :mod:`.base`) reaches those too.

``z = TopK(ReLU(pre))`` equals SAELens's ``ReLU(TopK(pre))`` (the same values survive), so the
SAE is saved as SAELens ``topk`` with ``k``. Only the width ≥ d_in regime is supported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from musinterp.sae.base import LossOutput, SparseAutoencoder, check_dimensions

DEFAULT_AUX_COEFF = 1 / 32


def check_topk_widths(name: str, d_in: int, d_sae: int, k) -> None:
    """Refuse a width below d_in and a k that is missing, not an integer or not in 1..width."""
    check_dimensions(d_in, d_sae)
    if d_sae < d_in:
        raise ValueError(
            f"{name}: width (d_sae={d_sae}) is below the input size d_in={d_in}; the top-k family "
            "here needs an overcomplete (or complete) dictionary, so use width >= d_in"
        )
    if k is None:
        raise ValueError(f"{name}: k (latents kept per token) is required")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_sae:
        raise ValueError(f"{name}: k must be an integer in 1..width={d_sae}, got {k!r}")


@dataclass
class TopKConfig:
    """The topk settings (every field but ``d_in``, ``d_sae``), their defaults and checks."""

    d_in: int
    d_sae: int
    k: int | None = None  # latents kept per token: required; None only so that a missing k gets a clear error
    aux_coeff: float = DEFAULT_AUX_COEFF  # weight of the AuxK loss
    k_aux: int | None = None  # dead latents used by AuxK; None: d_in // 2 (at least 1), capped at d_sae

    def __post_init__(self):
        check_topk_widths(type(self).__name__.removesuffix("Config").lower(), self.d_in, self.d_sae, self.k)
        if not self.aux_coeff >= 0:
            raise ValueError(f"aux_coeff must be >= 0, got {self.aux_coeff}")
        if self.k_aux is None:
            self.k_aux = max(1, self.d_in // 2)
        if isinstance(self.k_aux, bool) or not isinstance(self.k_aux, int) or self.k_aux < 1:
            raise ValueError(f"k_aux must be a positive integer, got {self.k_aux!r}")
        self.k_aux = min(self.k_aux, self.d_sae)


def auxk_loss(
    residual: torch.Tensor,
    pre: torch.Tensor,
    W_dec: torch.Tensor,
    dead_mask: torch.Tensor | None,
    k_aux: int,
) -> torch.Tensor:
    """The AuxK term (module docstring) for a batch: ``residual`` [n, d_in] (detached),
    ``pre`` [n, d_sae], ``W_dec`` [d_sae, d_in], ``dead_mask`` [d_sae]. 0 when nothing is dead."""
    n_dead = 0 if dead_mask is None else int(dead_mask.sum())
    variance = ((residual - residual.mean(dim=0)) ** 2).sum()
    if n_dead == 0 or not bool(variance > 0):
        return pre.new_zeros(())
    dead_pre = torch.where(dead_mask[None, :], pre, torch.full_like(pre, -torch.inf))
    values, indices = torch.topk(dead_pre, min(k_aux, n_dead), dim=-1, sorted=False)
    aux_latents = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    residual_hat = aux_latents @ W_dec
    return ((residual - residual_hat) ** 2).sum() / variance


class TopKSAE(SparseAutoencoder):
    """TopK SAE with AuxK; scalar input normalisation; decoder rows kept at unit norm."""

    config_class = TopKConfig
    saelens_architecture = "topk"
    input_normalisation = "scalar"
    apply_b_dec_to_input = True
    loss_parts = ("mse", "auxk")

    def __init__(
        self,
        cfg: TopKConfig,
        generator: torch.Generator | None = None,
        input_mean: torch.Tensor | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        # Gao et al.: encoder = decoder transpose at init, b_enc = 0, b_pre at a centre of the data
        # (they take the geometric median; the mean is what we have from the statistics pass).
        self._init_tied(generator, 0.0, input_mean, decoder_bias=True)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        values, indices = torch.topk(pre, self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, indices, values.relu())

    def training_loss(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None) -> LossOutput:
        pre = self.pre_activations(x)
        z = self.activate(pre)
        x_hat = self.decode(z)
        mse = F.mse_loss(x_hat, x)
        auxk = auxk_loss((x - x_hat).detach(), pre, self.W_dec, dead_mask, self.cfg.k_aux)
        loss = mse + self.cfg.aux_coeff * auxk
        return LossOutput(loss, {"mse": mse.detach(), "auxk": auxk.detach()}, z.detach())

    def saelens_export(self):
        arch, tensors, extra = super().saelens_export()
        return arch, tensors, {**extra, "k": self.cfg.k}
