# Activations: one pass of a subject's model writes one HDF5 file per recorded site, token by
# token (or piece by piece) with the musical columns of the corpus's token format. The output
# list differs per subject, so there is one rule per subject.

for _subject in config["subjects"]:

    rule:
        name:
            f"record_activations_{_subject}"
        input:
            model=f"results/models/{_subject}/model.pt",
            meta=f"results/models/{_subject}/model.json",
            tokens=f"{corpus_dir(_subject)}/tokens.h5",
        output:
            expand(
                f"results/activations/{_subject}/{{site}}.h5",
                site=recorded_sites(_subject),
            ),
        log:
            f"results/logs/activations/{_subject}.log",
        benchmark:
            f"results/benchmarks/activations/{_subject}.tsv"
        conda:
            ENV
        threads: 1
        resources:
            mem_mb=4000,
            runtime=60,
        params:
            subject=_subject,
            sites=recorded_sites(_subject),
            max_tunes=subject_config(_subject)["activations"].get("max_tunes", {}),
            batch_size=subject_config(_subject)["activations"]["batch_size"],
            compression=subject_config(_subject)["activations"]["compression"],
            seed=config["seed"],
        script:
            "../scripts/record_activations.py"
