"""Config validation and workflow hygiene, through the real snakemake command."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import run_snakemake

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "envs"))


def snakemake(*args, cwd=ROOT):
    return run_snakemake(cwd, *args, timeout=300)


def write_config(tmp_path, mutate):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    mutate(config)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_default_config_dry_run(tmp_path):
    result = snakemake("-n", "--configfile", str(ROOT / "config.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "train_sae" in result.stdout and "render_notebook" in result.stdout


def test_unknown_key_stops_before_any_job(tmp_path):
    path = write_config(tmp_path, lambda c: c["subjects"]["folkrnn_small"]["train"].update(epoks=3))
    result = snakemake("-n", "--configfile", str(path), cwd=tmp_path)
    assert result.returncode != 0
    assert "epoks" in result.stderr + result.stdout
    assert not (tmp_path / "results").exists()


def test_wrong_type_names_the_key(tmp_path):
    path = write_config(tmp_path, lambda c: c["subjects"]["folkrnn_small"]["model"].update(hidden_size="big"))
    result = snakemake("-n", "--configfile", str(path), cwd=tmp_path)
    assert result.returncode != 0
    out = result.stderr + result.stdout
    assert "hidden_size" in out and "'big'" in out


def test_subject_with_unknown_corpus(tmp_path):
    path = write_config(tmp_path, lambda c: c["subjects"]["folkrnn_small"].update(corpus="nope"))
    result = snakemake("-n", "--configfile", str(path), cwd=tmp_path)
    assert result.returncode != 0
    assert "subjects.folkrnn_small.corpus" in result.stderr + result.stdout


def test_snakefmt_and_lint_are_clean():
    fmt = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow/rules"],
                         cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stderr
    lint = snakemake("--lint")
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_conda_env_mirrors_lock():
    from sync_from_lock import render

    lock = (ROOT / "requirements.lock").read_text()
    assert (ROOT / "envs" / "musinterp.yaml").read_text() == render(lock)
    assert "torch==2.13.0" in lock.splitlines()
