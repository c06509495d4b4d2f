"""Study S4 orchestration (musinterp.analysis.s4_circuits, .s4_songs, .s4): the hand-built induction
circuit of tests/test_analysis_induction.py inside a real ChordLM (a positional previous-token head
in layer 0, a K-composing copying induction head in layer 1, the other heads small random), against
a random-weight ChordLM; song tables from a cheating oracle whose accuracies are known exactly; and
run_s4 end to end on a tiny trained chordlm."""

import json
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from test_analysis_induction import D_HEAD, N_CTX, D, V, induction_model

from musinterp.analysis.s4 import TABLES, run_s4
from musinterp.analysis.s4_circuits import (
    ablation_table,
    chord_ids,
    composition_table,
    copies_table,
    dynamics_table,
    heads_table,
)
from musinterp.analysis.s4_songs import (
    MAX_REPEAT,
    loops_table,
    sections_table,
    song_predictions,
    transpose_tokens,
)
from musinterp.corpus.formats.chords import ROOT_NAMES
from musinterp.corpus.vocab import Vocab
from musinterp.models.chordlm.model import ChordLM, ChordLMConfig
from musinterp.models.interface import next_token_batch

H, H0, H1 = 3, 1, 2  # heads per layer; the previous-token head (layer 0) and the induction head (layer 1)
LENGTH = 10  # <s> + 10 + 10 = 21 <= N_CTX = 24
CHORDS = [f"{root}:{q}" for q in ("maj", "min", "7") for root in ROOT_NAMES][: V - 2]
VOCAB = Vocab(["<s>", "</s>", *CHORDS], format="chords")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(**kw):
    return ChordLMConfig(vocab_size=V, n_layers=2, n_heads=H, d_model=D, d_head=D_HEAD, d_mlp=0, n_ctx=N_CTX,
                         normalization="none", **kw)


def hand_built() -> ChordLM:
    """induction_model()'s single-head weights in heads H0 (layer 0) and H1 (layer 1) of a ChordLM;
    every other head has small random weights (so it is there, but changes nothing), biases 0."""
    w = induction_model()
    model = ChordLM(config())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.W_E.copy_(w["W_E"])
        model.pos_embed.W_pos.copy_(w["W_pos"])
        model.unembed.W_U.copy_(w["W_U"])
        for layer, head in ((0, H0), (1, H1)):
            attn = model.blocks[layer].attn
            for name in ("W_Q", "W_K", "W_V", "W_O"):
                W = getattr(attn, name)
                W.copy_(0.01 * torch.randn(W.shape, generator=g, dtype=torch.float64))
                W[head] = w[name][layer][0]
    return model.eval()


def random_weights(seed=0) -> ChordLM:
    model = ChordLM(config())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[-1].startswith("W_"):
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-2]))
    return model.eval()


@pytest.fixture(scope="module")
def circuit():
    model = hand_built()
    return model, heads_table(model, VOCAB, [], LENGTH, 32, 0)


def test_chord_ids_exclude_specials():
    assert chord_ids(VOCAB) == list(range(2, V))
    assert chord_ids(["<s>", "</s>", "C:maj", "<pad>", "G:7"]) == [2, 4]


