"""chordlm: a small decoder-only transformer with TransformerLens's names, written out in full.

Per block (pre-LN; ``ln`` is the identity when ``normalization == "none"``)::

    x = hook_resid_pre(x)
    q, k, v = ln1(x) W_{Q,K,V}[h] + b_{Q,K,V}[h]            per head h: [B, T, d_head]
    pattern = softmax(causal(q kᵀ / sqrt(d_head)))          [B, H, T, T] (query, key)
    z = pattern v                                           [B, T, H, d_head]
    x = hook_resid_mid(x + hook_attn_out(Σ_h z[h] W_O[h] + b_O))
    x = hook_resid_post(x + hook_mlp_out(gelu(ln2(x) W_in + b_in) W_out + b_out))

then ``logits = ln_final(x) W_U + b_U``; the stream starts as ``hook_embed(W_E[tokens]) +
hook_pos_embed(W_pos[positions])``. Without an MLP (``d_mlp = 0``) the block ends after attention
(no ``hook_resid_mid``). Parameter names and shapes are those of TransformerLens's
``HookedTransformer`` (``embed.W_E [V, d_model]``, ``blocks.{l}.attn.W_Q [H, d_model, d_head]``,
``blocks.{l}.mlp.W_in [d_model, d_mlp]``, ``blocks.{l}.ln1.w``, ``unembed.W_U [d_model, V]``, …),
so a state dict moves between the two as it is.

Every named activation is a :class:`Hook`, an identity module: a PyTorch forward hook on it reads
or replaces the activation (:func:`musinterp.models.hooks.replace_site`, :meth:`ChordLM.run_with_cache`,
:meth:`ChordLM.ablate_heads`). Keys can be computed from another residual stream than the queries
and values (``key_input_override``, TransformerLens's "split qkv input"), which K-composition
patching needs.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...registry import Site
from ..hooks import replace_site
from ..interface import Batch, HookPoint, next_token_batch, next_token_loss
from .spec import ChordLMConfig, chordlm_sites

__all__ = ["ChordLM", "ChordLMConfig", "Hook"]


class Hook(nn.Module):
    """A named activation: the identity, so forward hooks on it can read and replace the value."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class LayerNorm(nn.Module):
    """TransformerLens's LayerNorm: parameters ``w`` and ``b``, eps 1e-5."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d))
        self.b = nn.Parameter(torch.zeros(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(-1, keepdim=True)
        return x / (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt() * self.w + self.b


def _norm(config: ChordLMConfig) -> nn.Module:
    return LayerNorm(config.d_model) if config.normalization == "ln" else nn.Identity()


class Embed(nn.Module):
    def __init__(self, vocab: int, d_model: int):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(vocab, d_model))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.W_E[tokens]


class PosEmbed(nn.Module):
    def __init__(self, n_ctx: int, d_model: int):
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(n_ctx, d_model))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.W_pos[: tokens.shape[1]][None].expand(tokens.shape[0], -1, -1)


class Unembed(nn.Module):
    def __init__(self, d_model: int, vocab: int):
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(d_model, vocab))
        self.b_U = nn.Parameter(torch.zeros(vocab))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W_U + self.b_U


class Attention(nn.Module):
    """Causal multi-head attention with per-head weight tensors (TransformerLens layout)."""

    def __init__(self, config: ChordLMConfig):
        super().__init__()
        H, d, e = config.n_heads, config.d_model, config.d_head
        self.W_Q, self.W_K, self.W_V = (nn.Parameter(torch.empty(H, d, e)) for _ in range(3))
        self.b_Q, self.b_K, self.b_V = (nn.Parameter(torch.zeros(H, e)) for _ in range(3))
        self.W_O = nn.Parameter(torch.empty(H, e, d))
        self.b_O = nn.Parameter(torch.zeros(d))
        self.scale = 1.0 / math.sqrt(e)
        self.hook_q, self.hook_k, self.hook_v = Hook(), Hook(), Hook()  # [B, T, H, d_head]
        self.hook_attn_scores = Hook()  # [B, H, T, T], masked (−inf above the diagonal), pre-softmax
        self.hook_pattern = Hook()  # [B, H, T, T] after softmax: row = query, column = key
        self.hook_z = Hook()  # [B, T, H, d_head]

    @staticmethod
    def _project(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``x [B, T, d]`` (all heads read it) or ``[B, T, H, d]`` (one input per head) -> ``[B, T, H, e]``."""
        if x.dim() == 4:
            return torch.einsum("bthd,hde->bthe", x, W) + b
        return torch.einsum("btd,hde->bthe", x, W) + b

    def forward(self, x: torch.Tensor, key_input: torch.Tensor | None = None) -> torch.Tensor:
        q = self.hook_q(self._project(x, self.W_Q, self.b_Q))
        k = self.hook_k(self._project(x if key_input is None else key_input, self.W_K, self.b_K))
        v = self.hook_v(self._project(x, self.W_V, self.b_V))
        T = x.shape[1]
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * self.scale
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        scores = self.hook_attn_scores(scores.masked_fill(future, float("-inf")))
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
        z = self.hook_z(torch.einsum("bhqk,bkhe->bqhe", pattern, v))
        return torch.einsum("bqhe,hed->bqd", z, self.W_O) + self.b_O


