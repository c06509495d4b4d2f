# Sparse autoencoders: SAELens-compatible directories with held-out metrics.


rule train_sae:
    input:
        acts="results/activations/{subject}/{site}.h5",
        model="results/models/{subject}/model.pt",
        tokens=lambda w: f"{corpus_dir(w.subject)}/tokens.h5",
    output:
        cfg="results/sae/{subject}/{site}/{sae}/cfg.json",
        weights="results/sae/{subject}/{site}/{sae}/sae_weights.safetensors",
        metrics=report(
            "results/sae/{subject}/{site}/{sae}/metrics.json",
            caption="../report/sae_metrics.rst",
            category="Sparse autoencoders",
            labels={"subject": "{subject}", "site": "{site}", "sae": "{sae}"},
        ),
        log_tsv="results/sae/{subject}/{site}/{sae}/training_log.tsv",
    log:
        "results/logs/sae/{subject}/{site}/{sae}.log",
    benchmark:
        "results/benchmarks/sae/{subject}/{site}/{sae}.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        spec=lambda w: sae_spec(w.subject, w.sae),
        site=lambda w: w.site,
        seed=config["seed"],
    script:
        "../scripts/train_sae.py"
