"""Study S2, tunes: folk-rnn token lists, generation, teacher forcing and bars.

Conventions
-----------
- A *tune* is a list of folk-rnn token strings as the model reads it: ``<s>``, the header
  (``M:4/4 K:Cmaj``), the body, and ``</s>`` when it has one. :func:`tune_tokens` makes one from
  plain text such as Sturm's blog reel (:data:`BLOG_REEL`); :func:`parse_tune` turns it into ids
  under a vocabulary and names every unknown token in its ``ValueError``.
- Teacher forcing (:func:`teacher_force`) feeds ``tokens[:-1]``; step ``t`` is the state after
  reading ``tokens[t]``, and the *emitted symbol* of step ``t`` is ``tokens[t + 1]``, the token the
  model predicts there (the x-axis labels of every per-step plot).
- *Activations* are the LSTM layer outputs ``h = o·tanh(c)`` (site ``lstm{l}_h``), in ``[-1, 1]``;
  the *last layer* is the one the softmax reads. Cell states are not analysed here.
- *Bar length* (:func:`bar_length`): the most common distance, in tokens, from one bar-line token
  (``|``, ``||``, ``|:``, ``:|``, ``|1``, ...) to the next, counting the bar line itself, so a reel
  bar of 8 notes and ``|`` has bar length 9. Distance 1 (adjacent marks such as ``:| |:``) is ignored.
- log10 probabilities are clipped below at −10 (:data:`LOG10_FLOOR`).

Bar durations (:func:`bar_durations`)
-------------------------------------
A bar is a maximal run of tokens between two runs of bar-line tokens. Its duration, in units of L
(1/8 unless an ``[L:]`` token says otherwise), is the metric position that
:func:`musinterp.corpus.tokens.annotate_tune` gives the closing bar line, so broken rhythm
(``A > B``: 3/2 + 1/2), tuplets (``(3``: three in the time of two), chords and duration tokens
are all counted as ABC defines them. The expected duration is the latest meter (``M:``) over L.
A bar is *evaluated* only when it has a bar line on both sides, neither of which is a repeat or
ending mark (``|:`` ``:|`` ``::`` ``|1`` ``|2`` ...; pickups and repeat ends are legitimately
short), and a meter is known; the first bar (before the first bar line, possibly an anacrusis) and
the last one (without a closing bar line) are not evaluated. It is *correct* when its duration
equals the expected one (to 1e-4).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..corpus.tokens import annotate_tune, parse_meter, parse_unit, token_type

LOG10_FLOOR = -10.0
BAR_TYPES = ("bar", "repeat")
BOS, EOS = "<s>", "</s>"

#: The C-major reel folk-rnn v2 generated in Sturm's blog (bars of 8 notes + ``|`` = 9 tokens);
#: the tune S2 analyses when a subject's ``s2:`` section gives none.
BLOG_REEL = (
    "M:4/4 K:Cmaj B, | G, C C 2 G, C E C | G, C E G F D B, D | G, C C 2 G, C E G | F E D E C E A, B, "
    "| G, C C 2 G, C E C | G, C E F G 3 A | B c d B c B G F | D E F D C 3 :| |: D | E C C 2 D B, G, A, "
    "| B, C D E F 2 D F | E C C 2 D E F D | G ^F G A B 2 A B | G c c B c 2 B c | d e d c B d c B "
    "| G E F D G F D F | E C B, D C 3 :|"
)


# --- tunes -------------------------------------------------------------------------------------


def read_tunes(path: str | Path) -> list[str]:
    """Tunes of a text file in folk-rnn token format (tunes separated by blank lines; a tune may
    span several lines, e.g. ``M:4/4`` / ``K:Cmaj`` / body), each as one space-separated string."""
    text = Path(path).read_text(encoding="utf-8")
    blocks = [" ".join(block.split()) for block in text.replace("\r\n", "\n").split("\n\n")]
    tunes = [b for b in blocks if b]
    if not tunes:
        raise ValueError(f"{path}: no tune found")
    return tunes


def tune_tokens(tune: str | Sequence[str]) -> list[str]:
    """``<s>`` + the tokens of ``tune`` (a whitespace-separated string or a token list) + ``</s>``;
    specials already present are kept, not doubled."""
    toks = tune.split() if isinstance(tune, str) else [str(t) for t in tune]
    if not toks or toks == [BOS] or toks == [BOS, EOS]:
        raise ValueError("empty tune")
    if toks[0] != BOS:
        toks = [BOS] + toks
    if toks[-1] != EOS:
        toks = toks + [EOS]
    return toks


def parse_tune(tune: str | Sequence[str], vocab: Sequence[str], name: str = "tune") -> list[int]:
    """Token ids of a tune given as plain folk-rnn tokens, with ``<s>``/``</s>`` added.

    Raises ``ValueError`` naming every token that is not in ``vocab``.
    """
    return encode(tune_tokens(tune), vocab, name=name)


def encode(tokens: Sequence[str], vocab: Sequence[str], name: str = "tune") -> list[int]:
    """Ids of ``tokens`` under ``vocab``; a ``ValueError`` names the unknown tokens."""
    stoi = {t: i for i, t in enumerate(vocab)}
    unknown = sorted({t for t in tokens if t not in stoi})
    if unknown:
        raise ValueError(
            f"{name}: {len(unknown)} token(s) not in the model's vocabulary of {len(vocab)}: "
            f"{', '.join(repr(t) for t in unknown)}")
    return [stoi[t] for t in tokens]


def _generator(seed: int | torch.Generator) -> torch.Generator:
    return seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block: token-by-token steps of a small LSTM are far
    faster without a thread pool's hand-offs (about 20× on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def generate_tune(model, vocab: Sequence[str], seed: int | torch.Generator = 0, temperature: float = 1.0,
                  max_len: int = 512) -> list[str]:
    """Sample one tune from ``<s>`` (a seeded ``torch.Generator``, or a generator to continue);
    returns its tokens, ``<s>`` first and ``</s>`` last unless ``max_len`` was reached.

    Interventions active around the call (:func:`.folkrnn_interventions.clamp_units`) act at every step.
    """
    stoi = {t: i for i, t in enumerate(vocab)}
    with one_thread():
        ids = model.generate([stoi[BOS]], stoi[EOS], max_len=max_len, temperature=temperature,
                             generator=_generator(seed))
    return [vocab[i] for i in ids]


# --- teacher forcing ---------------------------------------------------------------------------


@dataclass
class TuneRun:
    """One tune read by the model with teacher forcing.

    ``states[site]`` is ``[T, d]`` for ``T = len(tokens) - 1`` steps; row ``t`` is the state after
    reading ``tokens[t]``; ``probs[t]`` the next-token distribution there; ``emitted[t] = tokens[t+1]``.
    """

    tokens: list[str]
    states: dict[str, np.ndarray]
    probs: np.ndarray

    @property
    def emitted(self) -> list[str]:
        return self.tokens[1:]

    @property
    def n_layers(self) -> int:
        return sum(1 for s in self.states if s.endswith("_h"))

    def acts(self, layer: int) -> np.ndarray:
        """Layer ``layer``'s outputs ``h`` ``[T, d]`` (negative counts from the last layer)."""
        return self.states[f"lstm{layer % self.n_layers}_h"]


