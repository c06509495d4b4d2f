"""Study S2 (folk-rnn dynamics): spectra, bar lengths and durations, copying counts, interventions,
the files of rule s2_folkrnn and a notebook that only reads them."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from musinterp.analysis.folkrnn_copying import NgramIndex, bar_offsets, copying_table
from musinterp.analysis.folkrnn_dynamics import run_s2
from musinterp.analysis.folkrnn_interventions import (
    bar_line_probabilities,
    clamp_units,
    intervention_experiment,
)
from musinterp.analysis.folkrnn_outputs import (
    OUTPUTS,
    output_paths,
    read_s2,
    write_outputs,
)
from musinterp.analysis.folkrnn_tunes import (
    BLOG_REEL,
    TuneRun,
    bar_durations,
    bar_length,
    generate_tune,
    log10_probabilities,
    parse_tune,
    read_tunes,
    teacher_force,
    tune_tokens,
)
from musinterp.analysis.folkrnn_units import (
    UNIT_COLUMNS,
    dominant_period,
    unit_spectra,
    unit_table,
)
from musinterp.models import build

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BLOG_TUNE = SHARED_DATA / "folkrnn_samples" / "v2_blog_tune.txt"


# --- spectra ------------------------------------------------------------------------------------


def periodic(period: float, n: int = 150, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    # an offset (most units have one), a slow drift and noise must not hide the period
    return 0.3 + 0.5 * np.cos(2 * np.pi * t / period + 0.4) + 0.002 * t + 0.05 * rng.normal(size=n)


@pytest.mark.parametrize("period", [9, 4])
def test_dominant_period_of_a_periodic_unit(period):
    assert dominant_period(periodic(period)) == pytest.approx(period, abs=0.5)


def test_spectra_in_db_relative_to_each_unit():
    acts = np.stack([periodic(9), periodic(4, seed=1), np.full(150, 0.02)], axis=1)
    spec = unit_spectra(acts)
    assert spec.n_fft == 512 and spec.db.shape == (3, 256)
    assert np.allclose(spec.db[:2].max(axis=1), 0.0)  # 0 dB at each unit's own peak
    assert np.isnan(spec.dominant_period[2])  # a constant unit has no period (mean removed)
    cut = spec.cut(-6.0)
    assert np.nanmin(cut) >= -6.0 and np.isnan(cut).any()
    assert spec.power_at_period(9)[0] == pytest.approx(0.0)
    assert spec.power_at_period(9)[1] < -6.0  # the period-4 unit is weak at period 9


def test_unit_table_flags_bar_periodic_dead_and_saturated_units():
    T = 150
    h = np.stack([0.6 * np.cos(2 * np.pi * np.arange(T) / 9), 0.6 * np.cos(2 * np.pi * np.arange(T) / 4),
                  np.full(T, 0.01), np.full(T, 0.995) * np.sign(np.cos(np.arange(T)))], axis=1)
    run = TuneRun(tokens=["<s>"] + ["C"] * T, states={"lstm0_h": h.astype(np.float32)},
                  probs=np.full((T, 3), 1 / 3))
    table, _spectra = unit_table(run, bar_len=9, tune="synthetic")
    assert list(table.columns) == UNIT_COLUMNS
    assert table["bar_periodic"].tolist() == [True, False, False, False]
    assert table["is_dead"].tolist() == [False, False, True, False]
    assert table["is_saturated"].tolist() == [False, False, False, True]
    assert table.loc[0, "power_at_bar_period_db"] == pytest.approx(0.0)
    assert table.loc[1, "dominant_period"] == pytest.approx(4.0, abs=0.5)


def test_log10_probabilities_are_clipped():
    out = log10_probabilities(np.array([[1.0, 1e-3, 0.0, 1e-12]]))
    assert out.tolist() == [[0.0, pytest.approx(-3.0), -10.0, -10.0]]


# --- tunes and bars -----------------------------------------------------------------------------


def test_bar_length_of_the_blog_reel_is_nine():
    if not BLOG_TUNE.exists():
        pytest.skip(f"{BLOG_TUNE} is absent (the shared data folder is not checked out next to the repo)")
    (tune,) = read_tunes(BLOG_TUNE)
    tokens = tune_tokens(tune)
    assert tokens == tune_tokens(BLOG_REEL)  # the library's default tune is the blog's
    assert bar_length(tokens) == 9
    bars = bar_durations(tokens)
    evaluated = bars[bars.evaluated]
    assert len(evaluated) >= 10 and evaluated["correct"].all()  # a well-formed reel: 8 eighths a bar
    assert (bars.loc[~bars.evaluated, "reason"] != "").all()


def test_bar_length_counts_the_bar_line_and_ignores_adjacent_marks():
    tokens = tune_tokens("M:3/4 K:Cmaj |: A B c d e f | g a b c d e :| |: f g a b c d | e 6 :|")
    assert bar_length(tokens) == 7
    assert bar_length(tune_tokens("M:4/4 K:Cmaj A B c d")) is None


def test_bar_durations_with_durations_broken_rhythm_and_triplets():
    tune = ("M:4/4 K:Cmaj G | A 2 B c d e f g | A > B c d (3 e f g e f | A /2 B /2 c d e f g a b "
            "| A 2 B 2 c 2 | c < d e 2 (3 f g a B 2 | A 8 |: B 8 :| |1 c 4 |2 d 8 | e")
    bars = bar_durations(tune_tokens(tune))
    assert bars["duration"].iloc[1:7].tolist() == [8, 8, 8, 6, 8, 8]
    assert bars["expected"].iloc[1:7].eq(8).all()
    evaluated = bars[bars.evaluated]
    assert evaluated["text"].tolist() == ["A 2 B c d e f g", "A > B c d (3 e f g e f", "A /2 B /2 c d e f g a b",
                                          "A 2 B 2 c 2", "c < d e 2 (3 f g a B 2"]
    assert evaluated["correct"].tolist() == [True, True, True, False, True]
    reasons = dict(zip(bars.text, bars.reason))
    assert reasons["G"] == "first bar" and reasons["e"] == "last bar"
    assert reasons["A 8"] == reasons["B 8"] == reasons["c 4"] == "next to a repeat or ending mark"


def test_parse_tune_names_unknown_tokens():
    vocab = ["<s>", "</s>", "M:4/4", "K:Cmaj", "A", "B", "|"]
    assert parse_tune("M:4/4 K:Cmaj A B |", vocab) == [0, 2, 3, 4, 5, 6, 1]
    with pytest.raises(ValueError, match=r"2 token\(s\) not in the model's vocabulary.*'\^F'.*'c'"):
        parse_tune("M:4/4 K:Cmaj A c ^F |", vocab)


# --- copying ------------------------------------------------------------------------------------

CORPUS_TUNES = [
    "M:4/4 K:Cmaj |: G, C C 2 G, C E C | G, C E G F D B, D :|",
    "M:4/4 K:Cmaj C E C G, C C 2 G, | G, C C 2 G, C E C |",
    "M:6/8 K:Cmin E G, C C 2 G, C E C | G, C C 2 G, C |",
    "M:4/4 K:Cmaj A B c d | G, C E G F D B, D | A B c d |",
    "M:3/4 K:Cdor c 2 B G | F E D 2 | C 6 |",
]


def brute_force(tunes: list[list[str]], query: list[str], offset: int) -> tuple[int, int]:
    anywhere = same = 0
    for toks in tunes:
        offs = bar_offsets(toks)
        starts = [s for s in range(len(toks) - len(query) + 1) if toks[s:s + len(query)] == query]
        anywhere += bool(starts)
        same += any(offs[s] == offset for s in starts)
    return anywhere, same


def test_copying_counts_match_a_brute_force_search():
    tunes = [t.split() for t in CORPUS_TUNES]
    vocab = ["<s>", "</s>"] + sorted({tok for t in tunes for tok in t})
    stoi = {tok: i for i, tok in enumerate(vocab)}
    index = NgramIndex([np.array([stoi[t] for t in toks]) for toks in tunes],
                       [f"t{i}" for i in range(len(tunes))], vocab)
    query_tune = tune_tokens("M:4/4 K:Cmaj G, C C 2 G, C E C | G, C E G F D B, D | A B c d e |")
    table = copying_table(index, query_tune, ns=(4, 6), n_examples=2, tune="q")
    assert set(table["kind"]) == {"bar", "ngram"} and set(table.loc[table.kind == "ngram", "n"]) == {4, 6}
    assert table.loc[table.kind == "bar", "text"].tolist() == [
        "G, C C 2 G, C E C", "G, C E G F D B, D", "A B c d e"]
    for row in table.itertuples():
        expected = brute_force(tunes, row.text.split(), row.bar_offset)
        assert (row.n_tunes, row.n_tunes_same_position) == expected, row.text
        assert len(row.examples.split(",") if row.examples else []) == min(2, row.n_tunes)
    first_bar = table.iloc[0]
    assert (first_bar.n_tunes, first_bar.n_tunes_same_position) == (3, 2)  # t2 has it mid-bar
    assert first_bar.examples == "t0,t1"


# --- interventions ------------------------------------------------------------------------------


@pytest.fixture()
def tiny_model(one_torch_thread):
    vocab = ["<s>", "</s>"] + sorted({tok for t in CORPUS_TUNES for tok in t.split()})
    torch.manual_seed(0)
    model = build("folkrnn", vocab_size=len(vocab), hidden_size=12, n_layers=2, dropout=0.0).eval()
    return model, vocab


def test_intervention_changes_probabilities_only_when_units_are_modified(tiny_model):
    model, vocab = tiny_model
    tokens = tune_tokens(CORPUS_TUNES[0])
    clean = bar_line_probabilities(model, vocab, tokens)
    with clamp_units(model, {}, 0.0), clamp_units(model, {0: [], 1: []}, 0.0):
        assert bar_line_probabilities(model, vocab, tokens) == clean
        assert generate_tune(model, vocab, 3, max_len=40) == generate_tune(model, vocab, 3, max_len=40)
    with clamp_units(model, {1: [2, 5]}, 0.0):
        assert bar_line_probabilities(model, vocab, tokens)["nll"] != clean["nll"]
    assert bar_line_probabilities(model, vocab, tokens) == clean  # the hook is gone afterwards


def test_clamp_sets_only_the_listed_units(tiny_model):
    model, vocab = tiny_model
    ids = torch.tensor([parse_tune(CORPUS_TUNES[1], vocab)])
    seen = {}

    def observe(_module, _inputs, out):
        seen["h"] = out[0].detach().clone()

    handle = model.lstms[0].register_forward_hook(observe)
    try:
        model(ids)
        clean = seen["h"]
        with clamp_units(model, {0: [3, 7]}, {0: [0.5, -0.25]}):
            handle.remove()  # observe after the clamp hook
            handle = model.lstms[0].register_forward_hook(observe)
            model(ids)
    finally:
        handle.remove()
    clamped = seen["h"]
    assert torch.all(clamped[..., 3] == 0.5) and torch.all(clamped[..., 7] == -0.25)
    others = [u for u in range(12) if u not in (3, 7)]
    assert torch.equal(clamped[..., others], clean[..., others])


def test_intervention_experiment_rows(tiny_model):
    model, vocab = tiny_model
    tokens = tune_tokens(CORPUS_TUNES[0])
    run = teacher_force(model, vocab, tokens)
    table, _ = unit_table(run, bar_length(tokens), tune="t0")
    kwargs = {"seeds": [0, 1], "modes": ["zero"], "n_generate": 2, "max_len": 30, "tune": "t0"}
    none = intervention_experiment(model, vocab, tokens, table, run, units={}, **kwargs)
    metric_cols = ["p_bar_line_at_bar_ends", "nll", "mean_length", "n_bars_evaluated"]
    for _, rows in none.groupby("seed"):
        assert (rows[metric_cols].nunique() == 1).all()  # nothing modified: every condition is clean
    some = intervention_experiment(model, vocab, tokens, table, run, units={1: [0, 1, 2]}, **kwargs)
    assert list(some.condition) == ["clean", "clean", "bar_periodic", "random", "bar_periodic", "random"]
    assert some.loc[some.condition != "clean", "n_units"].eq(3).all()
    assert some.loc[some.condition == "random", "units"].map(lambda u: not set(u[2:].split(",")) & {"0", "1", "2"}).all()
    assert some.loc[some.condition == "bar_periodic", "nll"].ne(some.loc[0, "nll"]).all()


def test_run_s2_writes_the_tables(tiny_subject, tmp_path):
    root, corpus = tiny_subject
    result = run_s2(root / "model", root / "corpus", {"waltz": "M:3/4 K:Cmin c 2 B G | F E D 2 | C 6 |"},
                    seed=1, intervention_seeds=[0], ngram=[4], tables_dir=tmp_path / "tables", n_generate=1,
                    modes=["mean"], max_len=40)
    assert list(result.analyses) == ["generated", "waltz"]
    for stem in ("units", "interventions", "copying", "summary"):
        assert (tmp_path / "tables" / f"{stem}.tsv").exists()
    units = pd.read_csv(tmp_path / "tables" / "units.tsv", sep="\t")
    assert list(units.columns) == UNIT_COLUMNS and len(units) == 2 * 2 * 12
    copying = pd.read_csv(tmp_path / "tables" / "copying.tsv", sep="\t", keep_default_na=False)
    waltz_bars = copying[(copying.tune == "waltz") & (copying.kind == "bar")]
    in_train = int(corpus.split[1] == 0)  # the waltz is corpus tune 1; only the train split is searched
    assert waltz_bars["n_tunes"].tolist() == [in_train] * 3
    assert result.analyses["waltz"].log10p.shape == (len(tune_tokens("M:3/4 K:Cmin c 2 B G | F E D 2 | C 6 |")) - 1,
                                                     len(corpus.vocab))
    assert set(result.interventions.condition) == {"clean", "bar_periodic", "random"}


def test_the_old_module_still_exports_the_study():
    from musinterp.analysis import (
        folkrnn_dynamics,
        folkrnn_interventions,
        folkrnn_tunes,
        folkrnn_units,
    )

    assert folkrnn_dynamics.unit_table is folkrnn_units.unit_table
    assert folkrnn_dynamics.clamp_units is folkrnn_interventions.clamp_units
    assert folkrnn_dynamics.teacher_force is folkrnn_tunes.teacher_force
    assert folkrnn_dynamics.LOG10_FLOOR == -10.0 and folkrnn_dynamics.SMALL == 0.07


# --- the files of rule s2_folkrnn and the notebook ---------------------------------------------

NOTEBOOK = Path(__file__).resolve().parents[1] / "workflow" / "notebooks" / "s2_folkrnn.py"
WALTZ = "M:3/4 K:Cmin c 2 B G | F E D 2 | C 6 |"


@pytest.fixture()
def s2_files(tiny_subject, tmp_path):
    """The files of rule s2_folkrnn for the tiny subject, written with write_outputs."""
    root, _corpus = tiny_subject
    result = run_s2(root / "model", root / "corpus", {"waltz": WALTZ}, seed=1, intervention_seeds=[0, 1],
                    ngram=[3], tables_dir=tmp_path / "tables", n_generate=1, max_len=40, intervention_units=2)
    written = write_outputs(result, output_paths(tmp_path / "s2"))
    return result, written, tmp_path


def test_write_outputs_tables_are_those_of_run_s2(s2_files):
    _result, written, tmp_path = s2_files
    assert set(written) == set(OUTPUTS)
    for stem in ("units", "interventions", "copying", "summary"):
        assert written[stem].read_bytes() == (tmp_path / "tables" / f"{stem}.tsv").read_bytes(), stem
    assert not list((tmp_path / "s2").glob(".*part"))  # atomic writes leave no temporary file


def test_read_s2_gives_back_what_the_figures_need(s2_files):
    result, _written, tmp_path = s2_files
    out = read_s2(tmp_path / "s2")
    assert list(out.tunes) == list(result.analyses) == ["generated", "waltz"]
    assert out.vocab == result.vocab and out.generated == "generated"
    assert out.parameters["seed"] == 1 and out.parameters["tunes"] == {"waltz": " ".join(tune_tokens(WALTZ))}
    assert {"generate", "analyse", "interventions", "copying", "total"} <= set(out.seconds)
    for name, a in result.analyses.items():
        b = out.tunes[name]
        assert b.tokens == a.tokens and b.emitted == a.run.emitted and b.bar_length == a.bar_length
        np.testing.assert_array_equal(b.log10p, a.log10p)
        assert b.n_layers == a.run.n_layers == 2
        for layer in range(2):
            np.testing.assert_array_equal(b.acts(layer), a.run.acts(layer))
            np.testing.assert_array_equal(b.spectra[layer].db, a.spectra[layer].db)
            np.testing.assert_array_equal(b.spectra[layer].cut(), a.spectra[layer].cut())
            np.testing.assert_array_equal(b.spectra[layer].periods, a.spectra[layer].periods)
            np.testing.assert_array_equal(b.spectra[layer].dominant_period, a.spectra[layer].dominant_period)
        assert b.trace_units == a.trace_units
        pd.testing.assert_frame_equal(b.traces, a.traces, check_dtype=False)
        pd.testing.assert_frame_equal(b.bars, a.bars, check_dtype=False)
        pd.testing.assert_frame_equal(b.units, a.units.reset_index(drop=True), check_dtype=False)
    pd.testing.assert_frame_equal(out.summary, result.summary, check_dtype=False)
    pd.testing.assert_frame_equal(out.intervention_summary, result.intervention_summary, check_dtype=False)
    pd.testing.assert_frame_equal(out.interventions, result.interventions, check_dtype=False)


def test_the_notebook_only_reads_the_files(s2_files):
    from musinterp.notebooks import execute_notebook

    source = NOTEBOOK.read_text(encoding="utf-8")
    for forbidden in ("load(", "run_s2(", "musinterp.models", "import torch", "folkrnn_dynamics import"):
        assert forbidden not in source, forbidden
    _, _written, tmp_path = s2_files
    # only the rule's files: no model, no corpus, no tables of run_s2 anywhere near
    for folder in ("model", "corpus", "tables"):
        shutil.rmtree(tmp_path / folder)
    out = tmp_path / "nb" / "s2.ipynb"
    execute_notebook(NOTEBOOK, out, {"subject": "tiny", "s2_dir": str(tmp_path / "s2")}, cwd=tmp_path)
    text = out.read_text(encoding="utf-8")
    assert text.count("image/png") >= 5
    assert "Findings, beside Sturm" in text and "217 of 23,636" in text
