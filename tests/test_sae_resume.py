"""Checkpoints: a killed run resumed from its last checkpoint ends bit-identical to an uninterrupted
one; runs are deterministic; stale checkpoints are not resumed."""

import json
import logging

import pytest
import torch
from safetensors.torch import load_file
from test_sae_relu_l1 import raw_acts, write_acts

from musinterp.sae import ReluL1SAE, store, train_sae, trainer
from musinterp.sae.trainer import CHECKPOINT_FILE, LOG_FILE, checkpoint_dir_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 500 training rows in batches of 64: 8 steps per epoch, 24 in all; checkpoints at 5, 10, 15, 20.
# The kill comes after the second one: step 10, mid-way through epoch 2.
RUN = dict(width=32, batch_size=64, epochs=3, eval_every=4, checkpoint_every=5, buffer_tokens=100)
ARCH_SETTINGS = {
    # resampling draws from the seeded generator, so its state must travel in the checkpoint too
    "relu_l1": dict(resample_every=4, dead_tokens=64),
    "topk": dict(k=3, dead_tokens=128),
    "batchtopk": dict(k=3, dead_tokens=128),
    "jumprelu": dict(l0_coeff=1e-2),
}
VARIABLE = ("seconds", "tokens_per_second", "resumed_from_step")


class Killed(RuntimeError):
    pass


class ForeverDead(ReluL1SAE):
    """Latents 0-7 are pushed dead again after every step, so every resampling (steps 4, 8 and 12,
    the last after the resumption) has 8 latents to resample."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.after_optimizer_step()

    def after_optimizer_step(self):
        super().after_optimizer_step()
        with torch.no_grad():
            self.b_enc[:8] = -20.0


@pytest.fixture()
def small_blocks(monkeypatch):
    """One HDF5 chunk (64 rows) per block, so the shuffle has several fills per epoch."""
    monkeypatch.setattr(store, "BLOCK_BYTES", 1)


class CheckpointKiller:
    """Wraps the trainer's ``save_checkpoint``: once armed with ``n``, the trainer dies right after
    writing its ``n``-th checkpoint from then on (as a run killed at that moment would)."""

    def __init__(self, monkeypatch):
        self.real = trainer.save_checkpoint
        self.remaining = None
        self.written = []
        monkeypatch.setattr(trainer, "save_checkpoint", self)

    def arm(self, n):
        self.remaining, self.written = n, []
        return self

    def __call__(self, path, state):
        self.real(path, state)
        self.written.append(state["step"])
        if self.remaining is not None:
            self.remaining -= 1
            if self.remaining == 0:
                self.remaining = None
                raise Killed(f"killed after the checkpoint at step {state['step']}")


@pytest.fixture()
def killer(monkeypatch):
    return CheckpointKiller(monkeypatch)


def weights(sae_dir):
    return load_file(sae_dir / "sae_weights.safetensors")


def assert_same_run(a, b):
    """Same weights, log, cfg and metrics (but timings; and checkpoint_every, which may differ)."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    assert (a / LOG_FILE).read_text() == (b / LOG_FILE).read_text()

    def read(sae_dir, name):
        content = json.loads((sae_dir / name).read_text())
        settings = (
            content["metadata"]["provenance"]["settings"] if name == "cfg.json" else content["settings"]
        )
        settings.pop("checkpoint_every")
        return {k: v for k, v in content.items() if k not in VARIABLE}

    for name in ("cfg.json", "metrics.json"):
        assert read(a, name) == read(b, name)


