"""The ``musinterp`` command: one subcommand per workflow stage, usable without Snakemake."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _corpus_build(args) -> None:
    from .corpus.build import build_corpus

    if args.source == "music21":
        spec = {"source": "music21", "collections": args.collections, "max_tunes_per_collection": args.max_tunes}
    elif args.source == "download":
        spec = {"source": "download", "url": args.url, "format": "folkrnn"}
        spec.update({"git_blob": args.git_blob} if args.git_blob else {"sha256": args.sha256})
    else:
        spec = {"source": "local", "path": args.path, "format": "folkrnn"}
    counts = build_corpus(args.name, spec, args.out, seed=args.seed, heldout_fraction=args.heldout_fraction,
                          download_dir=args.download_dir)
    print(json.dumps(counts, indent=2))


def _model_train(args) -> None:
    from .models import train_model

    model_params = {"hidden_size": args.hidden_size, "n_layers": args.n_layers, "dropout": args.dropout}
    train_params = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                    "optimizer": args.optimizer, "patience": args.patience, "seed": args.seed,
                    "max_train_tunes": args.max_train_tunes}
    meta = train_model(args.family, args.corpus, args.out, model_params, train_params,
                       n_samples=args.samples, temperature=args.temperature)
    print(f"best held-out loss {meta['best_valid_loss']:.4f} nats/token at epoch {meta['best_epoch']}")


def _import_folkrnn(args) -> None:
    from .models.folkrnn_import import import_folkrnn

    meta = import_folkrnn(args.pickle, args.out, dropout=args.dropout)
    cfg = meta["config"]
    print(f"imported {args.pickle}: {cfg['n_layers']} x {cfg['hidden_size']} LSTM, vocabulary of "
          f"{cfg['vocab_size']} tokens -> {args.out}")


def _activations_record(args) -> None:
    from .activations import record_activations

    caps = {"train": args.max_train_tunes, "heldout": args.max_heldout_tunes}
    stats = record_activations(args.model, args.corpus, args.out, subject=args.subject, sites=args.sites,
                               max_tunes={k: v for k, v in caps.items() if v is not None}, seed=args.seed)
    print(json.dumps(stats, indent=2))


def _sae_train(args) -> None:
    from .sae.trainer import train_sae

    metrics = train_sae(args.acts, args.out, arch=args.arch, width=args.width, k=args.k, l1_coeff=args.l1,
                        l0_coeff=args.l0, lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
                        seed=args.seed, max_tokens=args.tokens, resample_every=args.resample_every)
    if args.model:
        from .splice import add_loss_recovered

        metrics = add_loss_recovered(args.out, args.model, args.acts)
    print(json.dumps(metrics, indent=2))


def _features_build(args) -> None:
    from .features import build_features

    table = build_features(args.acts, args.sae, args.out, dashboard_dir=args.dashboard)
    print(f"wrote {args.out}: {len(table)} rows")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="musinterp", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    stages = p.add_subparsers(dest="stage", required=True)

    corpus = stages.add_parser("corpus", help="build token corpora").add_subparsers(dest="action", required=True)
    c = corpus.add_parser("build", help="tokens.h5 + vocab.json + manifest.tsv from a source")
    c.add_argument("--name", required=True)
    c.add_argument("--source", choices=["music21", "download", "local"], required=True)
    c.add_argument("--collections", nargs="+", default=["oneills1850", "ryansMammoth", "airdsAirs",
                                                          "essenFolksong", "miscFolk"])
    c.add_argument("--max-tunes", type=int, default=None, help="per music21 collection")
    c.add_argument("--url")
    c.add_argument("--git-blob")
    c.add_argument("--sha256")
    c.add_argument("--path")
    c.add_argument("--download-dir", default="resources/downloads")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--heldout-fraction", type=float, default=0.1)
    c.add_argument("--out", required=True)
    c.set_defaults(func=_corpus_build)

    model = stages.add_parser("model", help="train models").add_subparsers(dest="action", required=True)
    m = model.add_parser("train", help="train a reference model on a corpus")
    m.add_argument("--family", default="folkrnn", choices=["folkrnn"])
    m.add_argument("--corpus", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--hidden-size", type=int, default=128)
    m.add_argument("--n-layers", type=int, default=3)
    m.add_argument("--dropout", type=float, default=0.5)
    m.add_argument("--epochs", type=int, default=10)
    m.add_argument("--batch-size", type=int, default=64)
    m.add_argument("--lr", type=float, default=3e-3)
    m.add_argument("--optimizer", default="adam", choices=["adam", "rmsprop"])
    m.add_argument("--patience", type=int, default=3)
    m.add_argument("--max-train-tunes", type=int, default=None)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--samples", type=int, default=5)
    m.add_argument("--temperature", type=float, default=1.0)
    m.set_defaults(func=_model_train)

    imports = stages.add_parser("import", help="import published checkpoints").add_subparsers(
        dest="family", required=True)
    i = imports.add_parser("folkrnn", help="a folk-rnn pickle (v2, Swedish), read with a restricted unpickler")
    i.add_argument("pickle")
    i.add_argument("--out", required=True)
    i.add_argument("--dropout", type=float, default=0.5)
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
    a.add_argument("--seed", type=int, default=0)
    a.set_defaults(func=_activations_record)

    sae = stages.add_parser("sae", help="sparse autoencoders").add_subparsers(dest="action", required=True)
    s = sae.add_parser("train", help="train an SAE on an activation file")
    s.add_argument("acts")
    s.add_argument("--arch", default="relu_l1", choices=["relu_l1", "topk", "batchtopk", "jumprelu"])
    s.add_argument("--width", type=int, default=None, help="number of latents (default 4 x d)")
    s.add_argument("--k", type=int, default=None, help="active latents per token (topk, batchtopk)")
    s.add_argument("--l1", type=float, default=None, help="L1 coefficient (relu_l1; default 1e-3)")
    s.add_argument("--l0", type=float, default=None, help="L0 coefficient (jumprelu)")
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--batch-size", type=int, default=2048)
    s.add_argument("--epochs", type=int, default=2)
    s.add_argument("--resample-every", type=int, default=None, help="steps between dead-latent resampling")
    s.add_argument("--tokens", type=int, default=None, help="train on at most this many tokens")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--model", default=None, help="model directory: also measure loss recovered by splicing")
    s.add_argument("--out", required=True)
    s.set_defaults(func=_sae_train)

    feats = stages.add_parser("features", help="feature tables").add_subparsers(dest="action", required=True)
    f = feats.add_parser("build", help="features.parquet (+ dashboard) for an SAE")
    f.add_argument("acts")
    f.add_argument("sae")
    f.add_argument("--out", required=True)
    f.add_argument("--dashboard", default=None)
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
