"""Train a sparse autoencoder on an activation file and write an SAELens-loadable SAE directory.

    acts.h5 (/acts [n, d], /tokens/piece, position, token [, split])
        →  out_dir/cfg.json, sae_weights.safetensors, metrics.json, training_log.tsv

This module is the training loop; each step it takes lives in its own module:

1. Settings (:mod:`.settings`): the generic ones (:class:`TrainSettings`) and the architecture's
   own (its config dataclass) are split and checked before any work.
2. Rows (:mod:`.store`): the file's ``split`` column, or a seeded split by piece when it has none,
   says which rows train (0) and which are held out (1).
3. Statistics and normalisation (:mod:`.normalisation`): one pass over every row checks that all
   activations are finite and computes the training rows' statistics; the architecture's input
   normalisation ``x_n = (x − shift) / divisor`` follows from them (``relu_l1``: per-dimension
   z-scoring; the others: ``x_n = s · x`` with ``s = sqrt(d_in / E‖x‖²)``), and is folded into the
   saved weights (:func:`musinterp.sae.saelens.fold_input_normalisation`).
4. Training streams the training rows in a seeded global shuffle with bounded memory
   (:func:`.store.iter_shuffled_rows`): the order of an epoch is a function of (seed, epoch) alone,
   so a run can resume at any batch. Each step (:mod:`.schedule` for the learning rate): set the
   step's learning rate (linear warm-up, constant, linear decay), the architecture's
   ``training_loss``, Adam, then the architecture's constraint (``after_optimizer_step``: unit-norm
   decoder rows).
5. The trainer counts, for every latent, the training tokens since it last fired. A latent is
   *dead* (for training purposes) once that count reaches ``dead_tokens``; the top-k family
   trains dead latents with its AuxK loss, and every architecture can resample them
   (``resample_every`` steps, during the first half of training; :mod:`.base`).
6. Held-out rows measure FVU, L0, dead and dense fractions (:mod:`.metrics`) in the raw
   activation space: every ``eval_every`` steps on the first ``eval_tokens`` held-out rows, and at
   the end on all of them.
7. Every ``checkpoint_every`` steps the whole training state goes to ``{out_dir}.ckpt/``
   (:mod:`.checkpoint`), beside the output; a run started again with the same settings on the same
   file resumes from it and ends with bit-identical weights (on the same device and thread
   count). At the end the output directory is written atomically and the checkpoint directory
   removed. (:mod:`.allocator` keeps glibc from unmapping the step's temporaries meanwhile.)

The loop knows no architecture: it uses the interface documented on
:class:`musinterp.sae.base.SparseAutoencoder` (``input_normalisation``, ``loss_parts``,
``config_from_settings``, ``from_settings``, ``forward`` → ``x̂, z``, ``training_loss`` → loss,
parts, latents, ``after_optimizer_step``, ``resample_dead_latents``, ``saelens_export``,
``apply_b_dec_to_input``). A new architecture is one module plus one entry in
:data:`ARCHITECTURES` (:mod:`.settings`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from musinterp import PRODUCER
from musinterp.io import atomic_dir, write_json
from musinterp.sae.allocator import keep_freed_memory_mapped
from musinterp.sae.checkpoint import (
    CHECKPOINT_FILE,
    LOG_FILE,
    TrainingLog,
    checkpoint_dir_for,
    fingerprint,
    resumable_checkpoint,
    save_checkpoint,
)
from musinterp.sae.metrics import evaluate
from musinterp.sae.normalisation import (
    InputStatistics,
    input_normalisation,
    input_statistics,
)
from musinterp.sae.saelens import fold_input_normalisation, saelens_cfg, save_sae
from musinterp.sae.schedule import (
    count_steps,
    learning_rate,
    make_optimizer,
    resolve_dead_tokens,
)
from musinterp.sae.settings import (
    ARCHITECTURES,
    TrainSettings,
    check_architecture_settings,
    split_settings,
)
from musinterp.sae.store import (
    HELDOUT,
    TRAIN,
    ActivationStore,
    iter_rows,
    iter_shuffled_rows,
    shuffle_groups,
)

log = logging.getLogger(__name__)

SHUFFLE_BUFFER_BYTES = 256 << 20


def train_sae(
    acts_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    arch: str = "relu_l1",
    *,
    site: str | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Train an SAE on ``acts_path`` and write it to ``out_dir``; return the final metrics.

    ``settings`` are the generic settings (fields of :class:`TrainSettings`: ``width``, ``lr``,
    ``batch_size``, ``epochs``, ``seed``, ...) and the architecture's own (fields of its config
    dataclass: :class:`~musinterp.sae.relu_l1.ReluL1Config`, :class:`~musinterp.sae.topk.TopKConfig`,
    :class:`~musinterp.sae.batchtopk.BatchTopKConfig`, :class:`~musinterp.sae.jumprelu.JumpReLUConfig`);
    one left out, or ``None``, takes its dataclass's default; one that the architecture does not
    read is an error (:func:`musinterp.sae.settings.split_settings`). ``site`` is what metrics.json
    and cfg.json record as the SAE's site (default: the file's ``site`` attribute, else None).
    Deterministic on CPU for a given ``seed`` (initialisation, shuffling, resampling and a drawn
    split use only generators seeded with it). ``out_dir`` appears only when everything has been
    written; a run killed after a checkpoint resumes from ``{out_dir}.ckpt/`` when started again
    with the same settings.
    """
    train_settings, arch_settings = split_settings({"arch": arch, **settings})
    return train_sae_with(acts_path, out_dir, train_settings, arch_settings, site=site)


