# Feature reports: per latent and per raw neuron, with top examples in musical context.


rule build_features:
    input:
        acts="results/activations/{subject}/{site}.h5",
        cfg="results/sae/{subject}/{site}/{sae}/cfg.json",
        weights="results/sae/{subject}/{site}/{sae}/sae_weights.safetensors",
    output:
        table="results/features/{subject}/{site}/{sae}/features.parquet",
        dashboard=report(
            "results/features/{subject}/{site}/{sae}/dashboard/index.html",
            caption="../report/dashboard.rst",
            category="Features",
            labels={"subject": "{subject}", "site": "{site}", "sae": "{sae}"},
        ),
    log:
        "results/logs/features/{subject}/{site}/{sae}.log",
    benchmark:
        "results/benchmarks/features/{subject}/{site}/{sae}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        sae_dir=lambda w: f"results/sae/{w.subject}/{w.site}/{w.sae}",
        top_k=config["features"]["top_k"],
        context=config["features"]["context"],
    script:
        "../scripts/build_features.py"
