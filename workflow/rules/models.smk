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
    wildcard_constraints:
        subject=one_of(subjects_by_source("train")),
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        family=lambda w: subject_config(w.subject)["family"],
        model=lambda w: subject_config(w.subject)["model"],
        train=lambda w: {"seed": config["seed"], **subject_config(w.subject)["train"]},
        sampling=lambda w: subject_config(w.subject)["sampling"],
    script:
        "../scripts/train_model.py"


rule download_model_source:
    output:
        f"{DOWNLOAD_DIR}/models/{{subject}}/{{filename}}",
    log:
        "results/logs/downloads/{subject}/{filename}.log",
    conda:
        ENV
    resources:
        runtime=30,
    params:
        url=lambda w: subject_config(w.subject)["url"],
        checksum=lambda w: model_checksum(w.subject),
    script:
        "../scripts/download.py"


rule import_model:
    input:
        source=lambda w: model_source_path(w.subject),
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
    wildcard_constraints:
        subject=one_of(subjects_by_source("download", "local")),
    conda:
        ENV
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        family=lambda w: subject_config(w.subject)["family"],
        url=lambda w: subject_config(w.subject).get("url"),
        checksum=lambda w: model_checksum(w.subject),
        sampling=lambda w: subject_config(w.subject)["sampling"],
        seed=config["seed"],
    script:
        "../scripts/import_model.py"