def teacher_force(model, vocab: Sequence[str], tokens: Sequence[str], name: str = "tune") -> TuneRun:
    """Run ``tokens`` (``<s>`` first) through the model and keep every site (see :class:`TuneRun`)."""
    if len(tokens) < 2:
        raise ValueError(f"{name}: a tune needs at least two tokens to predict one")
    ids = torch.tensor(encode(tokens, vocab, name=name)[:-1])
    model.eval()
    with one_thread():
        states = {k: v.float().numpy() for k, v in model.run_with_states(ids).items()}
    probs = states.pop("softmax")
    return TuneRun(tokens=list(tokens), states=states, probs=probs)


def log10_probabilities(probs: np.ndarray, floor: float = LOG10_FLOOR) -> np.ndarray:
    """``log10`` of probabilities ``[T, V]``, clipped below at ``floor`` (−10): the heatmap data."""
    with np.errstate(divide="ignore"):
        return np.maximum(np.log10(np.asarray(probs, dtype=np.float64)), floor)


# --- bars ------------------------------------------------------------------------------------


def bar_length(tokens: Sequence[str]) -> int | None:
    """Most common distance in tokens between successive bar-line tokens (9 for a reel bar of
    8 notes + ``|``); adjacent marks (distance 1) are ignored; None with fewer than two bar lines."""
    where = [i for i, t in enumerate(tokens) if token_type(t) in BAR_TYPES]
    gaps = Counter(b - a for a, b in pairwise(where) if b - a > 1)
    if not gaps:
        return None
    best = max(gaps.values())
    return min(g for g, c in gaps.items() if c == best)


