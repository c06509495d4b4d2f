"""chordlm as the registry sees it: config dataclass, sites, formats (no torch here).

Decoder-only transformers of 1, 2 or 3 layers, attention-only (``d_mlp = 0``) or with GELU MLPs,
trained here on chord progressions (study S4, induction heads). Parameter and hook names are
TransformerLens's ``HookedTransformer`` ones (``blocks.0.attn.W_Q``, ``blocks.0.hook_resid_pre``, …),
so analyses written against TransformerLens read the same names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from musinterp.registry import Family, Site

NORMALIZATIONS = ("ln", "none")


@dataclass
class ChordLMConfig:
    """A transformer small enough to train on 2 CPU cores in minutes (about 0.1 M parameters with
    the defaults). On a GPU, sizes in the range of the induction-head literature train in the same
    code, e.g. ``d_model=256, n_heads=8, d_head=32, d_mlp=1024, n_ctx=512``.

    - ``d_mlp = 0``: attention-only (no MLP, no ``hook_resid_mid``);
    - ``normalization``: ``"ln"`` pre-LN LayerNorms (``ln1``, ``ln2``, ``ln_final``) or ``"none"``
      (no LayerNorm at all: the residual stream is linear in the embeddings up to attention, as
      hand-set-weight tests and the circuit analyses of attention-only models want);
    - ``dropout`` on the embeddings and on each sublayer's output (never on attention patterns).
    """

    vocab_size: int | None = None  # set from the corpus when the model is built
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    d_head: int = 16
    d_mlp: int = 256  # 0: attention-only
    n_ctx: int = 256
    normalization: str = "ln"  # "ln" or "none"
    dropout: float = 0.0

    def __post_init__(self):
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"chordlm: normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        for name in ("n_layers", "d_model", "n_heads", "d_head", "n_ctx"):
            if getattr(self, name) < 1:
                raise ValueError(f"chordlm: {name} must be at least 1, got {getattr(self, name)}")
        if self.d_mlp < 0:
            raise ValueError(f"chordlm: d_mlp must be 0 (attention-only) or more, got {self.d_mlp}")

    @property
    def attn_only(self) -> bool:
        return self.d_mlp == 0

    def to_dict(self) -> dict:
        return asdict(self)


def chordlm_sites(config: ChordLMConfig) -> list[Site]:
    """Per layer, in forward order: the residual stream entering the block (``hook_resid_pre``),
    the attention output (``hook_attn_out``), with an MLP the residual between the sublayers
    (``hook_resid_mid``) and the MLP's post-GELU neurons (``mlp.hook_post``, width ``d_mlp``), then
    the residual leaving the block (``hook_resid_post``). All per token and replaceable. Attention
    patterns (``blocks.{l}.attn.hook_pattern``, ``[B, H, T, T]``) can be recorded too but are
    not sites (they are not one vector per token)."""
    sites = []
    d = config.d_model
    for layer in range(config.n_layers):
        p = f"blocks.{layer}"
        sites.append(Site(f"{p}.hook_resid_pre", "token", d, replaceable=True))
        sites.append(Site(f"{p}.hook_attn_out", "token", d, replaceable=True))
        if not config.attn_only:
            sites.append(Site(f"{p}.hook_resid_mid", "token", d, replaceable=True))
            sites.append(Site(f"{p}.mlp.hook_post", "token", config.d_mlp, replaceable=True))
        sites.append(Site(f"{p}.hook_resid_post", "token", d, replaceable=True))
    return sites


FAMILY = Family(
    name="chordlm",
    config=ChordLMConfig,
    sites=chordlm_sites,
    model="musinterp.models.chordlm.model:ChordLM",
    formats=("chords",),
)
