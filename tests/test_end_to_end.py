"""The tiny config through the real `snakemake` command in a temporary directory, then every output checked."""

import json
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_snakemake
from safetensors.torch import load_file

from musinterp.activations import ActivationFile
from musinterp.models import load

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "data" / "config_tiny.yaml"
SUBJECT, CORPUS, SAE_SITE, SAE = "folkrnn_tiny", "tiny_folk", "lstm1_h", "relu_l1_x2"

pytestmark = pytest.mark.e2e


def snakemake(workdir, *args):
    return run_snakemake(workdir, "--cores", "2", *args, configfile=CONFIG)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny_run")
    t0 = time.time()
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr[-5000:]
    report = snakemake(workdir, "--report", str(workdir / "results" / "report.html"))
    assert report.returncode == 0, report.stderr[-5000:]
    print(f"tiny workflow + report: {time.time() - t0:.0f} s")
    return workdir


def test_corpus_outputs(run):
    corpus = run / "resources" / "corpora" / CORPUS
    with h5py.File(corpus / "tokens.h5", "r") as f:
        offsets, tokens, split = f["offsets"][:], f["tokens"][:], f["split"][:]
    vocab = json.loads((corpus / "vocab.json").read_text())["tokens"]
    assert offsets[0] == 0 and offsets[-1] == len(tokens) and np.all(np.diff(offsets) > 0)
    assert tokens.max() < len(vocab) and {0, 1} <= set(split.tolist())
    manifest = pd.read_csv(corpus / "manifest.tsv", sep="\t", keep_default_na=False)
    assert (manifest.status == "ok").sum() == len(offsets) - 1
    assert (manifest.loc[manifest.status == "skipped", "reason"] != "").all()


def test_model_outputs(run):
    model, meta = load(run / "results" / "models" / SUBJECT)
    assert meta["family"] == "folkrnn" and len(meta["history"]["valid_loss"]) >= 1
    assert model.config.hidden_size == 24 and model.config.n_layers == 2
    samples = (run / "results" / "models" / SUBJECT / "samples.txt").read_text().strip().split("\n\n")
    assert len(samples) == 2 and all(s.split()[0] in meta["vocab"] for s in samples if s)


def test_activation_files_follow_contract(run):
    for site, d in [("lstm0_h", 24), ("lstm0_c", 24), ("lstm1_h", 24), ("lstm1_c", 24), ("softmax", None)]:
        with ActivationFile(run / "results" / "activations" / SUBJECT / f"{site}.h5") as acts:
            vocab = acts.vocab
            assert acts.d == (d or len(vocab)) and acts.attrs["site"] == site and acts.attrs["subject"] == SUBJECT
            assert acts.acts.dtype == np.float32 and acts.acts.chunks[1] == acts.d
            for col in ("piece", "position", "token", "next_token", "token_type", "bar", "pitch", "split"):
                assert col in acts.columns()
            split = json.loads(acts.attrs["split"])
            assert split["train"] and split["heldout"]
            x = acts.acts[:200]
            assert np.isfinite(x).all()
            if site == "softmax":
                np.testing.assert_allclose(x.sum(1), 1.0, atol=1e-4)
            if site.endswith("_h"):
                assert np.abs(x).max() <= 1.0  # h = o·tanh(c)


def test_sae_files_follow_saelens_contract(run):
    sae_dir = run / "results" / "sae" / SUBJECT / SAE_SITE / SAE
    cfg = json.loads((sae_dir / "cfg.json").read_text())
    tensors = load_file(str(sae_dir / "sae_weights.safetensors"))
    assert set(tensors) == {"W_enc", "b_enc", "W_dec", "b_dec"}
    assert cfg["architecture"] == "standard" and cfg["normalize_activations"] == "none"
    assert (cfg["d_in"], cfg["d_sae"]) == (24, 48)
    assert tensors["W_enc"].shape == (24, 48) and tensors["W_dec"].shape == (48, 24)
    assert tensors["b_enc"].shape == (48,) and tensors["b_dec"].shape == (24,)
    assert all(t.dtype == torch.float32 for t in tensors.values())
    metrics = json.loads((sae_dir / "metrics.json").read_text())
    for key in ("fvu", "l0", "dead_fraction", "dense_fraction"):
        assert np.isfinite(metrics[key])
    assert 0 <= metrics["dead_fraction"] <= 1 and metrics["fvu"] < 1.0


def test_sae_sweep_and_loss_recovered(run):
    for name, k in (("topk-k4", 4), ("topk-k8", 8)):
        sae_dir = run / "results" / "sae" / SUBJECT / SAE_SITE / name
        cfg = json.loads((sae_dir / "cfg.json").read_text())
        assert cfg["architecture"] == "topk" and cfg["k"] == k
        metrics = json.loads((sae_dir / "metrics.json").read_text())
        assert metrics["l0"] <= k + 1e-6
        assert metrics["loss_zero"] > metrics["loss_clean"]
        assert -1.0 < metrics["loss_recovered"] <= 1.0 + 1e-6


