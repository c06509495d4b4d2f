# musinterp: from music models to activations, sparse autoencoders, feature reports and notebooks.
# The rules live in workflow/rules; this file only includes them and names the targets.


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/corpus.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/activations.smk"
include: "workflow/rules/sae.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/analyses.smk"


rule all:
    default_target: True
    input:
        all_targets(),
