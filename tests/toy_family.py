"""A second model family that lives only in the tests: it proves the stages need no family code.

``toymlp`` reads folk-rnn tokens. Each piece gets a *code*, ``tanh(W_c · mean of its token
embeddings)`` (one vector per piece, like a VAE's z); every position then mixes its own embedding
with the code, ``hidden = relu(W_h e_t + U c)`` (one vector per token), and predicts the next token
from ``hidden``. Both sites are replaceable, so an SAE can be spliced into either.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from musinterp.models.interface import Batch, HookPoint, next_token_batch
from musinterp.registry import Family, Site, register


@dataclass
class ToyConfig:
    vocab_size: int | None = None
    d_model: int = 8
    d_code: int = 4

    def to_dict(self) -> dict:
        return asdict(self)


def toy_sites(config: ToyConfig) -> list[Site]:
    return [Site("hidden", "token", config.d_model, replaceable=True),
            Site("code", "piece", config.d_code, replaceable=True)]


class Mixer(nn.Module):
    """``relu(W_h e + U c)``: its forward output is the ``hidden`` site."""

    def __init__(self, d_model: int, d_code: int):
        super().__init__()
        self.embedding_in = nn.Linear(d_model, d_model)
        self.code_in = nn.Linear(d_code, d_model, bias=False)

    def forward(self, embedded, code):
        return torch.relu(self.embedding_in(embedded) + self.code_in(code)[:, None, :])


class ToyMLP(nn.Module):
    family = "toymlp"

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.encode_code = nn.Sequential(nn.Linear(config.d_model, config.d_code), nn.Tanh())  # output: "code"
        self.mix = Mixer(config.d_model, config.d_code)  # output: "hidden"
        self.head = nn.Linear(config.d_model, config.vocab_size)

    def sites(self) -> list[Site]:
        return toy_sites(self.config)

    def _run(self, batch: Batch) -> dict[str, torch.Tensor]:
        embedded = self.embed(batch.inputs)
        mask = batch.mask.float()[..., None]
        mean = (embedded * mask).sum(1) / mask.sum(1).clamp(min=1)
        code = self.encode_code(mean)
        hidden = self.mix(embedded, code)
        return {"code": code, "hidden": hidden, "logits": self.head(hidden)}

    def make_batch(self, pieces, vocab, max_len=None) -> Batch:
        return next_token_batch(pieces, vocab.index("<s>"), vocab.index("</s>"), max_len)

    def loss(self, batch: Batch, reduction: str = "mean") -> torch.Tensor:
        logits = self._run(batch)["logits"]
        targets = batch.targets.masked_fill(~batch.mask, -100)
        return F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction=reduction)

    @torch.no_grad()
    def record(self, batch: Batch, sites) -> dict[str, torch.Tensor]:
        out = self._run(batch)
        return {name: out[name] for name in sites}

    def hook_point(self, site: str) -> HookPoint:
        if site == "code":
            return HookPoint(self.encode_code, lambda out: out, lambda out, new: new)
        if site == "hidden":
            return HookPoint(self.mix, lambda out: out, lambda out, new: new)
        raise ValueError(f"{self.family} has no site {site!r}")


FAMILY = Family(name="toymlp", config=ToyConfig, sites=toy_sites, model="toy_family:ToyMLP",
                formats=("folkrnn-v2",))


def register_toy_family() -> Family:
    return register(FAMILY)
