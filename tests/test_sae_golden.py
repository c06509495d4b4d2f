"""Fixed small training runs give exactly the weights, training logs and metrics that the trainer
gave before it was split into modules (issue 7): a refactoring guard for bit-identity.

The digests were recorded with the single-module trainer (commit c1f0c3a) on torch 2.13.0+cpu with
AVX512 kernels and one thread; float results of other torch builds or CPU kernels may differ in
the last bits, so elsewhere the test is skipped. To re-record after an intended change of the
trajectory, run the test and copy the digests from its failure message.
"""

import hashlib

import pytest
import torch
from safetensors.torch import load_file
from test_sae_relu_l1 import raw_acts, write_acts

from musinterp.sae import store, train_sae

RECORDED_WITH = ("2.13.0+cpu", "AVX512")

RUN = {"width": 32, "batch_size": 64, "epochs": 3, "eval_every": 4, "buffer_tokens": 100, "seed": 3}
CASES = {
    "relu_l1": {"arch": "relu_l1", "resample_every": 4, "dead_tokens": 64, **RUN},
    "relu_l1_default": {"arch": "relu_l1", "batch_size": 64},
    "topk": {"arch": "topk", "k": 3, "dead_tokens": 128, "resample_every": 5, **RUN},
    "batchtopk": {"arch": "batchtopk", "k": 3, "dead_tokens": 128, **RUN},
    "jumprelu": {"arch": "jumprelu", "l0_coeff": 1e-2, "resample_every": 6, "dead_tokens": 64, **RUN},
}
# name: (sha256 of the weights, sha256 of training_log.tsv, fvu, l0, final_train_loss)
GOLDEN = {
    "relu_l1": (
        "1787ec4a552becaa19b71a9c0e0713c1f837b33f4365ffd961cd495f2d639445",
        "b2307c753a02e7bb3ed6edf902c795a65d15df54ec7dcf0d4a01ad05899f240f",
        0.45347339082269733, 4.66, 0.540416419506073,
    ),
    "relu_l1_default": (
        "eda80111f548f7270b5f1490625309b735b7502a5c3302306e20ddac54ae73c3",
        "baea7712613dbd653811be776b5f2930e967a384df43b5a86277d33d278afb46",
        0.3459519681933022, 5.07, 0.4415433406829834,
    ),
    "topk": (
        "380643fadf3cfb9fc99f0f6a3ee13a2be72f841bcdbfe77288fa0ecf6959b981",
        "833b243470bbf5d28814d11d4a334ccba2ee1b453c30fb860b9e4d9637da4d1f",
        0.8410461446079525, 3.0, 0.46151965856552124,
    ),
    "batchtopk": (
        "eaaf3d917323f477d14d61f56fa4d1eb47cdf91b53d11196165f0ae42417eacd",
        "b684130b4135f92e69d9084971125526350232e706c6f80742fb1cefce30c0cc",
        1.7424388367213917, 2.51, 1.2682533264160156,
    ),
    "jumprelu": (
        "a41edcb89953384be650c5085239be1357574fb8b083b1d2ec0048c75fbd561b",
        "9a17bf67b3da0ae1850fd99064e845813d64a1d1703dbd2a42fe8b350e5c2a65",
        2.8595069585704964, 7.44, 1.7629905939102173,
    ),
}  # fmt: skip

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(
        (torch.__version__, torch.backends.cpu.get_cpu_capability()) != RECORDED_WITH,
        reason=f"digests recorded with torch {RECORDED_WITH[0]} on {RECORDED_WITH[1]} kernels",
    ),
]


def weights_digest(sae_dir):
    tensors = load_file(sae_dir / "sae_weights.safetensors")
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixed_run_is_bit_identical_to_the_recorded_one(tmp_path, monkeypatch, name):
    monkeypatch.setattr(store, "BLOCK_BYTES", 1)  # one 64-row chunk per block: several fills an epoch
    path = write_acts(tmp_path / "acts.h5", raw_acts())
    metrics = train_sae(path, tmp_path / name, **CASES[name])
    log = (tmp_path / name / "training_log.tsv").read_text()
    got = (
        weights_digest(tmp_path / name),
        hashlib.sha256(log.encode()).hexdigest(),
        metrics["fvu"],
        metrics["l0"],
        metrics["final_train_loss"],
    )
    assert got == GOLDEN[name], f"{name}: {got}"
