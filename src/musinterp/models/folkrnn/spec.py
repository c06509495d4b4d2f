"""folk-rnn as the registry sees it: config dataclass, sites, importers, formats (no torch here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from musinterp.registry import Family, Site


@dataclass
class FolkRNNConfig:
    """folk-rnn v2's published size by default (3 LSTM layers of 512, dropout 0.5)."""

    vocab_size: int | None = None  # set from the corpus (or the checkpoint) when the model is built
    hidden_size: int = 512
    n_layers: int = 3
    dropout: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)


def folkrnn_sites(config: FolkRNNConfig) -> list[Site]:
    """Per layer the output ``lstm{l}_h`` (replaceable: the layers above read it) and the cell state
    ``lstm{l}_c`` (inside the recurrence, so recorded only); then the next-token ``softmax``."""
    sites = []
    for layer in range(config.n_layers):
        sites.append(Site(f"lstm{layer}_h", "token", config.hidden_size, replaceable=True))
        sites.append(Site(f"lstm{layer}_c", "token", config.hidden_size, replaceable=False))
    return sites + [Site("softmax", "token", config.vocab_size, replaceable=False)]


FAMILY = Family(
    name="folkrnn",
    config=FolkRNNConfig,
    sites=folkrnn_sites,
    model="musinterp.models.folkrnn.model:FolkRNN",
    formats=("folkrnn-v2",),
    importers={"lasagne-pickle": "musinterp.models.folkrnn.lasagne_import:import_folkrnn"},
)