class MLP(nn.Module):
    def __init__(self, config: ChordLMConfig):
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(config.d_model, config.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(config.d_mlp))
        self.W_out = nn.Parameter(torch.empty(config.d_mlp, config.d_model))
        self.b_out = nn.Parameter(torch.zeros(config.d_model))
        self.hook_pre, self.hook_post = Hook(), Hook()  # [B, T, d_mlp] before and after the GELU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        post = self.hook_post(F.gelu(self.hook_pre(x @ self.W_in + self.b_in)))
        return post @ self.W_out + self.b_out


class Block(nn.Module):
    def __init__(self, config: ChordLMConfig):
        super().__init__()  # modules in forward order, so hook_names() lists them that way
        self.hook_resid_pre = Hook()
        self.ln1 = _norm(config)
        self.attn = Attention(config)
        self.hook_attn_out = Hook()
        self.mlp = None
        if not config.attn_only:
            self.hook_resid_mid = Hook()
            self.ln2 = _norm(config)
            self.mlp = MLP(config)
            self.hook_mlp_out = Hook()
        self.hook_resid_post = Hook()
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, key_input: torch.Tensor | None = None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        normed = self.ln1(x)
        attn = self.attn(normed, None if key_input is None else self.ln1(key_input))
        x = x + self.hook_attn_out(self.dropout(attn))
        if self.mlp is not None:
            x = self.hook_resid_mid(x)
            x = x + self.hook_mlp_out(self.dropout(self.mlp(self.ln2(x))))
        return self.hook_resid_post(x)


