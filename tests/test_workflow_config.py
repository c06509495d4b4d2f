"""Config validation and workflow hygiene, through the real snakemake command."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_snakemake

pytestmark = pytest.mark.e2e  # runs the snakemake command

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


@pytest.mark.parametrize("name", ["folkrnn_v2.yaml", "folkrnn_v2_train.yaml", "s4_rs200.yaml"])
def test_opt_in_configs_dry_run(tmp_path, name):
    result = snakemake("-n", "--configfile", str(ROOT / "configs" / name), cwd=tmp_path)
    assert result.returncode == 0, result.stderr


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


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "src", "tests", "workflow", "bench"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_conda_env_mirrors_lock():
    from sync_from_lock import render

    lock = (ROOT / "requirements.lock").read_text()
    assert (ROOT / "envs" / "musinterp.yaml").read_text() == render(lock)
    assert "torch==2.13.0" in lock.splitlines()


def family_schema(family):
    return yaml.safe_load((ROOT / "workflow" / "schemas" / "families" / f"{family}.schema.yaml").read_text())


def test_every_registered_family_has_a_schema():
    from musinterp.registry import FAMILIES

    for family in FAMILIES:
        if family == "toymlp":  # registered by tests/test_family_interface.py, lives only in tests/
            continue
        assert family_schema(family)["additionalProperties"] is False


def test_family_schema_defaults_are_the_dataclass_defaults():
    """Schema defaults are the workflow's only defaults; they must say what the library says."""
    from dataclasses import MISSING, fields

    from musinterp.models.folkrnn.spec import FolkRNNConfig
    from musinterp.models.training import TrainConfig

    props = family_schema("folkrnn")["properties"]
    for section, cls, not_in_schema in (("model", FolkRNNConfig, {"vocab_size"}), ("train", TrainConfig, {"seed"})):
        schema = props[section]["properties"]
        names = {f.name for f in fields(cls)} - not_in_schema
        assert set(schema) == names, section
        for f in fields(cls):
            if f.name in names:
                assert f.default is not MISSING and schema[f.name]["default"] == f.default, (section, f.name)


def test_validation_fills_family_defaults(tmp_path):
    """A subject without model/train sections gets the family's defaults (folk-rnn v2 size)."""
    def drop(c):
        del c["subjects"]["folkrnn_small"]["model"]
    path = write_config(tmp_path, drop)
    result = snakemake("-n", "--configfile", str(path), "--printshellcmds", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # three layers by default: lstm2_h is a recorded site now
    assert "results/activations/folkrnn_small/lstm2_h.h5" in result.stdout


def test_unknown_family_names_subject(tmp_path):
    path = write_config(tmp_path, lambda c: c["subjects"]["folkrnn_small"].update(family="nope"))
    result = snakemake("-n", "--configfile", str(path), cwd=tmp_path)
    assert result.returncode != 0
    out = result.stderr + result.stdout
    assert "subjects.folkrnn_small.family is 'nope'" in out and "folkrnn" in out


def test_unknown_subject_key_names_subject_and_key(tmp_path):
    path = write_config(tmp_path, lambda c: c["subjects"]["folkrnn_small"].update(modle={"n_layers": 2}))
    result = snakemake("-n", "--configfile", str(path), cwd=tmp_path)
    assert result.returncode != 0
    out = result.stderr + result.stdout
    assert "subjects.folkrnn_small" in out and "modle" in out


def test_s2_schema_defaults_are_run_s2_defaults():
    import inspect

    from musinterp.analysis.folkrnn_dynamics import run_s2

    schema = family_schema("folkrnn")["properties"]["s2"]["properties"]
    signature = inspect.signature(run_s2).parameters
    for name, prop in schema.items():
        assert name in signature, name
        if "default" in prop:
            default = signature[name].default
            assert prop["default"] == (list(default) if isinstance(default, tuple) else default), name


def test_s4_schema_defaults_are_run_s4_defaults():
    import inspect

    from musinterp.analysis.s4 import run_s4

    schema = family_schema("chordlm")["properties"]["s4"]["properties"]
    signature = inspect.signature(run_s4).parameters
    for name, prop in schema.items():
        default = signature[name].default
        assert prop["default"] == (list(default) if isinstance(default, tuple) else default), name
