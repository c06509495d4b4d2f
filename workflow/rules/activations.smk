# Activations: one HDF5 file per site, token by token with musical columns.


rule record_activations:
    input:
        model="results/models/{subject}/model.pt",
        meta="results/models/{subject}/model.json",
        tokens=lambda w: f"{corpus_dir(w.subject)}/tokens.h5",
    output:
        "results/activations/{subject}/{site}.h5",
    log:
        "results/logs/activations/{subject}/{site}.log",
    benchmark:
        "results/benchmarks/activations/{subject}/{site}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        corpus=lambda w: corpus_dir(w.subject),
        max_tunes=lambda w: subject_config(w.subject)
        .get("activations", {})
        .get("max_tunes", {}),
        seed=config.get("seed", 0),
    script:
        "../scripts/record_activations.py"