class ChordLM(nn.Module):
    family = "chordlm"

    def __init__(self, config: ChordLMConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("chordlm: vocab_size must be set (from the corpus) to build a model")
        self.config = config
        V, d = config.vocab_size, config.d_model
        self.embed = Embed(V, d)
        self.hook_embed = Hook()
        self.pos_embed = PosEmbed(config.n_ctx, d)
        self.hook_pos_embed = Hook()
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_final = _norm(config)
        self.unembed = Unembed(d, V)
        self.hooks: dict[str, Hook] = {name: m for name, m in self.named_modules() if isinstance(m, Hook)}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 style: weight matrices N(0, 0.02²), biases 0, LayerNorm w = 1 (as nanoGPT)."""
        for name, p in self.named_parameters():
            if name.split(".")[-1].startswith("W_"):
                nn.init.normal_(p, std=0.02)

    # --- running -------------------------------------------------------------------------------

    def forward(self, tokens: torch.Tensor, key_input_override: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits ``[B, T, vocab]`` for ``tokens [B, T]`` (``T ≤ n_ctx``).

        ``key_input_override`` (layer -> residual stream) makes that layer compute its keys, and
        only its keys, from the given tensor instead of its own ``hook_resid_pre`` (queries and
        values keep reading the block's input). The tensor is a residual stream, before ``ln1``
        (the layer applies its ``ln1`` to it): ``[B, T, d_model]`` for every head of the layer, or
        ``[B, T, n_heads, d_model]`` for one stream per head (TransformerLens's split qkv input,
        ``hook_k_input``). E.g. K-composition: pass ``resid_pre + (patched − clean) output of an
        earlier head`` so that only the later layer's keys see the patch.
        """
        T = tokens.shape[1]
        if T > self.config.n_ctx:
            raise ValueError(f"chordlm: {T} positions exceed the context of {self.config.n_ctx}")
        overrides = key_input_override or {}
        unknown = sorted(set(overrides) - set(range(self.config.n_layers)))
        if unknown:
            raise ValueError(f"chordlm: key_input_override for layers {unknown}; the model has {self.config.n_layers}")
        x = self.dropout(self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(self.pos_embed(tokens)))
        for layer, block in enumerate(self.blocks):
            x = block(x, overrides.get(layer))
        return self.unembed(self.ln_final(x))

    def hook_names(self) -> list[str]:
        """Every named activation, in module order (TransformerLens's names)."""
        return list(self.hooks)

    def _hook(self, name: str) -> Hook:
        alias = _attn_alias(name)
        if alias is not None:
            name = alias
        if name not in self.hooks:
            raise ValueError(f"chordlm has no activation {name!r}; known: {self.hook_names()}")
        return self.hooks[name]

    @torch.no_grad()
    def run_with_cache(
        self, tokens: torch.Tensor, names: Sequence[str] | None = None,
        key_input_override: dict[int, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(logits, {name: activation})`` for the named activations (default: all), without
        gradients. Names are :meth:`hook_names`; ``attn{l}`` is short for ``blocks.{l}.attn.hook_pattern``."""
        names = self.hook_names() if names is None else list(names)
        cache: dict[str, torch.Tensor] = {}
        handles = []
        for name in names:
            def keep(_module, _inputs, output, name=name):
                cache[name] = output.detach()

            handles.append(self._hook(name).register_forward_hook(keep))
        try:
            logits = self(tokens, key_input_override)
        finally:
            for handle in handles:
                handle.remove()
        return logits, {name: cache[name] for name in names}

    @contextlib.contextmanager
    def ablate_heads(self, layer: int, heads: Sequence[int], value: torch.Tensor | float = 0.0) -> Iterator[None]:
        """Inside the block, the given heads of ``layer`` output ``value`` in ``hook_z`` (zero
        ablation by default; pass a ``[T, len(heads), d_head]``-broadcastable mean for mean ablation)."""
        heads = list(heads)

        def ablate(z: torch.Tensor) -> torch.Tensor:
            z = z.clone()
            z[:, :, heads] = value
            return z

        with replace_site(self, f"blocks.{layer}.attn.hook_z", ablate):
            yield

    # --- the family interface ------------------------------------------------------------------

    def sites(self) -> list[Site]:
        """The sites :meth:`record` returns (declared in :mod:`.spec`)."""
        return chordlm_sites(self.config)

    def make_batch(self, pieces: Sequence[np.ndarray], vocab, max_len: int | None = None) -> Batch:
        """Each piece framed ``<s> chords </s>``, cut to the context: at most ``n_ctx`` inputs
        (``max_len``, the framed length, defaults to and is capped at ``n_ctx + 1``)."""
        limit = self.config.n_ctx + 1
        max_len = limit if max_len is None else min(max_len, limit)
        return next_token_batch(pieces, vocab.index("<s>"), vocab.index("</s>"), max_len)

    def loss(self, batch: Batch, reduction: str = "mean") -> torch.Tensor:
        """Next-token cross entropy over the valid targets: mean per target, or their sum."""
        return next_token_loss(self(batch.inputs), batch, reduction)

    def record(self, batch: Batch, sites: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token sites ``[B, T, d]``; also any other activation name (``blocks.{l}.attn.hook_pattern``
        or ``attn{l}``: ``[B, H, T, T]``)."""
        return self.run_with_cache(batch.inputs, list(sites))[1]

    def hook_point(self, site: str) -> HookPoint:
        """Any named activation (every site, and also ``hook_z``, ``hook_pattern``, …) can be replaced."""
        return HookPoint(self._hook(site), (lambda output: output), (lambda output, new: new))

    @torch.no_grad()
    def generate(
        self,
        start: list[int],
        end_id: int,
        max_len: int = 512,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> list[int]:
        """Sample token ids after ``start`` until ``end_id``, ``max_len`` tokens, or a full
        context (``n_ctx`` inputs, so at most ``n_ctx + 1`` tokens). Each step reruns the whole
        prefix, so site replacements act at every step."""
        self.eval()
        seq = list(start)
        if not seq or len(seq) > self.config.n_ctx:
            raise ValueError(f"chordlm: start must have 1..{self.config.n_ctx} tokens, got {len(seq)}")
        limit = min(max_len, self.config.n_ctx + 1)
        while len(seq) < limit:
            logits = self(torch.tensor([seq]))[0, -1] / max(temperature, 1e-6)
            nxt = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
            seq.append(nxt)
            if nxt == end_id:
                break
        return seq


def _attn_alias(name: str) -> str | None:
    """``attn{l}`` (the interface's name for attention patterns) -> ``blocks.{l}.attn.hook_pattern``."""
    if name.startswith("attn") and name[4:].isdigit():
        return f"blocks.{int(name[4:])}.attn.hook_pattern"
    return None