def train_sae_with(
    acts_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: TrainSettings,
    arch_settings: Mapping[str, Any] | None = None,
    *,
    site: str | None = None,
) -> dict[str, Any]:
    """:func:`train_sae` with its generic settings in one :class:`TrainSettings` and the
    architecture's in ``arch_settings`` (names of its config dataclass's fields)."""
    settings.check()
    arch_settings = dict(arch_settings or {})
    check_architecture_settings(settings.arch, arch_settings)
    acts_path, out_dir = Path(acts_path), Path(out_dir)
    arch_cls = ARCHITECTURES[settings.arch]
    keep_freed_memory_mapped()
    t_start = time.perf_counter()
    with ActivationStore(acts_path, split_seed=settings.seed, heldout_fraction=settings.heldout_fraction) as store:
        n_train, n_heldout = store.count(TRAIN), store.count(HELDOUT)
        if n_train == 0:
            raise ValueError(f"{acts_path}: no training rows (/tokens/split == {TRAIN})")
        if n_heldout == 0:
            raise ValueError(
                f"{acts_path}: no held-out rows (/tokens/split == {HELDOUT}); the SAE stage measures "
                "FVU, L0 and dead latents on held-out pieces, so record activations with held-out pieces"
            )
        d_in = store.d
        d_sae = settings.width or 4 * d_in
        arch_cfg = arch_cls.config_from_settings(d_in, d_sae, arch_settings)  # refuse bad ones before any work
        batch_size = settings.batch_size
        total_tokens = settings.epochs * n_train
        if settings.max_tokens is not None:
            total_tokens = min(settings.max_tokens, total_tokens)
        total_steps = count_steps(n_train, batch_size, total_tokens)
        dead_tokens = resolve_dead_tokens(settings.dead_tokens, total_tokens, batch_size)
        resolved = {
            **asdict(settings),
            "width": d_sae,
            "dead_tokens": dead_tokens,
            **{name: getattr(arch_cfg, name) for name in arch_cls.setting_names()},
        }
        log.info(
            "training %s SAE %d->%d on %s: %d train / %d held-out tokens, %d epochs (%d steps), batch %d, seed %d",
            settings.arch, d_in, d_sae, acts_path, n_train, n_heldout, settings.epochs, total_steps,
            batch_size, settings.seed,
        )  # fmt: skip
        stats = input_statistics(store)
        if stats.n_constant:
            log.warning(
                "%s: %d of %d dimensions are constant on the training rows", acts_path, stats.n_constant, d_in
            )
        shift, divisor, normalisation = input_normalisation(arch_cls.input_normalisation, stats)

        torch_device = torch.device(settings.device)
        shift_dev = shift.to(torch.float32).to(torch_device)
        divisor_dev = divisor.to(torch.float32).to(torch_device)
        generator = torch.Generator().manual_seed(settings.seed)
        input_mean = ((stats.mean - shift) / divisor).to(torch.float32)
        sae = arch_cls.from_settings(d_in, d_sae, arch_settings, generator=generator, input_mean=input_mean)
        sae = sae.to(torch_device)
        optimizer = make_optimizer(sae.parameters(), settings.lr)
        eval_rows = np.concatenate(list(iter_rows(store, HELDOUT, limit=settings.eval_tokens)))
        buffer_rows = settings.buffer_tokens or max(4 * batch_size, SHUFFLE_BUFFER_BYTES // (4 * d_in))

        # Training state: everything a checkpoint holds.
        step = tokens_seen = 0
        tokens_since_fired = torch.zeros(d_sae, dtype=torch.int64, device=torch_device)
        window = {"steps": 0, "sums": {}}  # loss parts summed since the last held-out evaluation
        ckpt_dir = checkpoint_dir_for(out_dir)
        run_fingerprint = fingerprint(resolved, store.identity())
        state = resumable_checkpoint(ckpt_dir, run_fingerprint, torch_device)
        resumed_from = None
        if state is not None:
            sae.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"].cpu())
            tokens_since_fired = state["tokens_since_fired"].to(torch_device)
            step, tokens_seen, window = state["step"], state["tokens_seen"], state["window"]
            resumed_from = step
            log.info("resuming %s from the checkpoint at step %d in %s", out_dir, step, ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        training_log = TrainingLog(
            ckpt_dir / LOG_FILE, list(arch_cls.loss_parts), None if state is None else state["log_bytes"]
        )
        del state

        last: dict[str, Any] = {}
        final_parts: dict[str, float] = {}
        progress = tqdm(
            total=total_tokens, initial=tokens_seen, desc=f"training SAE {out_dir.name}",
            unit="tok", unit_scale=True, mininterval=2.0,
        )  # fmt: skip
        try:
            epoch, start = divmod(tokens_seen, n_train)
            while tokens_seen < total_tokens:
                batches = iter_shuffled_rows(
                    store, TRAIN, batch_size, buffer_rows, settings.seed, epoch, start
                )
                for batch in batches:
                    batch = batch[: total_tokens - tokens_seen]
                    x = (torch.from_numpy(batch).to(torch_device) - shift_dev) / divisor_dev
                    lr_now = learning_rate(
                        step, total_steps, settings.lr, settings.warmup_fraction, settings.decay_fraction
                    )
                    for group in optimizer.param_groups:
                        group["lr"] = lr_now
                    out = sae.training_loss(x, tokens_since_fired >= dead_tokens)
                    optimizer.zero_grad(set_to_none=True)
                    out.loss.backward()
                    optimizer.step()
                    sae.after_optimizer_step()
                    step += 1
                    tokens_seen += len(batch)
                    progress.update(len(batch))
                    fired = (out.latents != 0).any(dim=0)
                    tokens_since_fired = torch.where(fired, 0, tokens_since_fired + len(batch))

                    if (
                        settings.resample_every is not None
                        and step % settings.resample_every == 0
                        and step <= total_steps // 2
                    ):
                        dead_mask = tokens_since_fired >= dead_tokens
                        n_resampled = sae.resample_dead_latents(x, dead_mask, optimizer, generator)
                        if n_resampled:
                            tokens_since_fired[dead_mask] = 0
                            log.info("step %d: resampled %d dead latents", step, n_resampled)

                    row = {
                        "step": step,
                        "tokens_seen": tokens_seen,
                        "lr": lr_now,
                        "loss": float(out.loss.detach()),
                    }
                    row.update({name: float(value) for name, value in out.parts.items()})
                    row["dead_latents"] = int((tokens_since_fired >= dead_tokens).sum())
                    if not math.isfinite(row["loss"]):
                        raise FloatingPointError(
                            f"{acts_path}: SAE training diverged at step {step} (loss {row['loss']}); try a lower lr"
                        )
                    window["steps"] += 1
                    for name in ("loss", *arch_cls.loss_parts):
                        window["sums"][name] = window["sums"].get(name, 0.0) + row[name]
                    if step % settings.eval_every == 0 or tokens_seen >= total_tokens:
                        metrics = evaluate(sae, [eval_rows], shift_dev, divisor_dev)
                        row.update(heldout_fvu=metrics.fvu, heldout_l0=metrics.l0)
                        final_parts = {name: s / window["steps"] for name, s in window["sums"].items()}
                        window = {"steps": 0, "sums": {}}
                        progress.set_postfix(
                            loss=f"{row['loss']:.4g}", fvu=f"{metrics.fvu:.3f}", l0=f"{metrics.l0:.1f}"
                        )
                        log.info(
                            "step %d/%d epoch %d tokens %d: loss %.5g, held-out FVU %.4f, L0 %.2f, %d dead",
                            step, total_steps, epoch + 1, tokens_seen, row["loss"], metrics.fvu, metrics.l0,
                            row["dead_latents"],
                        )  # fmt: skip
                    training_log.write(row)
                    last = row
                    if (
                        settings.checkpoint_every is not None
                        and step % settings.checkpoint_every == 0
                        and tokens_seen < total_tokens
                    ):
                        save_checkpoint(
                            ckpt_dir / CHECKPOINT_FILE,
                            {
                                "fingerprint": run_fingerprint,
                                "step": step,
                                "tokens_seen": tokens_seen,
                                "model": sae.state_dict(),
                                "optimizer": optimizer.state_dict(),
                                "generator": generator.get_state(),
                                "tokens_since_fired": tokens_since_fired,
                                "window": window,
                                "log_bytes": training_log.flush(),
                            },
                        )
                    if tokens_seen >= total_tokens:
                        break
                epoch, start = epoch + 1, 0
        except BaseException:
            training_log.close()
            progress.close()
            if (ckpt_dir / CHECKPOINT_FILE).is_file():
                log.warning(
                    "training stopped; %s holds the last checkpoint: run again with the same settings to resume",
                    ckpt_dir,
                )
            else:
                shutil.rmtree(ckpt_dir, ignore_errors=True)
            raise
        training_log.close()
        progress.close()

        final = evaluate(sae, iter_rows(store, HELDOUT), shift_dev, divisor_dev)
        seconds = time.perf_counter() - t_start
        recorded_site = site if site is not None else store.attrs.get("site")
        provenance = {
            "producer": PRODUCER,
            "trainer": "musinterp.sae.trainer.train_sae",
            "arch": settings.arch,
            "arch_config": asdict(sae.cfg),
            "acts_path": str(acts_path),
            "acts_producer": store.attrs.get("producer"),
            "family": store.attrs.get("family"),
            "input_normalisation": normalisation,
            "settings": resolved,
        }
        saelens_arch, tensors, extra_cfg = sae.saelens_export()
        folded = fold_input_normalisation(
            tensors, shift, divisor, apply_b_dec_to_input=arch_cls.apply_b_dec_to_input
        )
        cfg = saelens_cfg(
            saelens_arch, d_in, d_sae,
            subject=str(store.attrs.get("subject", "")),
            site="" if recorded_site is None else str(recorded_site),  # SAELens's hook_name is a string
            provenance=provenance, device=settings.device, **extra_cfg,
        )  # fmt: skip
        result = {
            **final.to_dict(),
            "n_train_tokens": n_train,
            "n_heldout_tokens": n_heldout,
            "tokens_seen": tokens_seen,
            "steps": step,
            "final_train_loss": last.get("loss"),
            # means over the steps since the previous held-out evaluation
            "final_train_loss_parts": final_parts,
            "resumed_from_step": resumed_from,
            "seconds": round(seconds, 3),
            "tokens_per_second": round(tokens_seen / seconds, 1) if seconds > 0 else None,
            "arch": settings.arch,
            "d_in": d_in,
            "d_sae": d_sae,
            "subject": cfg["metadata"]["subject"],
            "site": None if recorded_site is None else str(recorded_site),
            "constant_dims": stats.n_constant,
            "split": store.split_info,
            "settings": resolved,
            "arch_config": provenance["arch_config"],
            "producer": PRODUCER,
        }
        result.pop("n_tokens")  # the same as n_heldout_tokens
        with atomic_dir(out_dir) as tmp_dir:
            save_sae(tmp_dir, folded, cfg)
            shutil.copyfile(ckpt_dir / LOG_FILE, tmp_dir / LOG_FILE)
            write_json(tmp_dir / "metrics.json", result)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(ckpt_dir)
    log.info(
        "wrote %s: held-out FVU %.4f, L0 %.2f, dead %.3f, dense %.3f (%d steps, %.1f s, %.0f tok/s)",
        out_dir, final.fvu, final.l0, final.dead_fraction, final.dense_fraction, step, seconds,
        tokens_seen / max(seconds, 1e-9),
    )  # fmt: skip
    return result


def read_metrics(sae_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``metrics.json`` of an SAE directory."""
    return json.loads((Path(sae_dir) / "metrics.json").read_text())


# Also the names other code imports from here (re-exported from the modules they moved to).
__all__ = [
    "ARCHITECTURES", "CHECKPOINT_FILE", "HELDOUT", "LOG_FILE", "TRAIN", "ActivationStore",
    "InputStatistics", "TrainSettings", "checkpoint_dir_for", "count_steps", "evaluate",
    "input_normalisation", "input_statistics", "iter_rows", "iter_shuffled_rows",
    "keep_freed_memory_mapped", "learning_rate", "make_optimizer", "read_metrics", "save_checkpoint",
    "shuffle_groups", "train_sae", "train_sae_with",
]  # fmt: skip
