"""folk-rnn v2: one-hot tokens -> stacked LSTM (dropout after each layer) -> softmax.

The step follows the folk-rnn (Lasagne) definition exactly, gate by gate:

    i = σ(x W_xi + h W_hi + b_i)        f = σ(x W_xf + h W_hf + b_f)
    c = f·c + i·tanh(x W_xc + h W_hc + b_c)
    o = σ(x W_xo + h W_ho + b_o)        h = o·tanh(c)

with learned initial hidden and cell states per layer. The first layer's ``x`` is the one-hot
token, so ``x W`` is a row lookup: the input matrix of layer 0 is an embedding of size
``[vocab, hidden]``. For speed the layers run as ``torch.nn.LSTM`` modules, whose gate order
(i, f, g, o) and ``h @ W.T`` layout are mapped from the Lasagne arrays in :meth:`from_lasagne`.
:meth:`run_with_states` also recovers every layer's cell state, which ``nn.LSTM`` keeps to itself.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...registry import Site
from ..interface import Batch, HookPoint, next_token_batch, next_token_loss
from .spec import FolkRNNConfig, folkrnn_sites

__all__ = ["FolkRNN", "FolkRNNConfig"]


class FolkRNN(nn.Module):
    family = "folkrnn"

    def __init__(self, config: FolkRNNConfig):
        super().__init__()
        self.config = config
        H, V = config.hidden_size, config.vocab_size
        self.lstms = nn.ModuleList(
            nn.LSTM(V if layer == 0 else H, H, batch_first=True) for layer in range(config.n_layers)
        )
        self.dropout = nn.Dropout(config.dropout)
        self.h0 = nn.Parameter(torch.zeros(config.n_layers, H))
        self.c0 = nn.Parameter(torch.zeros(config.n_layers, H))
        self.head = nn.Linear(H, V)

    def sites(self) -> list[Site]:
        """The sites :meth:`record` returns (declared in :mod:`.spec`)."""
        return folkrnn_sites(self.config)

    def site_names(self) -> list[str]:
        return [s.name for s in self.sites()]

    def _one_hot(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.one_hot(tokens, self.config.vocab_size).float()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, time, vocab]`` for integer ``tokens [batch, time]``."""
        x = self._one_hot(tokens)
        batch = tokens.shape[0]
        for layer, lstm in enumerate(self.lstms):
            state = (
                self.h0[layer].expand(1, batch, -1).contiguous(),
                self.c0[layer].expand(1, batch, -1).contiguous(),
            )
            x, _ = lstm(x, state)
            x = self.dropout(x)
        return self.head(x)

    def make_batch(self, pieces: Sequence[np.ndarray], vocab, max_len: int | None = None) -> Batch:
        """Each piece framed as folk-rnn reads it, ``<s> tune </s>`` (cut to ``max_len``): inputs
        are the frame without its last token, targets without its first; padded with ``</s>``."""
        return next_token_batch(pieces, vocab.index("<s>"), vocab.index("</s>"), max_len)

    def loss(self, batch: Batch, reduction: str = "mean") -> torch.Tensor:
        """Next-token cross entropy over the valid targets: mean per target, or their sum."""
        return next_token_loss(self(batch.inputs), batch, reduction)

    def record(self, batch: Batch, sites: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.run_batch_with_states(batch.inputs, list(sites))

    def hook_point(self, site: str) -> HookPoint:
        """Replacing ``lstm{l}_h`` changes what the layers above read; the layer's own recurrence
        keeps its true state (``nn.LSTM`` runs it internally), so the replacement does not feed back.
        """
        for layer, lstm in enumerate(self.lstms):
            if site == f"lstm{layer}_h":
                return HookPoint(lstm, (lambda output: output[0]), (lambda output, new: (new, output[1])))
        replaceable = [s.name for s in self.sites() if s.replaceable]
        raise ValueError(f"site {site!r} cannot be replaced in {self.family}; replaceable: {replaceable}")

    @torch.no_grad()
    def run_with_states(self, tokens: torch.Tensor, sites: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Run one sequence ``tokens [time]``; return the requested sites (default all), each ``[time, d]``.

        Sites: ``lstm{l}_h`` (layer output), ``lstm{l}_c`` (cell state) and ``softmax``
        (next-token probabilities). Row ``t`` is the state after reading ``tokens[t]``.
        """
        return {name: a[0] for name, a in self.run_batch_with_states(tokens[None], sites).items()}

    @torch.no_grad()
    def run_batch_with_states(self, tokens: torch.Tensor, sites: list[str] | None = None) -> dict[str, torch.Tensor]:
        """As :meth:`run_with_states` for a batch ``tokens [batch, time]``; sites are ``[batch, time, d]``.

        Sequences may be right-padded: every step depends only on earlier steps, so the rows of
        a shorter sequence are exact up to its length. Only the layers the sites need are run.
        """
        wanted = set(self.site_names() if sites is None else sites)
        last = self.config.n_layers - 1 if "softmax" in wanted else max(
            (int(name[4:].split("_")[0]) for name in wanted if name.startswith("lstm")), default=-1)
        batch, steps = tokens.shape
        x = self._one_hot(tokens)
        out: dict[str, torch.Tensor] = {}
        for layer, lstm in enumerate(self.lstms[: last + 1]):
            h0, c0 = self.h0[layer].expand(batch, -1), self.c0[layer].expand(batch, -1)
            h_seq, _ = lstm(x, (h0[None].contiguous(), c0[None].contiguous()))
            if f"lstm{layer}_c" in wanted:
                # nn.LSTM returns no per-step cell states. The gates at step t depend only on
                # x_t and h_{t-1}, both known now, so they are computed for all steps at once;
                # the cell state is then the elementwise recurrence c_t = f_t·c_{t-1} + i_t·g_t.
                h_prev = torch.cat([h0[:, None], h_seq[:, :-1]], dim=1)
                gates = x @ lstm.weight_ih_l0.T + h_prev @ lstm.weight_hh_l0.T + lstm.bias_ih_l0 + lstm.bias_hh_l0
                i, f, g, _o = gates.chunk(4, dim=-1)
                forget, write = torch.sigmoid(f), torch.sigmoid(i) * torch.tanh(g)
                c, cs = c0, []
                for t in range(steps):
                    c = forget[:, t] * c + write[:, t]
                    cs.append(c)
                out[f"lstm{layer}_c"] = torch.stack(cs, dim=1)
            out[f"lstm{layer}_h"] = h_seq
            x = h_seq
        if "softmax" in wanted:
            out["softmax"] = torch.softmax(self.head(x), dim=-1)
        return {name: out[name] for name in (sites or self.site_names())}

    @torch.no_grad()
    def generate(
        self,
        start: list[int],
        end_id: int,
        max_len: int = 512,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> list[int]:
        """Sample token ids after ``start`` until ``end_id`` or ``max_len`` tokens.

        Runs the LSTMs incrementally, so site replacements (``models.hooks.replace_site``) act at
        every step.
        """
        self.eval()
        states = [(self.h0[i].view(1, 1, -1), self.c0[i].view(1, 1, -1)) for i in range(len(self.lstms))]
        seq = list(start)
        feed = torch.tensor([start])
        while len(seq) < max_len:
            x = self._one_hot(feed)
            for layer, lstm in enumerate(self.lstms):
                x, states[layer] = lstm(x, states[layer])
            logits = self.head(x[0, -1]) / max(temperature, 1e-6)
            nxt = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
            seq.append(nxt)
            if nxt == end_id:
                break
            feed = torch.tensor([[nxt]])
        return seq

    @classmethod
    def from_lasagne(cls, param_values: list, dropout: float = 0.5) -> "FolkRNN":
        """Build a model from folk-rnn's 45 Lasagne arrays (see DESIGN.md for the order).

        ``param_values[0]`` is the one-hot "embedding" (identity), then 14 arrays per layer in
        the order W_in/W_hid/b for ingate, forgetgate, cell, outgate, then cell_init, hid_init;
        then the dense output W ``[hidden, vocab]`` and b.
        """
        n_layers = (len(param_values) - 3) // 14
        if len(param_values) != 3 + 14 * n_layers or n_layers < 1:
            raise ValueError(f"expected 3 + 14·layers arrays, got {len(param_values)}")
        embed = np.asarray(param_values[0])
        vocab, hidden = embed.shape[0], np.asarray(param_values[1]).shape[1]
        model = cls(FolkRNNConfig(vocab_size=vocab, hidden_size=hidden, n_layers=n_layers, dropout=dropout))
        with torch.no_grad():
            for layer in range(n_layers):
                p = [torch.as_tensor(np.asarray(a), dtype=torch.float32) for a in param_values[1 + 14 * layer : 15 + 14 * layer]]
                W_in = [p[0], p[3], p[6], p[9]]  # i, f, c(g), o: [n_in, H], used as x @ W
                W_hid = [p[1], p[4], p[7], p[10]]
                b = [p[2], p[5], p[8], p[11]]
                if layer == 0:
                    # one-hot input through the embedding: x @ E @ W_in
                    W_in = [torch.as_tensor(embed, dtype=torch.float32) @ w for w in W_in]
                lstm = model.lstms[layer]
                lstm.weight_ih_l0.copy_(torch.cat(W_in, dim=1).T)
                lstm.weight_hh_l0.copy_(torch.cat(W_hid, dim=1).T)
                lstm.bias_ih_l0.copy_(torch.cat(b))
                lstm.bias_hh_l0.zero_()
                model.c0[layer].copy_(p[12].reshape(-1))
                model.h0[layer].copy_(p[13].reshape(-1))
            model.head.weight.copy_(torch.as_tensor(np.asarray(param_values[-2]), dtype=torch.float32).T)
            model.head.bias.copy_(torch.as_tensor(np.asarray(param_values[-1]), dtype=torch.float32))
        return model