def test_hand_built_copies(circuit):
    model, _ = circuit
    table, curves = copies_table(model, VOCAB, [LENGTH, 4], 32, 0)
    assert list(table.columns) == ["length", "first", "second", "gap"]
    assert table.length.tolist() == [LENGTH, 4]
    assert (table["first"] > 2.0).all() and (table["second"] < 0.05).all()
    assert table.gap.to_numpy() == pytest.approx((table["first"] - table["second"]).to_numpy())
    assert set(curves) == {f"loss_per_position_N{LENGTH}", "loss_per_position_N4"}
    assert curves[f"loss_per_position_N{LENGTH}"].shape == (2 * LENGTH,)
    # lengths beyond the context are cut to (n_ctx - 1) // 2
    assert copies_table(model, VOCAB, [50], 4, 0)[0].length.tolist() == [(N_CTX - 1) // 2]


def test_hand_built_heads(circuit):
    model, heads = circuit
    assert list(heads.columns) == ["layer", "head", "previous_token", "duplicate_token", "induction",
                                   "previous_token_songs", "duplicate_token_songs", "induction_songs",
                                   "lookback_3_songs", "lookback_7_songs", "copying"]
    assert heads[["layer", "head"]].values.tolist() == [[layer, h] for layer in range(2) for h in range(H)]
    by = heads.set_index(["layer", "head"])
    assert by.loc[(0, H0), "previous_token"] > 0.9
    assert by.loc[(1, H1), "induction"] > 0.9 and by.loc[(1, H1), "copying"] == pytest.approx(1.0, abs=1e-6)
    others = by.drop([(0, H0), (1, H1)])
    assert (others.previous_token < 0.5).all() and (others.induction < 0.5).all()
    assert by.induction.drop((1, H1)).max() < 0.5 and by.previous_token.drop((0, H0)).max() < 0.5
    assert heads[["previous_token_songs", "duplicate_token_songs", "induction_songs"]].isna().all(axis=None)

    # on songs (each on its own, cut to the context; a one-chord song has nothing to score)
    songs = [np.array([2, 3, 4, 2, 3, 4, 2, 3]), np.array([5, 6, 7, 8, 5, 6, 7, 8, 5]), np.array([9]),
             np.arange(2, V)]  # distinct chords, cut to the context
    by = heads_table(model, VOCAB, songs, LENGTH, 8, 0).set_index(["layer", "head"])
    assert by.loc[(0, H0), "previous_token_songs"] > 0.9
    assert by.loc[(1, H1), "induction_songs"] > 0.9
    assert by.loc[(1, H1), "duplicate_token_songs"] < 0.1


def test_hand_built_composition(circuit):
    model, _ = circuit
    comp = composition_table(model, 100, 0)
    assert len(comp) == H * H
    for kind in ("q_comp", "k_comp", "v_comp"):
        assert {kind, f"{kind}_z", f"{kind}_random_mean", f"{kind}_random_sd"} <= set(comp.columns)
        assert comp[f"{kind}_z"].to_numpy() == pytest.approx(
            ((comp[kind] - comp[f"{kind}_random_mean"]) / comp[f"{kind}_random_sd"]).to_numpy())
    by = comp.set_index(["layer1", "head1", "layer2", "head2"])
    row = by.loc[(0, H0, 1, H1)]
    assert row.k_comp == pytest.approx(1 / math.sqrt(V), rel=1e-5)  # as in the single-head model
    assert row.k_comp_z > 3 and row.k_comp_z == comp.k_comp_z.max()
    assert comp.k_comp_z.drop(comp.k_comp_z.idxmax()).max() < 3


def test_hand_built_ablation(circuit):
    model, heads = circuit
    table = ablation_table(model, VOCAB, heads, LENGTH, 32, 0)
    assert {"condition", "layer", "head", "induction", "second", "first"} <= set(table.columns)
    assert table.condition.tolist() == ["clean", "ablate_previous_token_head", "ablate_random_head",
                                        "k_only_patch_previous_token_head"]
    assert (table.induction_layer == 1).all() and (table.induction_head == H1).all() and (table.layer == 0).all()
    by = table.set_index("condition")
    clean, ablated, rand, k_only = (by.loc[c] for c in by.index)
    assert clean["head"] == H0 and ablated["head"] == H0 and k_only["head"] == H0 and rand["head"] != H0
    assert clean.induction > 0.9 and clean["second"] < 0.05
    # without the previous-token head the induction head's keys carry no previous token: it
    # attends everywhere, and the second copy is as hard as the first
    for row in (ablated, k_only):
        assert row.induction < 0.3
        assert row["second"] > clean["second"] + 2.0 and row["second"] > row["first"] / 2
    # the previous-token head writes only to what the induction head's keys read: patching the
    # keys alone is the whole effect
    assert k_only.induction == pytest.approx(ablated.induction, abs=1e-4)
    assert k_only["second"] == pytest.approx(ablated["second"], abs=1e-3)
    # another layer-0 head changes nothing
    assert rand.induction == pytest.approx(clean.induction, abs=1e-3)
    assert rand["second"] == pytest.approx(clean["second"], abs=1e-3) and rand["first"] == pytest.approx(clean["first"], abs=1e-3)
    # the random head is never the previous-token head, whatever the seed
    for seed in range(1, 8):
        rows = ablation_table(model, VOCAB, heads, LENGTH, 2, seed).set_index("condition")
        assert rows.loc["ablate_random_head", "head"] in set(range(H)) - {H0}
    # the clean first-copy loss is the same in every condition (the induction head finds nothing there)
    assert table["first"].to_numpy() == pytest.approx(clean["first"], abs=1e-2)
    # a model with one layer has no ablation
    one = ChordLM(ChordLMConfig(vocab_size=V, n_layers=1, n_heads=1, d_model=8, d_head=4, d_mlp=0, n_ctx=N_CTX))
    assert ablation_table(one, VOCAB, heads_table(one, VOCAB, [], 4, 2, 0), 4, 2, 0).empty


def test_random_weights_have_no_induction():
    model = random_weights()
    copies, _ = copies_table(model, VOCAB, [LENGTH], 32, 0)
    assert abs(copies.gap.iloc[0]) < 0.3
    heads = heads_table(model, VOCAB, [], LENGTH, 32, 0)
    assert (heads.induction < 0.5).all() and (heads.previous_token < 0.5).all()
    comp = composition_table(model, 100, 0)
    assert (comp[["q_comp_z", "k_comp_z", "v_comp_z"]].abs() < 4).all(axis=None)
    clean = ablation_table(model, VOCAB, heads, LENGTH, 32, 0).set_index("condition").loc["clean"]
    assert clean.induction < 0.5


def test_dynamics_reads_every_snapshot_and_restores_the_model(tmp_path, circuit):
    model = random_weights(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    snaps = tmp_path / "snapshots"
    snaps.mkdir()
    torch.save({"step": 0, "epoch": 0, "state_dict": random_weights(2).state_dict()}, snaps / "step_0000000.pt")
    torch.save({"step": 12, "epoch": 3, "state_dict": circuit[0].state_dict()}, snaps / "step_0000012.pt")
    (snaps / "notes.pt").write_bytes(b"")  # not a snapshot
    table = dynamics_table(model, VOCAB, snaps, LENGTH, 16, 0)
    assert list(table.columns) == ["step", "epoch", "induction_max", "first", "second", "gap"]
    assert table.step.tolist() == [0, 12] and table.epoch.tolist() == [0, 3]
    assert table.induction_max.iloc[0] < 0.5 and table.induction_max.iloc[1] > 0.9
    assert abs(table.gap.iloc[0]) < 0.3 and table.gap.iloc[1] > 2.0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert dynamics_table(model, VOCAB, tmp_path / "none", LENGTH, 4, 0).empty


# --------------------------------------------------------------------------- songs


class Oracle:
    """Cheats: knows every song and, per token, whether to be right (all logit on the true next
    chord) or wrong (all logit on <s>, never a target). Finds the song from the input row."""

    family = "oracle"

    def __init__(self, songs, right):
        self.known = {tuple(int(t) for t in s): np.asarray(r, dtype=bool) for s, r in zip(songs, right)}
        assert len(self.known) == len(songs), "songs must differ for the oracle to tell them apart"
        self.vocab_size = None

    def make_batch(self, pieces, vocab, max_len=None):
        self.vocab_size = len(vocab)
        self.bos, self.eos = vocab.index("<s>"), vocab.index("</s>")
        return next_token_batch(pieces, self.bos, self.eos, max_len)

    def __call__(self, inputs):
        B, T = inputs.shape
        logits = torch.zeros(B, T, self.vocab_size)
        for b, row in enumerate(inputs.tolist()):
            assert row[0] == self.bos
            song = tuple(row[1:row.index(self.eos)] if self.eos in row else row[1:])
            right = self.known[song]
            for t, target in enumerate(song):
                logits[b, t, target if right[t] else self.bos] = 1.0
        return logits


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from musinterp.corpus.build import build_corpus
    from musinterp.corpus.store import load_corpus

    out = tmp_path_factory.mktemp("s4songs") / "corpus"
    build_corpus("pop", {"source": "popgen", "popgen": {"n_songs": 30}}, out, seed=0)
    return load_corpus(out)


def song_columns(corpus, pieces):
    return {name: [corpus.token_columns[name][p] for p in pieces] for name in corpus.token_columns}


def test_song_predictions_loops_and_sections(corpus):
    pieces = list(range(len(corpus.tunes)))[::-1]  # any order: piece ids come along
    songs = [corpus.tunes[p] for p in pieces]
    cols = song_columns(corpus, pieces)
    repeat, period, ambiguous, occurrence = (cols[c] for c in ("loop_repeat", "period", "ambiguous", "section_occurrence"))
    vocab = corpus.token_vocab
    assert all((p > 0).all() for p in period)  # every generated token is inside a loop

    oracle = Oracle(songs, [r >= 1 for r in repeat])
    pred = song_predictions(oracle, vocab, songs, cols, pieces, batch_size=8)
    assert len(pred) == sum(len(s) for s in songs)  # every chord, no </s>
    assert pred.piece.tolist() == [p for p, s in zip(pieces, songs) for _ in s]
    assert pred["index"].tolist() == [i for s in songs for i in range(len(s))]
    assert pred.correct.tolist() == np.concatenate([r >= 1 for r in repeat]).astype(int).tolist()
    for name in corpus.token_columns:
        assert pred[name].tolist() == np.concatenate(cols[name]).tolist()

    loops = loops_table(pred)
    assert list(loops.columns) == ["period", "loop_repeat", "ambiguous", "n", "n_correct", "accuracy"]
    assert loops.loop_repeat.max() == MAX_REPEAT and loops.loop_repeat.min() == 0
    assert (loops.loc[loops.loop_repeat >= 1, "accuracy"] == 1.0).all()
    assert (loops.loc[loops.loop_repeat == 0, "accuracy"] == 0.0).all()
    expected = Counter((int(p), min(int(r), MAX_REPEAT), int(a)) for ps, rs, as_ in zip(period, repeat, ambiguous)
                       for p, r, a in zip(ps, rs, as_))
    got = {(int(r.period), int(r.loop_repeat), int(r.ambiguous)): int(r.n) for r in loops.itertuples()}
    assert got == dict(expected)
    assert (loops.n_correct == np.where(loops.loop_repeat >= 1, loops.n, 0)).all()

    sections = sections_table(pred)
    assert list(sections.columns) == ["section_occurrence", "n", "n_correct", "accuracy"]
    assert (sections.accuracy == 0.0).all()  # the oracle is wrong on every first pass
    expected = Counter(min(int(o), 2) for os_, rs in zip(occurrence, repeat) for i, (o, r) in enumerate(zip(os_, rs))
                       if r == 0 and i > 0)
    assert dict(zip(sections.section_occurrence.tolist(), sections.n.tolist())) == dict(expected)
    assert sorted(expected) == [0, 1, 2]

    # an oracle that remembers only returning sections: right exactly on section_occurrence >= 1
    pred = song_predictions(Oracle(songs, [o >= 1 for o in occurrence]), vocab, songs, cols, pieces)
    by = sections_table(pred).set_index("section_occurrence")
    assert by.accuracy.to_dict() == {0: 0.0, 1: 1.0, 2: 1.0}
    assert by.n.to_dict() == dict(expected) and (by.n_correct == by.n * by.accuracy).all()

    assert song_predictions(oracle, vocab, [], {}).empty


def test_song_predictions_cut_to_the_batch():
    class Short(Oracle):
        def make_batch(self, pieces, vocab, max_len=None):
            return super().make_batch(pieces, vocab, 4)  # <s> + 3 chords as inputs

        def __call__(self, inputs):
            logits = torch.zeros(*inputs.shape, self.vocab_size)
            logits[..., 2] = 1.0  # always the first chord
            return logits

    songs = [np.array([2, 3, 2, 3, 2]), np.array([3, 2])]
    oracle = Short(songs, [np.ones(5), np.ones(2)])
    pred = song_predictions(oracle, VOCAB, songs, {"period": [np.full(5, 2), np.full(2, 2)]}, ["a", "b"])
    assert pred.piece.tolist() == ["a"] * 3 + ["b"] * 2
    assert pred["index"].tolist() == [0, 1, 2, 0, 1] and pred.correct.tolist() == [1, 0, 1, 0, 1]


def test_transpose_tokens():
    assert transpose_tokens(["<s>", "C:maj", "Bb:7", "B:min", "F#:hdim7", "</s>"], 2) == \
        ["<s>", "D:maj", "C:7", "C#:min", "Ab:hdim7", "</s>"]
    assert transpose_tokens(["C:maj", "Bb:7", "A:min7"], 5) == ["F:maj", "Eb:7", "D:min7"]
    assert transpose_tokens(["C:maj", "Eb:maj7"], -1) == ["B:maj", "D:maj7"]
    assert transpose_tokens(["G:sus4"], 12) == ["G:sus4"] and transpose_tokens(["G:sus4"], 0) == ["G:sus4"]
    assert transpose_tokens([], 3) == []


# --------------------------------------------------------------------------- run_s4


DOCUMENTED = {
    "copies": ["length", "first", "second", "gap"],
    "heads": ["layer", "head", "previous_token", "duplicate_token", "induction", "previous_token_songs",
              "duplicate_token_songs", "induction_songs", "copying"],
    "composition": ["layer1", "head1", "layer2", "head2", "q_comp", "k_comp", "v_comp", "q_comp_z", "k_comp_z",
                    "v_comp_z", "q_comp_random_mean", "q_comp_random_sd", "k_comp_random_mean", "k_comp_random_sd",
                    "v_comp_random_mean", "v_comp_random_sd"],
    "ablation": ["condition", "layer", "head", "induction", "second", "first"],
    "dynamics": ["step", "induction_max", "first", "second", "gap"],
    "loops": ["period", "loop_repeat", "ambiguous", "n", "n_correct", "accuracy"],
    "sections": ["section_occurrence", "n", "n_correct", "accuracy"],
    "transposition": ["shift", "songs", "skipped", "accuracy_repeats", "accuracy_first_pass", "induction_max"],
}


def test_run_s4_end_to_end(tmp_path):
    from musinterp.corpus.build import build_corpus
    from musinterp.corpus.store import load_corpus
    from musinterp.models import train_model

    corpus_dir, model_dir, out = tmp_path / "corpus", tmp_path / "model", tmp_path / "s4"
    build_corpus("pop", {"source": "popgen", "popgen": {"n_songs": 30, "keys": "random"}}, corpus_dir, seed=0)
    params = {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 0, "n_ctx": 64}
    train_model("chordlm", corpus_dir, model_dir, params, {"epochs": 1, "batch_size": 8, "snapshot_every": 2},
                n_samples=0)
    tables = run_s4(model_dir, corpus_dir, out, lengths=[6], n_sequences=8, max_songs=10, shifts=[0, 1], n_random=10)
    assert set(tables) == set(TABLES)

    read = {}
    for name in TABLES:
        path = out / f"{name}.tsv"
        assert path.exists(), name
        read[name] = df = pd.read_csv(path, sep="\t")
        assert set(DOCUMENTED[name]) <= set(df.columns), (name, list(df.columns))
        assert len(df) == len(tables[name]) > 0, name
    assert read["copies"].length.tolist() == [6]
    assert len(read["heads"]) == 4 and len(read["composition"]) == 4 and len(read["ablation"]) == 4
    snapshots = sorted((model_dir / "snapshots").glob("step_*.pt"))
    assert len(snapshots) >= 2 and len(read["dynamics"]) == len(snapshots)
    assert read["dynamics"].step.tolist() == [int(p.stem.split("_")[1]) for p in snapshots]
    assert read["transposition"]["shift"].tolist() == [0, 1]

    info = json.loads((out / "model.json").read_text())
    assert {"config", "attn_only", "seed"} <= set(info)
    assert info["attn_only"] is True and info["config"]["n_layers"] == 2 and info["config"]["d_mlp"] == 0
    assert {k: info["config"][k] for k in params} == params
    meta = json.loads((model_dir / "model.json").read_text())
    assert info["seed"] == meta["train_config"]["seed"] is not None
    assert info["parameters"]["shifts"] == [0, 1] and info["parameters"]["lengths"] == [6]

    # every held-out song (max_songs is more than there are), each scored up to the context
    corpus = load_corpus(corpus_dir)
    held = corpus.indices("heldout")
    assert info["n_songs"] == len(held) and info["n_songs_skipped"] == 0
    assert read["loops"].n.sum() == sum(min(len(corpus.tunes[p]), params["n_ctx"]) for p in held)
    t0 = read["transposition"].set_index("shift").loc[0]
    assert t0.songs == len(held) and t0.skipped == 0
    assert (read["transposition"].songs + read["transposition"].skipped == len(held)).all()

    curves = np.load(out / "curves.npz")
    assert list(curves) == ["loss_per_position_N6"] and curves["loss_per_position_N6"].shape == (12,)


def test_run_s4_rejects_other_families(tiny_subject):
    root, _ = tiny_subject
    with pytest.raises(ValueError, match="chordlm"):
        run_s4(root / "model", root / "corpus", root / "out")


def test_lookback_scores_find_a_fixed_distance_head():
    """A head that attends exactly 7 back (the positional shortcut for 8-chord loops) scores 1 on
    lookback_7_songs and 0 on lookback_3_songs; hand-set positional weights, no tokens involved."""
    import torch

    from musinterp.analysis.s4_circuits import heads_table
    from musinterp.models.chordlm.model import ChordLM
    from musinterp.models.chordlm.spec import ChordLMConfig

    n_ctx, V = 24, 6
    model = ChordLM(ChordLMConfig(vocab_size=V, n_layers=1, n_heads=1, d_model=n_ctx, d_head=n_ctx, d_mlp=0,
                                  n_ctx=n_ctx, normalization="none"))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.pos_embed.W_pos.copy_(torch.eye(n_ctx))  # position i is basis vector i
        model.blocks[0].attn.W_Q[0].copy_(torch.eye(n_ctx) * 500)  # logit 500/sqrt(24): one-hot attention
        shift = torch.zeros(n_ctx, n_ctx)
        for i in range(7, n_ctx):
            shift[i - 7, i] = 1.0  # key of position i - 7 matches query i
        model.blocks[0].attn.W_K[0].copy_(shift)
    vocab = ["<s>", "</s>", "C:maj", "F:maj", "G:maj", "A:min"]
    songs = [np.array([2, 3, 4, 5] * 5)]
    heads = heads_table(model, vocab, songs, length=5, n=2, seed=0)
    # rows i >= 7 attend to i − 7 only; rows before it spread over the prefix and are not counted
    assert heads.loc[0, "lookback_7_songs"] == pytest.approx(1.0, abs=1e-6)
    assert heads.loc[0, "lookback_3_songs"] < 0.2
