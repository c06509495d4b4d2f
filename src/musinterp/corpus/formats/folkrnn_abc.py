"""The folk-rnn v2 ABC token format (grammar and annotation in :mod:`musinterp.corpus.tokens`)."""

import numpy as np

from ..tokens import SPECIAL_TOKENS, TOKEN_TYPES, annotate_tune
from . import TokenFormat

FORMAT = TokenFormat(
    name="folkrnn-v2",
    specials=SPECIAL_TOKENS,
    columns={"token_type": np.int8, "bar": np.int32, "position_in_bar": np.int32,
             "metric_position": np.float32, "pitch": np.int16, "duration": np.float32},
    categories={"token_type": list(TOKEN_TYPES)},
    annotate=annotate_tune,
    description="folk-rnn v2 ABC tokens: M:/K: header, pitches, durations, bars and repeats, <s> </s>",
)
