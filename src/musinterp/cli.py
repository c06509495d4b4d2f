"""The ``musinterp`` command: one subcommand per workflow stage, usable without Snakemake."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .registry import FAMILIES


def _corpus_build(args) -> None:
    from .corpus.build import build_corpus

    if args.source == "music21":
        spec = {"source": "music21", "collections": args.collections, "max_tunes_per_collection": args.max_tunes}
    elif args.source == "download":
        spec = {"source": "download", "url": args.url, "format": "folkrnn"}
        spec.update({"git_blob": args.git_blob} if args.git_blob else {"sha256": args.sha256})
    elif args.source == "popgen":
        spec = {"source": "popgen", "popgen": _given(args, {k: k for k in (
            "n_songs", "periods", "repeats", "substitution_rate", "keys", "tokens")})}
    else:
        spec = {"source": "local", "path": args.path, "format": "folkrnn"}
    counts = build_corpus(args.name, spec, args.out, download_dir=args.download_dir,
                          **_given(args, {"seed": "seed", "heldout_fraction": "heldout_fraction"}))
    print(json.dumps(counts, indent=2))


def _given(args, names: dict[str, str]) -> dict:
    """Only the options the user gave (argparse default None), so the library's defaults apply."""
    return {key: getattr(args, attr) for key, attr in names.items() if getattr(args, attr) is not None}


def _model_train(args) -> None:
    from .models import train_model

    model_params = _given(args, {"hidden_size": "hidden_size", "n_layers": "n_layers", "dropout": "dropout"})
    train_params = _given(args, {"epochs": "epochs", "batch_size": "batch_size", "lr": "lr",
                                 "optimizer": "optimizer", "patience": "patience", "seed": "seed",
                                 "max_train_tunes": "max_train_tunes", "device": "device"})
    meta = train_model(args.family, args.corpus, args.out, model_params, train_params,
                       **_given(args, {"n_samples": "samples", "temperature": "temperature"}))
    print(f"best held-out loss {meta['best_valid_loss']:.4f} nats/token at epoch {meta['best_epoch']}")


def _import_folkrnn(args) -> None:
    from .registry import get_family

    meta = get_family("folkrnn").importer()(args.pickle, args.out, **_given(args, {"dropout": "dropout"}))
    cfg = meta["config"]
    print(f"imported {args.pickle}: {cfg['n_layers']} x {cfg['hidden_size']} LSTM, vocabulary of "
          f"{cfg['vocab_size']} tokens -> {args.out}")


def _activations_record(args) -> None:
    from .activations import record_activations

    caps = {"train": args.max_train_tunes, "heldout": args.max_heldout_tunes}
    stats = record_activations(args.model, args.corpus, args.out, subject=args.subject, sites=args.sites,
                               max_tunes={k: v for k, v in caps.items() if v is not None},
                               **_given(args, {"seed": "seed", "batch_size": "batch_size", "compression": "compression"}))
    print(json.dumps(stats, indent=2))


def _sae_train(args) -> None:
    from .sae.settings import setting_names
    from .sae.trainer import train_sae

    # The setting flags default to argparse.SUPPRESS: only those given reach train_sae, and the
    # others take the library's defaults (TrainSettings, the architectures' config dataclasses).
    settings = {name: getattr(args, name) for name in setting_names() if hasattr(args, name)}
    metrics = train_sae(args.acts, args.out, site=args.site, **settings)
    if args.model:
        from .splice import add_loss_recovered

        if metrics["site"] is None:
            raise ValueError(f"{args.acts} has no site attribute: give --site to splice the SAE into {args.model}")
        metrics = add_loss_recovered(args.out, args.model, args.acts, site=metrics["site"])
    print(json.dumps(metrics, indent=2))


