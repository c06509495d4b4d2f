"""The tiny config through `snakemake --profile profiles/slurm` on a real single-node SLURM cluster.

The cluster (tests/slurm_cluster.py) is CPU only, like the cluster in issue 7: a job that asks for a
GPU is refused there, so the test also shows that profiles/slurm asks for none. Skips where SLURM
is not installed (Debian: `apt-get install slurm-wlm munge`; .ci/run installs them in CI).
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from slurm_cluster import PARTITION, missing_commands, start_cluster

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "data" / "config_tiny.yaml"
PROFILE = ROOT / "profiles" / "slurm"
GPU_PROFILE = ROOT / "profiles" / "slurm-gpu"
SUBJECT = "folkrnn_tiny"
TARGET = f"results/reports/{SUBJECT}_overview.html"  # corpus, model, activations, SAEs, features, notebook
# The plugin's options for a cluster without accounting (no slurmdbd: `sacct` knows nothing), and
# for a test that should not idle: first status check after 2 s instead of 40 s.
LOCAL_CLUSTER_FLAGS = [
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "2",
    "--slurm-keep-successful-logs",
]


def profile(path):
    return yaml.safe_load((path / "config.yaml").read_text())


def test_slurm_profile_asks_for_no_gpu_and_gpu_profile_only_adds_gpus():
    cpu, gpu = profile(PROFILE), profile(GPU_PROFILE)
    settings = [line.split("#")[0] for line in (PROFILE / "config.yaml").read_text().splitlines()]
    assert not any("gpu" in line or "gres" in line for line in settings)
    for resources in [cpu["default-resources"], *cpu["set-resources"].values()]:
        assert not {"gpu", "gpus", "gres", "gpu_model"} & set(resources)
    gpus = {rule: res.get("gpu") for rule, res in gpu["set-resources"].items()}
    assert gpus == {"train_model": 1, "train_sae": 1}
    for rule in gpu["set-resources"]:
        gpu["set-resources"][rule].pop("gpu")
    assert gpu == cpu


@pytest.fixture(scope="session")
def slurm_cluster():
    missing = missing_commands()
    if missing:
        pytest.skip(
            f"SLURM is not installed ({', '.join(missing)} not on PATH): "
            "`apt-get install slurm-wlm munge` (Debian), as .ci/run does in CI"
        )
    if os.geteuid() != 0:
        pytest.skip("the single-node SLURM cluster runs slurmd, which needs root")
    cluster = start_cluster()
    yield cluster
    cluster.stop()
    shutil.rmtree(cluster.root, ignore_errors=True)


def squeue(cluster):
    """{job id: (state, comment)} for every job the cluster still remembers (MinJobAge)."""
    out = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%T|%k"],
        capture_output=True,
        text=True,
        env=cluster.env(),
        check=True,
        timeout=30,
    ).stdout
    return {i: (state, comment) for i, state, comment in (line.split("|", 2) for line in out.split())}


@pytest.mark.slurm
def test_cluster_is_cpu_only(slurm_cluster):
    """What issue 7 hit: sbatch refuses a GPU on a cluster without GPUs."""
    refused = subprocess.run(
        ["sbatch", "--parsable", f"--partition={PARTITION}", "--gpus=1", "--wrap", "true"],
        capture_output=True,
        text=True,
        env=slurm_cluster.env(),
        cwd=slurm_cluster.root,
        timeout=30,
    )
    assert refused.returncode != 0
    assert "generic resource" in refused.stderr.lower() or "gres" in refused.stderr.lower(), refused.stderr


@pytest.mark.e2e
@pytest.mark.slurm
def test_tiny_config_through_slurm_profile(slurm_cluster, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    env = slurm_cluster.env()
    # Each job runs snakemake (the slurm-jobstep executor, under srun) and the workflow's scripts:
    # this interpreter's environment comes first on the PATH the jobs inherit (sbatch --export=ALL).
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    args = []
    # The profile's memory for the training rules, capped to what the local node has.
    if any(res.get("mem_mb", 0) > slurm_cluster.memory_mb for res in profile(PROFILE)["set-resources"].values()):
        args.append("--set-resources")
        for rule, res in profile(PROFILE)["set-resources"].items():
            res["mem_mb"] = min(res.get("mem_mb", 0), slurm_cluster.memory_mb)
            args += [f"{rule}:{key}={value}" for key, value in res.items()]
    cmd = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(ROOT / "Snakefile"),
        "--profile", str(PROFILE),
        "--configfile", str(CONFIG),
        "--jobs", "2",
        *LOCAL_CLUSTER_FLAGS,
        *args,
        "--", TARGET,
    ]  # fmt: skip
    t0 = time.monotonic()
    result = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=1500)
    elapsed = time.monotonic() - t0
    log = result.stdout + result.stderr
    slurm_logs = sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert result.returncode == 0, (
        f"snakemake exited {result.returncode} after {elapsed:.0f} s\n{log[-6000:]}\n"
        + "".join(f"--- {p} ---\n{p.read_text(errors='replace')[-2000:]}\n" for p in slurm_logs[-3:])
        + slurm_cluster.log_tails()
    )

    # The run's products.
    assert (workdir / TARGET).stat().st_size > 0
    metrics = list((workdir / "results" / "sae" / SUBJECT).glob("*/*/metrics.json"))
    assert len(metrics) == 3, metrics  # relu_l1_x2, topk-k4, topk-k8

    # Every job went through SLURM and finished there: the plugin's sbatch job ids, their logs
    # (.snakemake/slurm_logs/rule_<rule>/<wildcards>/<id>.log) and the cluster's record of them.
    logdir = workdir / ".snakemake" / "slurm_logs"
    submitted = {
        job_id: Path(path).relative_to(logdir).parts[0].removeprefix("rule_")
        for job_id, path in re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", log)
    }
    ran = set(submitted.values())
    stages = ["build_corpus", "train_model", "record_activations", "train_sae", "build_features"]
    for stage in stages + ["overview_notebook", "render_notebook"]:  # or one rule per subject: <stage>_<subject>
        assert any(rule == stage or rule.startswith(stage + "_") for rule in ran), (stage, ran)
    jobs = squeue(slurm_cluster)
    states = {i: jobs.get(i, ("forgotten",))[0] for i in submitted}
    assert set(states.values()) == {"COMPLETED"}, states
    assert {p.stem for p in slurm_logs} == set(submitted)  # one kept log per sbatch job
    assert {p.relative_to(logdir).parts[0] for p in slurm_logs} == {f"rule_{rule}" for rule in ran}
    counts = {rule: list(submitted.values()).count(rule) for rule in sorted(ran)}
    print(f"\nSLURM tiny run: {len(submitted)} sbatch jobs {counts} in {elapsed:.0f} s")
