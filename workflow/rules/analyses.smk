# Notebooks: papermill executes a jupytext source with all inputs as parameters; nbconvert
# renders the executed notebook to HTML without code cells.


rule overview_notebook:
    input:
        notebook=workflow.source_path("../notebooks/overview.py"),
        manifest=lambda w: f"{corpus_dir(w.subject)}/manifest.tsv",
        tokens=lambda w: f"{corpus_dir(w.subject)}/tokens.h5",
        model_meta="results/models/{subject}/model.json",
        samples="results/models/{subject}/samples.txt",
        sae_metrics=lambda w: subject_sae_metrics(w.subject),
        features=lambda w: subject_features(w.subject),
    output:
        "results/notebooks/{subject}_overview.ipynb",
    log:
        "results/logs/notebooks/{subject}_overview.log",
    benchmark:
        "results/benchmarks/notebooks/{subject}_overview.tsv"
    conda:
        ENV
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../scripts/run_notebook.py"


rule render_notebook:
    input:
        "results/notebooks/{name}.ipynb",
    output:
        report(
            "results/reports/{name}.html",
            caption="../report/notebook.rst",
            category="Notebooks",
            labels={"notebook": "{name}"},
        ),
    log:
        "results/logs/reports/{name}.log",
    conda:
        ENV
    script:
        "../scripts/render_notebook.py"


rule s2_folkrnn:
    input:
        model="results/models/{subject}/model.pt",
        meta="results/models/{subject}/model.json",
        tokens=lambda w: f"{corpus_dir(w.subject)}/tokens.h5",
    output:
        units=report(
            "results/analyses/{subject}/s2/units.tsv",
            caption="../report/s2_tables.rst",
            category="S2 folk-rnn",
            labels={"subject": "{subject}", "table": "units"},
        ),
        interventions=report(
            "results/analyses/{subject}/s2/interventions.tsv",
            caption="../report/s2_tables.rst",
            category="S2 folk-rnn",
            labels={"subject": "{subject}", "table": "interventions"},
        ),
        copying="results/analyses/{subject}/s2/copying.tsv",
        summary="results/analyses/{subject}/s2/summary.tsv",
        intervention_summary="results/analyses/{subject}/s2/intervention_summary.tsv",
        bars="results/analyses/{subject}/s2/bars.tsv",
        arrays="results/analyses/{subject}/s2/arrays.npz",
        meta="results/analyses/{subject}/s2/s2.json",
    log:
        "results/logs/analyses/{subject}_s2_folkrnn.log",
    benchmark:
        "results/benchmarks/analyses/{subject}_s2_folkrnn.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        s2=lambda w: s2_parameters(w.subject),
    script:
        "../scripts/s2_folkrnn.py"


# The notebook only reads the files of s2_folkrnn and plots: re-rendering it never re-runs the study.
rule s2_folkrnn_notebook:
    input:
        notebook=workflow.source_path("../notebooks/s2_folkrnn.py"),
        units="results/analyses/{subject}/s2/units.tsv",
        interventions="results/analyses/{subject}/s2/interventions.tsv",
        copying="results/analyses/{subject}/s2/copying.tsv",
        summary="results/analyses/{subject}/s2/summary.tsv",
        intervention_summary="results/analyses/{subject}/s2/intervention_summary.tsv",
        bars="results/analyses/{subject}/s2/bars.tsv",
        arrays="results/analyses/{subject}/s2/arrays.npz",
        meta="results/analyses/{subject}/s2/s2.json",
    output:
        notebook="results/notebooks/{subject}_s2_folkrnn.ipynb",
    log:
        "results/logs/notebooks/{subject}_s2_folkrnn.log",
    benchmark:
        "results/benchmarks/notebooks/{subject}_s2_folkrnn.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        "../scripts/s2_folkrnn_notebook.py"


# S4: induction heads in chordlm models. One rule per model writes its tables; one notebook
# compares every model of the study (layers, MLPs, seeds).
S4_TABLES = [
    "copies",
    "heads",
    "composition",
    "ablation",
    "dynamics",
    "loops",
    "sections",
    "transposition",
]


rule s4_chordlm:
    input:
        model="results/models/{subject}/model.pt",
        meta="results/models/{subject}/model.json",
        tokens=lambda w: f"{corpus_dir(w.subject)}/tokens.h5",
    output:
        **{name: f"results/analyses/{{subject}}/s4/{name}.tsv" for name in S4_TABLES},
        curves="results/analyses/{subject}/s4/curves.npz",
        meta="results/analyses/{subject}/s4/model.json",
    log:
        "results/logs/analyses/{subject}_s4_chordlm.log",
    benchmark:
        "results/benchmarks/analyses/{subject}_s4_chordlm.tsv"
    wildcard_constraints:
        subject=one_of(s4_subjects()),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        s4=lambda w: subject_config(w.subject)["s4"],
    script:
        "../scripts/s4_chordlm.py"


# S4 item 10: how well each neuron and each SAE latent of a site predicts a chord attribute.
rule s4_units:
    input:
        acts="results/activations/{subject}/{site}.h5",
        cfg="results/sae/{subject}/{site}/{sae}/cfg.json",
    output:
        table="results/analyses/{subject}/s4/units/{site}/{sae}.tsv",
        summary="results/analyses/{subject}/s4/units/{site}/{sae}_summary.tsv",
    log:
        "results/logs/analyses/{subject}_s4_units_{site}_{sae}.log",
    benchmark:
        "results/benchmarks/analyses/{subject}_s4_units_{site}_{sae}.tsv"
    wildcard_constraints:
        subject=one_of(s4_subjects()),
    conda:
        ENV
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../scripts/s4_units.py"


# S4 item 11: SAE latents (and neurons) of two seeds of one model matched by correlation.
rule s4_universality:
    input:
        acts_a="results/activations/{a}/{site}.h5",
        cfg_a="results/sae/{a}/{site}/{sae}/cfg.json",
        acts_b="results/activations/{b}/{site}.h5",
        cfg_b="results/sae/{b}/{site}/{sae}/cfg.json",
    output:
        table="results/analyses/s4_universality/{a}__{b}/{site}/{sae}.tsv",
        summary="results/analyses/s4_universality/{a}__{b}/{site}/{sae}.json",
    log:
        "results/logs/analyses/s4_universality_{a}__{b}_{site}_{sae}.log",
    wildcard_constraints:
        a=one_of(s4_subjects()),
        b=one_of(s4_subjects()),
    conda:
        ENV
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../scripts/s4_universality.py"


# The notebook only reads the tables of s4_chordlm, for every model of the study.
rule s4_notebook:
    input:
        notebook=workflow.source_path("../notebooks/s4_induction.py"),
        units=[
            f"results/analyses/{s}/s4/units/{site}/{sae}_summary.tsv"
            for s, site, sae in s4_unit_runs()
        ],
        universality=[
            f"results/analyses/s4_universality/{a}__{b}/{site}/{sae}.json"
            for a, b, site, sae in s4_seed_pairs()
        ],
        tables=expand(
            "results/analyses/{subject}/s4/{table}.tsv",
            subject=s4_subjects(),
            table=S4_TABLES,
        ),
        curves=expand("results/analyses/{subject}/s4/curves.npz", subject=s4_subjects()),
        meta=expand("results/analyses/{subject}/s4/model.json", subject=s4_subjects()),
    output:
        notebook="results/notebooks/s4_induction.ipynb",
    log:
        "results/logs/notebooks/s4_induction.log",
    benchmark:
        "results/benchmarks/notebooks/s4_induction.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        "../scripts/s4_notebook.py"