def test_s2_tables_and_notebook(run):
    tables = run / "results" / "analyses" / SUBJECT / "s2"
    units = pd.read_csv(tables / "units.tsv", sep="\t")
    assert set(units.tune) == {"generated", "two_bars"} and set(units.layer) == {0, 1}
    assert len(units) == 2 * 2 * 24 and units.max_abs.between(0, 1).all()
    interventions = pd.read_csv(tables / "interventions.tsv", sep="\t")
    assert {"clean"} < set(interventions.condition) and set(interventions.seed) == {0, 1}
    assert interventions.p_bar_line_at_bar_ends.between(0, 1).all()
    copying = pd.read_csv(tables / "copying.tsv", sep="\t")
    assert len(copying) > 0
    html = (run / "results" / "reports" / f"{SUBJECT}_s2_folkrnn.html").read_text()
    assert html.count("data:image/png;base64") >= 5


def test_features_table(run):
    table = pd.read_parquet(run / "results" / "features" / SUBJECT / SAE_SITE / SAE / "features.parquet")
    assert (table.kind == "latent").sum() == 48 and (table.kind == "neuron").sum() == 24
    assert table.density.between(0, 1).all()
    alive = table[(table.kind == "latent") & (table.density > 0)]
    assert len(alive) > 0
    example = list(alive.iloc[0]["top_examples"])[0]
    assert {"piece", "position", "activation", "context"} <= set(example)
    assert (run / "results" / "features" / SUBJECT / SAE_SITE / SAE / "dashboard" / "index.html").exists()


def test_html_outputs_contain_figures(run):
    html = (run / "results" / "reports" / f"{SUBJECT}_overview.html").read_text()
    assert html.count("data:image/png;base64") >= 3
    for heading in ("Corpus", "Model training", "Sparse autoencoders", "Features"):
        assert f">{heading}<" in html
    assert "def " not in html  # rendered without code cells
    assert (run / "results" / "notebooks" / f"{SUBJECT}_overview.ipynb").exists()
    report = (run / "results" / "report.html").read_text(errors="replace")
    assert len(report) > 10_000


def test_benchmarks_and_logs_written(run):
    benchmarks = list((run / "results" / "benchmarks").rglob("*.tsv"))
    logs = list((run / "results" / "logs").rglob("*.log"))
    assert len(benchmarks) >= 5 and len(logs) >= 8
    assert all(pd.read_csv(b, sep="\t").s.iloc[0] >= 0 for b in benchmarks)


S4_SUBJECTS = ("chord_tiny_1l", "chord_tiny_2l", "chord_tiny_2l_seed1")


def test_s4_outputs(run):
    """Study S4 on the tiny transformers: every table, the unit and universality tables, the
    snapshots behind the dynamics, and the notebook with its figures."""
    from musinterp.analysis.s4 import TABLES

    corpus = run / "resources" / "corpora" / "tiny_pop"
    assert (corpus / "songs.json").exists()
    with h5py.File(corpus / "tokens.h5", "r") as f:
        assert {"period", "loop_position", "section_occurrence"} <= set(f["columns"])
    for subject in S4_SUBJECTS:
        s4 = run / "results" / "analyses" / subject / "s4"
        heads = pd.read_csv(s4 / "heads.tsv", sep="\t")
        layers = json.loads((s4 / "model.json").read_text())["config"]["n_layers"]
        assert len(heads) == layers * 2 and heads["previous_token"].between(0, 1).all()
        copies = pd.read_csv(s4 / "copies.tsv", sep="\t")
        assert list(copies["length"]) == [6] and (copies[["first", "second"]] > 0).all().all()
        loops = pd.read_csv(s4 / "loops.tsv", sep="\t")
        assert set(loops["period"]) <= {4, 8} and loops["accuracy"].between(0, 1).all()
        snapshots = sorted((run / "results" / "models" / subject / "snapshots").glob("step_*.pt"))
        assert len(pd.read_csv(s4 / "dynamics.tsv", sep="\t")) == len(snapshots) >= 2
        for name in TABLES:
            assert (s4 / f"{name}.tsv").exists(), name
    ablation = pd.read_csv(run / "results" / "analyses" / "chord_tiny_2l" / "s4" / "ablation.tsv", sep="\t")
    assert set(ablation["condition"]) == {"clean", "ablate_previous_token_head", "ablate_random_head",
                                          "k_only_patch_previous_token_head"}
    units = run / "results" / "analyses" / "chord_tiny_2l" / "s4" / "units" / "blocks.0.hook_resid_post"
    summary = pd.read_csv(units / "topk_summary.tsv", sep="\t")
    assert set(summary["kind"]) == {"neuron", "latent"} and list(summary["units"]) == [32, 16]
    pair = run / "results" / "analyses" / "s4_universality" / "chord_tiny_2l__chord_tiny_2l_seed1"
    match = json.loads((pair / "blocks.0.hook_resid_post" / "topk.json").read_text())
    assert 0 <= match["share_latents_matched"] <= 1 and match["n_live_latents_a"] <= 32
    html = (run / "results" / "reports" / "s4_induction.html").read_text()
    assert html.count("<img") >= 3 and "Findings" in html and "Universality" in html