def bar_durations(tokens: Sequence[str], tol: float = 1e-4) -> pd.DataFrame:
    """One row per bar of a tune: ``bar`` (0-based), ``start``/``end`` (token range, ``end`` the
    closing bar line), ``text``, ``duration`` and ``expected`` (units of L), ``opens_with``,
    ``closes_with``, ``evaluated``, ``reason`` (why not), ``correct`` (rule in the module docstring)."""
    tokens = list(tokens)
    kinds = [token_type(t) for t in tokens]
    ann = annotate_tune(tokens)
    # runs of adjacent bar-line tokens
    runs: list[list[int]] = []
    for i, k in enumerate(kinds):
        if k in BAR_TYPES:
            if runs and runs[-1][-1] == i - 1:
                runs[-1].append(i)
            else:
                runs.append([i])
    meter: Fraction | None = None
    unit = Fraction(1, 8)
    meter_at, unit_at = {}, {}
    for i, (tok, k) in enumerate(zip(tokens, kinds)):
        if k == "meta":
            field_name = tok.strip("[")[:1]
            if field_name == "M":
                meter = parse_meter(tok)
            elif field_name == "L":
                unit = parse_unit(tok) or unit
        meter_at[i], unit_at[i] = meter, unit

    def body(lo: int, hi: int) -> list[int]:
        return [j for j in range(lo, hi) if kinds[j] not in ("special", "meta")]

    segments = []  # (opening run or None, token indices, closing run or None)
    bounds = [None] + runs + [None]
    for left, right in pairwise(bounds):
        lo = left[-1] + 1 if left else 0
        hi = right[0] if right else len(tokens)
        toks = body(lo, hi)
        if toks:
            segments.append((left, toks, right))
    rows = []
    for b, (left, toks, right) in enumerate(segments):
        end = right[0] if right else None
        m, u = meter_at[toks[0]], unit_at[toks[0]]
        expected = float(m / u) if m is not None else np.nan
        duration = float(ann["metric_position"][end]) if end is not None else np.nan
        reason = ""
        if left is None:
            reason = "first bar"
        elif right is None:
            reason = "last bar"
        elif any(kinds[j] == "repeat" for j in left + right):
            reason = "next to a repeat or ending mark"
        elif m is None:
            reason = "no meter"
        rows.append({
            "bar": b, "start": toks[0], "end": end if end is not None else toks[-1] + 1,
            "text": " ".join(tokens[j] for j in toks), "duration": duration, "expected": expected,
            "opens_with": " ".join(tokens[j] for j in left) if left else "",
            "closes_with": " ".join(tokens[j] for j in right) if right else "",
            "evaluated": reason == "", "reason": reason,
            "correct": bool(reason == "" and abs(duration - expected) < tol),
        })
    cols = ["bar", "start", "end", "text", "duration", "expected", "opens_with", "closes_with",
            "evaluated", "reason", "correct"]
    return pd.DataFrame(rows, columns=cols)


def bar_correctness(tokens: Sequence[str]) -> tuple[int, int]:
    """``(n_evaluated, n_correct)`` bars of one tune (see :func:`bar_durations`)."""
    bars = bar_durations(tokens)
    return int(bars["evaluated"].sum()), int(bars["correct"].sum())
