"""What every SAE architecture shares: parameters, decoding, the decoder-norm constraint, revival
of dead latents by resampling, and the export to SAELens tensors.

Every architecture works in the *normalised* input space ``x_n`` that the trainer feeds it (see
:attr:`SparseAutoencoder.input_normalisation`) and has the parameters

    W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in] (absent in relu_l1)

with

    pre = (x_n − b_dec) @ W_enc + b_enc        the pre-activations (b_dec subtracted if present)
    z   = σ(pre)                               the latents; σ is what differs between architectures
    x̂_n = z @ W_dec + b_dec

Row ``j`` of ``W_dec`` is latent ``j``'s direction; every architecture keeps it at unit norm
after each optimiser step, so a latent's size lives in ``z`` alone.

Resampling dead latents (Anthropic, "Towards Monosemanticity", 2023), available to every
architecture through :meth:`SparseAutoencoder.resample_dead_latents`: given a batch of inputs
``x_n`` and the set D of dead latents,

    ℓ_i    = ‖x_i − x̂_i‖²                    the reconstruction loss of input i
    p_i    = ℓ_i² / Σ_t ℓ_t²                  inputs the SAE reconstructs badly are picked more often
    for each dead latent j, draw i ~ p and set
    W_dec[j]    = u_i = (x_i − b_dec) / ‖x_i − b_dec‖
    W_enc[:, j] = 0.2 · mean_{alive l} ‖W_enc[:, l]‖ · u_i
    b_enc[j]    = 0
    and reset the Adam moments (exp_avg, exp_avg_sq) of those entries to 0.

so a revived latent starts as a detector of an input the dictionary misses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

# How a trainer normalises inputs before the SAE sees them (and folds the normalisation into the
# exported weights): "per_dimension" z-scores every dimension with the training tokens' mean and
# std; "scalar" multiplies every input by one number s, chosen so that E‖s·x‖² = d_in over the
# training tokens (SAELens's "expected_average_only_in", with the root mean square norm).
INPUT_NORMALISATIONS = ("per_dimension", "scalar")

# Fields of every architecture's config dataclass that come from the data, not from settings.
DIMENSION_FIELDS = ("d_in", "d_sae")

RESAMPLE_ENCODER_SCALE = 0.2  # Anthropic's factor for a revived latent's encoder column


class LossOutput(NamedTuple):
    """What :meth:`SparseAutoencoder.training_loss` returns.

    ``loss`` is the scalar to minimise; ``parts`` its named components, detached, logged as
    columns of ``training_log.tsv`` (always the same names for an architecture); ``latents`` the
    batch's ``z`` (detached), from which the trainer counts which latents fired.
    """

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]
    latents: torch.Tensor


def check_dimensions(d_in: int, d_sae: int) -> None:
    for name, value in (("d_in", d_in), ("d_sae", d_sae)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def random_unit_rows(n: int, d: int, generator: torch.Generator | None) -> torch.Tensor:
    rows = torch.randn(n, d, generator=generator)
    return rows / rows.norm(dim=1, keepdim=True)


def zero_adam_moments(optimizer: torch.optim.Optimizer | None, param: torch.Tensor, index) -> None:
    """Forget Adam's running moments for ``param[index]`` (no-op before the first step)."""
    if optimizer is None:
        return
    state = optimizer.state.get(param)
    if not state:
        return
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][index] = 0.0