def _int_or_none(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def _features_build(args) -> None:
    from .features import build_features

    table = build_features(args.acts, args.sae, args.out, dashboard_dir=args.dashboard,
                           **_given(args, {"top_k": "top_k", "context": "context"}))
    print(f"wrote {args.out}: {len(table)} rows")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="musinterp", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    stages = p.add_subparsers(dest="stage", required=True)

    corpus = stages.add_parser("corpus", help="build token corpora").add_subparsers(dest="action", required=True)
    c = corpus.add_parser("build", help="tokens.h5 + vocab.json + manifest.tsv from a source")
    c.add_argument("--name", required=True)
    c.add_argument("--source", choices=["music21", "download", "local", "popgen"], required=True)
    c.add_argument("--collections", nargs="+", default=["oneills1850", "ryansMammoth", "airdsAirs",
                                                          "essenFolksong", "miscFolk"])
    c.add_argument("--max-tunes", type=int, default=None, help="per music21 collection")
    c.add_argument("--url")
    c.add_argument("--git-blob")
    c.add_argument("--sha256")
    c.add_argument("--path")
    c.add_argument("--download-dir", help="default resources/downloads")
    c.add_argument("--n-songs", type=int, help="popgen: number of songs")
    c.add_argument("--periods", type=int, nargs="+", help="popgen: loop periods (4 8)")
    c.add_argument("--repeats", type=int, nargs=2, metavar=("MIN", "MAX"), help="popgen: passes per section")
    c.add_argument("--substitution-rate", type=float, help="popgen")
    c.add_argument("--keys", choices=["c", "random"], help="popgen: tokens in C or in each song's key")
    c.add_argument("--tokens", choices=["chords", "chords-pcset"], help="popgen: token format")
    c.add_argument("--seed", type=int)
    c.add_argument("--heldout-fraction", type=float)
    c.add_argument("--out", required=True)
    c.set_defaults(func=_corpus_build)

    model = stages.add_parser("model", help="train models").add_subparsers(dest="action", required=True)
    m = model.add_parser("train", help="train a reference model on a corpus")
    m.add_argument("--family", default="folkrnn", choices=sorted(FAMILIES))
    m.add_argument("--corpus", required=True)
    m.add_argument("--out", required=True)
    # No defaults here: what is left out takes the library's (the family config, TrainConfig).
    m.add_argument("--hidden-size", type=int)
    m.add_argument("--n-layers", type=int)
    m.add_argument("--dropout", type=float)
    m.add_argument("--epochs", type=int)
    m.add_argument("--batch-size", type=int)
    m.add_argument("--lr", type=float)
    m.add_argument("--optimizer", choices=["adam", "rmsprop"])
    m.add_argument("--patience", type=int)
    m.add_argument("--max-train-tunes", type=int)
    m.add_argument("--device")
    m.add_argument("--seed", type=int)
    m.add_argument("--samples", type=int)
    m.add_argument("--temperature", type=float)
    m.set_defaults(func=_model_train)

    imports = stages.add_parser("import", help="import published checkpoints").add_subparsers(
        dest="family", required=True)
    i = imports.add_parser("folkrnn", help="a folk-rnn pickle (v2, Swedish), read with a restricted unpickler")
    i.add_argument("pickle")
    i.add_argument("--out", required=True)
    i.add_argument("--dropout", type=float, help="dropout of the imported model (default folk-rnn's 0.5)")
    i.set_defaults(func=_import_folkrnn)

    acts = stages.add_parser("activations", help="record activations").add_subparsers(dest="action", required=True)
    a = acts.add_parser("record", help="write {site}.h5 per site")
    a.add_argument("--model", required=True)
    a.add_argument("--corpus", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--subject", required=True)
    a.add_argument("--sites", nargs="*", default=None)
    a.add_argument("--max-train-tunes", type=int, default=None)
    a.add_argument("--max-heldout-tunes", type=int, default=None)
    a.add_argument("--seed", type=int)
    a.add_argument("--batch-size", type=int, help="pieces run through the model at once")
    a.add_argument("--compression", choices=["none", "gzip", "lzf"], help="of /acts (default none)")
    a.set_defaults(func=_activations_record)

    sae = stages.add_parser("sae", help="sparse autoencoders").add_subparsers(dest="action", required=True)
    # Setting flags have no defaults (argparse.SUPPRESS): what is left out takes the library's
    # default (musinterp.sae.settings.TrainSettings, the architectures' config dataclasses); each
    # flag's dest is the setting's name. "none" gives None where a setting allows it.
    s = sae.add_parser("train", help="train an SAE on an activation file", argument_default=argparse.SUPPRESS)
    s.add_argument("acts", help="HDF5 file with /acts [n, d] and /tokens/piece, position, token (split optional)")
    s.add_argument("--out", required=True, help="SAE directory to write")
    s.add_argument("--site", default=None, help="site recorded in metrics.json (default: the file's site attribute)")
    s.add_argument("--model", default=None, help="model directory: also measure loss recovered by splicing")
    s.add_argument("--arch", help="architecture: relu_l1, topk, batchtopk or jumprelu")
    s.add_argument("--width", type=_int_or_none, help="number of latents (none: 4 x d)")
    s.add_argument("--lr", type=float, help="peak learning rate")
    s.add_argument("--batch-size", type=int)
    s.add_argument("--epochs", type=int)
    s.add_argument("--seed", type=int, help="initialisation, shuffle, resampling and the drawn split")
    s.add_argument("--max-tokens", "--tokens", dest="max_tokens", type=_int_or_none,
                   help="train on at most this many tokens")
    s.add_argument("--warmup-fraction", type=float, help="share of the steps warming the learning rate up")
    s.add_argument("--decay-fraction", type=float, help="share of the steps decaying it to 0")
    s.add_argument("--dead-tokens", type=_int_or_none, help="tokens without firing after which a latent is dead")
    s.add_argument("--resample-every", type=_int_or_none, help="steps between dead-latent resampling")
    s.add_argument("--eval-every", type=int, help="steps between held-out evaluations")
    s.add_argument("--eval-tokens", type=int, help="held-out rows of the periodic evaluations")
    s.add_argument("--heldout-fraction", type=float, help="pieces held out when the file has no split column")
    s.add_argument("--buffer-tokens", type=_int_or_none, help="rows of the shuffle buffer")
    s.add_argument("--checkpoint-every", type=_int_or_none, help="steps between checkpoints (none: no checkpoints)")
    s.add_argument("--device", help="torch device (cpu, cuda, ...)")
    # architecture settings; one the chosen architecture does not read is an error
    s.add_argument("--k", type=int, help="active latents per token (topk, batchtopk)")
    s.add_argument("--aux-coeff", type=float, help="weight of the AuxK loss (topk, batchtopk)")
    s.add_argument("--k-aux", type=int, help="dead latents used by AuxK (topk, batchtopk)")
    s.add_argument("--threshold-rate", type=float, help="moving-average rate of the threshold (batchtopk)")
    s.add_argument("--l1-coeff", "--l1", dest="l1_coeff", type=float, help="L1 coefficient (relu_l1)")
    s.add_argument("--encoder-bias-init", type=float, help="initial encoder bias (relu_l1)")
    s.add_argument("--l0-coeff", "--l0", dest="l0_coeff", type=float, help="L0 coefficient (jumprelu)")
    s.add_argument("--bandwidth", type=float, help="straight-through kernel width (jumprelu)")
    s.add_argument("--threshold-init", type=float, help="initial per-latent threshold (jumprelu)")
    s.set_defaults(func=_sae_train)

    feats = stages.add_parser("features", help="feature tables").add_subparsers(dest="action", required=True)
    f = feats.add_parser("build", help="features.parquet (+ dashboard) for an SAE")
    f.add_argument("acts")
    f.add_argument("sae")
    f.add_argument("--out", required=True)
    f.add_argument("--dashboard", default=None)
    f.add_argument("--top-k", type=int)
    f.add_argument("--context", type=int)
    f.set_defaults(func=_features_build)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, OSError) as err:
        logging.getLogger("musinterp").error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