@pytest.mark.parametrize("arch", sorted(ARCH_SETTINGS))
def test_killed_and_resumed_run_equals_an_uninterrupted_one(
    tmp_path, monkeypatch, caplog, small_blocks, killer, arch
):
    path = write_acts(tmp_path / "acts.h5", raw_acts())
    if arch == "relu_l1":
        monkeypatch.setitem(trainer.ARCHITECTURES, "relu_l1", ForeverDead)
    settings = dict(arch=arch, seed=3, **ARCH_SETTINGS[arch], **RUN)
    caplog.set_level(logging.INFO, logger="musinterp.sae.trainer")
    straight = train_sae(path, tmp_path / "straight", **settings)
    assert straight["steps"] == 24 and straight["resumed_from_step"] is None
    assert not checkpoint_dir_for(tmp_path / "straight").exists()  # removed after the finish
    if arch == "relu_l1":
        assert "step 12: resampled 8 dead latents" in caplog.text  # the generator is used after step 10

    killer.arm(2)
    with pytest.raises(Killed):
        train_sae(path, tmp_path / "sae", **settings)
    assert killer.written == [5, 10]
    ckpt = checkpoint_dir_for(tmp_path / "sae")
    assert sorted(p.name for p in ckpt.iterdir()) == [CHECKPOINT_FILE, LOG_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acts.h5", "sae.ckpt", "straight"]  # no output
    assert "holds the last checkpoint" in caplog.text

    resumed = train_sae(path, tmp_path / "sae", **settings)
    assert resumed["resumed_from_step"] == 10
    assert_same_run(tmp_path / "straight", tmp_path / "sae")
    assert not ckpt.exists()

    again = train_sae(path, tmp_path / "again", **settings)  # and a run is deterministic
    assert again["resumed_from_step"] is None
    assert_same_run(tmp_path / "straight", tmp_path / "again")


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path, caplog, small_blocks, killer):
    path = write_acts(tmp_path / "acts.h5", raw_acts())
    settings = dict(arch="topk", k=3, seed=0, **RUN)
    with pytest.raises(Killed):
        killer.arm(1)
        train_sae(path, tmp_path / "sae", **settings)
    assert (checkpoint_dir_for(tmp_path / "sae") / CHECKPOINT_FILE).is_file()

    caplog.set_level(logging.WARNING, logger="musinterp.sae.trainer")
    other = train_sae(path, tmp_path / "sae", **{**settings, "lr": 2e-3})  # another lr: start afresh
    assert other["resumed_from_step"] is None
    assert "other settings" in caplog.text
    train_sae(path, tmp_path / "reference", **{**settings, "lr": 2e-3})
    assert_same_run(tmp_path / "reference", tmp_path / "sae")

    # checkpoint_every does not change the trajectory, so it may differ between kill and resume
    killer.arm(1)
    with pytest.raises(Killed):
        train_sae(path, tmp_path / "third", **settings)
    resumed = train_sae(path, tmp_path / "third", **{**settings, "checkpoint_every": 7})
    assert resumed["resumed_from_step"] == 5
    train_sae(path, tmp_path / "fourth", **settings)
    assert_same_run(tmp_path / "fourth", tmp_path / "third")


def test_a_failure_before_the_first_checkpoint_leaves_nothing(tmp_path):
    path = write_acts(tmp_path / "acts.h5", raw_acts())
    with pytest.raises(FloatingPointError, match="diverged"):
        train_sae(path, tmp_path / "sae", lr=float("inf"), width=32, batch_size=64, checkpoint_every=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acts.h5"]


def test_the_running_loss_means_survive_a_kill(tmp_path, killer):
    # No evaluation before the end: the final training loss means span every step, killed or not.
    path = write_acts(tmp_path / "acts.h5", raw_acts())
    settings = dict(arch="topk", k=3, **{**RUN, "eval_every": 10**6})
    straight = train_sae(path, tmp_path / "straight", **settings)
    killer.arm(2)
    with pytest.raises(Killed):
        train_sae(path, tmp_path / "sae", **settings)
    resumed = train_sae(path, tmp_path / "sae", **settings)
    assert resumed["final_train_loss_parts"] == straight["final_train_loss_parts"]
    rows = [line.split("\t") for line in (tmp_path / "sae" / LOG_FILE).read_text().splitlines()]
    losses = [float(row[rows[0].index("loss")]) for row in rows[1:]]
    assert straight["final_train_loss_parts"]["loss"] == pytest.approx(sum(losses) / 24, rel=1e-6)