class SparseAutoencoder(nn.Module):
    """Base class; a subclass sets the class attributes below and defines ``activate`` and
    ``training_loss`` (and ``__init__`` creating the parameters).

    The interface the shared trainer relies on (:mod:`musinterp.sae.trainer`):

    - ``config_class``: the architecture's config dataclass. Its fields are ``d_in``, ``d_sae``
      and the architecture's own settings with their defaults; ``__post_init__`` validates them
      (raises ``ValueError``). :meth:`setting_names` lists those settings; the trainer passes
      each architecture only its own (:mod:`musinterp.sae.settings`);
    - ``config_from_settings(d_in, d_sae, settings)`` (classmethod): the config from a mapping of
      the architecture's settings (a value of ``None`` means "the default");
    - ``from_settings(d_in, d_sae, settings, generator, input_mean)`` (classmethod): a fresh model;
      ``input_mean`` is the mean of the normalised training inputs (decoder-bias initialisation);
    - ``encode``, ``decode``, ``forward`` (→ ``x̂, z``): inference, in the normalised space;
    - ``training_loss(x, dead_mask)`` → :class:`LossOutput`; ``dead_mask`` [d_sae] marks the
      latents that have not fired for the trainer's ``dead_tokens`` training tokens;
    - ``after_optimizer_step()``: constraints (unit-norm decoder rows);
    - ``resample_dead_latents(x, dead_mask, optimizer, generator)``: revival by resampling;
    - ``saelens_export()`` → (SAELens architecture, tensors in the normalised space, extra cfg
      fields); the tensors follow SAELens's equations with
      ``apply_b_dec_to_input = cls.apply_b_dec_to_input``, which the trainer folds away.
    """

    config_class: type = object
    saelens_architecture: str = ""
    input_normalisation: str = "scalar"
    apply_b_dec_to_input: bool = True
    # names of the parts training_loss reports, in order (the training log's columns)
    loss_parts: tuple[str, ...] = ()

    cfg: Any
    W_enc: nn.Parameter
    b_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter | None

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def setting_names(cls) -> tuple[str, ...]:
        """The architecture's own settings: its config dataclass's fields but ``d_in``, ``d_sae``."""
        return tuple(f.name for f in dataclasses.fields(cls.config_class) if f.name not in DIMENSION_FIELDS)

    @classmethod
    def config_from_settings(cls, d_in: int, d_sae: int, settings: Mapping[str, Any]):
        """The validated config; ``settings`` holds only this architecture's settings (see
        :meth:`setting_names`), where ``None`` means the config dataclass's default."""
        unknown = sorted(set(settings) - set(cls.setting_names()))
        if unknown:
            raise ValueError(f"{cls.__name__} has no settings {unknown}; its settings: {list(cls.setting_names())}")
        given = {name: value for name, value in settings.items() if value is not None}
        return cls.config_class(d_in=d_in, d_sae=d_sae, **given)

    @classmethod
    def from_settings(
        cls,
        d_in: int,
        d_sae: int,
        settings: Mapping[str, Any],
        generator: torch.Generator | None = None,
        input_mean: torch.Tensor | None = None,
    ):
        return cls(
            cls.config_from_settings(d_in, d_sae, settings), generator=generator, input_mean=input_mean
        )

    def _init_tied(self, generator: torch.Generator | None, b_enc: float, input_mean, decoder_bias: bool):
        """Random unit decoder rows, the encoder their transpose (each latent first reads the
        direction it writes), a constant encoder bias, and ``b_dec`` the mean input (or none)."""
        d_in, d_sae = self.cfg.d_in, self.cfg.d_sae
        W_dec = random_unit_rows(d_sae, d_in, generator)
        self.W_enc = nn.Parameter(W_dec.T.clone().contiguous())
        self.b_enc = nn.Parameter(torch.full((d_sae,), float(b_enc)))
        self.W_dec = nn.Parameter(W_dec)
        if decoder_bias:
            mean = (
                torch.zeros(d_in) if input_mean is None else torch.as_tensor(input_mean, dtype=torch.float32)
            )
            if mean.shape != (d_in,):
                raise ValueError(f"input_mean must have shape ({d_in},), got {tuple(mean.shape)}")
            self.b_dec = nn.Parameter(mean.clone())
        else:
            self.b_dec = None

    # --- inference ------------------------------------------------------------------------------

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        if self.b_dec is not None and self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre_activations(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        x_hat = z @ self.W_dec
        return x_hat if self.b_dec is None else x_hat + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z), z

    def training_loss(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None) -> LossOutput:
        raise NotImplementedError

    # --- training helpers -----------------------------------------------------------------------

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Project the decoder back onto unit-norm rows (one row = one latent's direction)."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def resample_dead_latents(
        self,
        x: torch.Tensor,
        dead_mask: torch.Tensor,
        optimizer: torch.optim.Optimizer | None,
        generator: torch.Generator | None,
    ) -> int:
        """Re-initialise the dead latents towards badly reconstructed inputs of ``x`` (see the
        module docstring); return how many were resampled."""
        dead = torch.nonzero(dead_mask).flatten()
        if len(dead) == 0:
            return 0
        x_hat, _ = self(x)
        loss_per_input = ((x - x_hat) ** 2).sum(dim=1).to(torch.float64).cpu()
        weights = loss_per_input**2
        if not bool(weights.sum() > 0) or not bool(torch.isfinite(weights).all()):
            return 0  # nothing is badly reconstructed (or nothing usable): nothing to aim at
        picks = torch.multinomial(weights, len(dead), replacement=True, generator=generator).to(x.device)
        centred = x[picks] if self.b_dec is None else x[picks] - self.b_dec
        directions = centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-12)
        alive = ~dead_mask
        encoder_norm = self.W_enc[:, alive].norm(dim=0).mean() if bool(alive.any()) else torch.tensor(1.0)
        self.W_dec[dead] = directions
        self.W_enc[:, dead] = directions.T * (RESAMPLE_ENCODER_SCALE * encoder_norm)
        self.b_enc[dead] = 0.0
        zero_adam_moments(optimizer, self.W_dec, (dead, slice(None)))
        zero_adam_moments(optimizer, self.W_enc, (slice(None), dead))
        zero_adam_moments(optimizer, self.b_enc, (dead,))
        self._reset_latents(dead, optimizer)
        return len(dead)

    def _reset_latents(self, latents: torch.Tensor, optimizer: torch.optim.Optimizer | None) -> None:
        """Hook for per-latent state beyond W_enc, b_enc and W_dec (e.g. JumpReLU thresholds)."""

    # --- export ---------------------------------------------------------------------------------

    def _export_tensors(self) -> dict[str, torch.Tensor]:
        b_dec = torch.zeros(self.cfg.d_in) if self.b_dec is None else self.b_dec.detach()
        return {
            "W_enc": self.W_enc.detach().cpu().clone(),
            "b_enc": self.b_enc.detach().cpu().clone(),
            "W_dec": self.W_dec.detach().cpu().clone(),
            "b_dec": b_dec.cpu().clone(),
        }

    @torch.no_grad()
    def saelens_export(self) -> tuple[str, dict[str, torch.Tensor], dict[str, Any]]:
        """SAELens architecture name, tensors in the normalised space, and extra cfg fields."""
        return self.saelens_architecture, self._export_tensors(), {}
