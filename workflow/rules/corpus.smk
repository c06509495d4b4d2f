# Corpora: embedded music21 collections, downloads (URL + checksum) or local folk-rnn token files
# become resources/corpora/{corpus}/tokens.h5 + vocab.json + manifest.tsv.


rule build_corpus:
    output:
        tokens="resources/corpora/{corpus}/tokens.h5",
        vocab="resources/corpora/{corpus}/vocab.json",
        manifest=report(
            "resources/corpora/{corpus}/manifest.tsv",
            caption="../report/manifest.rst",
            category="Corpora",
            labels={"corpus": "{corpus}"},
        ),
    log:
        "results/logs/corpus/{corpus}.log",
    benchmark:
        "results/benchmarks/corpus/{corpus}.tsv"
    conda:
        ENV
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        spec=lambda w: config["corpora"][w.corpus],
        seed=config["seed"],
        heldout_fraction=config["heldout_fraction"],
        download_dir=config["download_dir"],
    script:
        "../scripts/build_corpus.py"
