# Models: reference models trained here on a corpus (results/models/{subject}/).


rule train_model:
    input:
        tokens=lambda w: f"{corpus_dir(w.subject)}/tokens.h5",
        vocab=lambda w: f"{corpus_dir(w.subject)}/vocab.json",
    output:
        model="results/models/{subject}/model.pt",
        meta="results/models/{subject}/model.json",
        samples=report(
            "results/models/{subject}/samples.txt",
            caption="../report/samples.rst",
            category="Models",
            labels={"subject": "{subject}", "file": "samples"},
        ),
    log:
        "results/logs/models/{subject}.log",
    benchmark:
        "results/benchmarks/models/{subject}.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        family=lambda w: subject_config(w.subject)["family"],
        model=lambda w: subject_config(w.subject).get("model", {}),
        train=lambda w: {
            "seed": config.get("seed", 0),
            **subject_config(w.subject).get("train", {}),
        },
        sampling=lambda w: subject_config(w.subject).get("sampling", {}),
    script:
        "../scripts/train_model.py"
