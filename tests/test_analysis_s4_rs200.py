"""S4 item 9, in-context learning on real music: a chordlm trained on RS200 songs, scored on the
held-out songs' section returns (the corpus has sections but no loops)."""

from pathlib import Path

import pandas as pd
import pytest

from musinterp.analysis.s4 import run_s4
from musinterp.corpus.build import build_corpus
from musinterp.corpus.store import load_corpus
from musinterp.models import train_model

SHARED_RS200 = Path(__file__).resolve().parents[2] / "shared" / "data" / "rs200"


@pytest.fixture(scope="module")
def rs200_run(tmp_path_factory):
    if not (SHARED_RS200 / "harmony").is_dir():
        pytest.skip(f"{SHARED_RS200} is absent (the shared development data folder ../shared/data is not here)")
    tmp = tmp_path_factory.mktemp("rs200")
    spec = {"source": "rs200", "rs200": {"base_url": SHARED_RS200.as_uri(), "layout": "mirror", "annotator": "dt"}}
    build_corpus("rs200", spec, tmp / "corpus", seed=0, heldout_fraction=0.2, download_dir=tmp / "downloads")
    train_model("chordlm", tmp / "corpus", tmp / "model",
                {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 0, "n_ctx": 128},
                {"epochs": 1, "batch_size": 16})
    run_s4(tmp / "model", tmp / "corpus", tmp / "s4", lengths=[6], n_sequences=8, max_songs=100, shifts=[0], n_random=10)
    return tmp


def test_section_returns_are_scored_on_real_songs(rs200_run):
    corpus = load_corpus(rs200_run / "corpus")
    sections = pd.read_csv(rs200_run / "s4" / "sections.tsv", sep="\t")
    assert list(sections["section_occurrence"]) == [0, 1, 2]
    assert (sections["n"] > 0).all() and sections["accuracy"].between(0, 1).all()
    # Independent count: chords in named sections of every held-out song (40 < max_songs), after
    # each song's first chord and within the model's context of 128 inputs
    held = corpus.indices("heldout")
    occ = pd.Series([o for p in held for o in corpus.token_columns["section_occurrence"][p][1:128]])
    assert int(sections["n"].sum()) == int((occ >= 0).sum())
    # No loops in RS200: the loop and transposition tables stay empty, the circuit tables do not
    assert (rs200_run / "s4" / "loops.tsv").stat().st_size <= 1
    assert len(pd.read_csv(rs200_run / "s4" / "heads.tsv", sep="\t")) == 2
