# Helpers shared by the rule files, and config validation before any job runs.
import os
import re
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")


# Validation fills in every default (the schemas hold the only defaults of the workflow).
validate(config, schema="../schemas/config.schema.yaml")


# Scripts import the musinterp library from this checkout, also inside per-rule conda
# environments (envs/musinterp.yaml), where the package itself is not installed.
_library = str(Path(workflow.basedir) / "src")
os.environ.update(
    PYTHONPATH=os.pathsep.join(filter(None, [_library, os.environ.get("PYTHONPATH")]))
)
ENV = "../../envs/musinterp.yaml"
DOWNLOAD_DIR = config["download_dir"]
sys.path.insert(0, _library)
import musinterp.config as library_config  # light: no torch at parse time
from musinterp.registry import FAMILIES, get_family

with open(workflow.source_path("../schemas/config.schema.yaml")) as _f:
    COMMON_SUBJECT_KEYS = set(
        yaml.safe_load(_f)["properties"]["subjects"]["additionalProperties"][
            "properties"
        ]
    )

# Cross-field checks the schema cannot express, and each subject's family keys against its
# family's schema; each error names the offending key.
for _name, _subject in config["subjects"].items():
    if _subject["corpus"] not in config["corpora"]:
        raise ValueError(
            f"config: subjects.{_name}.corpus is {_subject['corpus']!r}, "
            f"which is not a key of corpora ({sorted(config['corpora'])})"
        )
    if _subject["family"] not in FAMILIES:
        raise ValueError(
            f"config: subjects.{_name}.family is {_subject['family']!r}; "
            f"registered families: {sorted(FAMILIES)}"
        )
    _own = {k: v for k, v in _subject.items() if k not in COMMON_SUBJECT_KEYS}
    try:
        validate(_own, schema=f"../schemas/families/{_subject['family']}.schema.yaml")
    except WorkflowError as err:
        raise WorkflowError(
            f"config: subjects.{_name} (family {_subject['family']}): {err}"
        ) from None
    _subject.update(_own)


wildcard_constraints:
    corpus="[A-Za-z0-9_.-]+",
    subject="[A-Za-z0-9_.-]+",
    site="[A-Za-z0-9_.-]+",
    sae="[A-Za-z0-9_.-]+",


def subject_config(subject):
    return config["subjects"][subject]


def subjects_by_source(*sources):
    return [s for s, cfg in config["subjects"].items() if cfg["source"] in sources]


def one_of(names):
    """A wildcard regex matching exactly these names (and nothing when there are none)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


def model_checksum(subject):
    """(kind, expected) of a subject's downloaded or local checkpoint, or None when not given."""
    cfg = subject_config(subject)
    for kind in ("git_blob", "sha256"):
        if kind in cfg:
            return (kind, cfg[kind])
    return None


def model_source_path(subject):
    """Where a subject's checkpoint file is read from: the download folder, or a local path."""
    cfg = subject_config(subject)
    if cfg["source"] == "local":
        return cfg["path"]
    filename = os.path.basename(cfg["url"])
    return f"{DOWNLOAD_DIR}/models/{subject}/{filename}"


def corpus_dir(subject):
    return f"resources/corpora/{subject_config(subject)['corpus']}"


def family_sites(subject):
    """All activation sites a subject's model family records."""
    cfg = subject_config(subject)
    return library_config.family_sites(cfg["family"], cfg.get("model"))


def sae_specs(subject):
    """The subject's SAE specs with sweeps (list-valued width, k, l1_coeff, ...) expanded."""
    try:
        return library_config.expand_sae_specs(subject_config(subject).get("saes", []))
    except ValueError as err:
        raise ValueError(f"config: subjects.{subject}.saes: {err}") from None


def recorded_sites(subject):
    sites = subject_config(subject)["activations"].get("sites") or family_sites(subject)
    unknown = sorted(set(sites) - set(family_sites(subject)))
    if unknown:
        raise ValueError(
            f"config: subjects.{subject}.activations.sites names unknown sites {unknown}; "
            f"available: {family_sites(subject)}"
        )
    return sites


def sae_runs():
    """(subject, site, sae spec) for every SAE the config asks for."""
    runs = []
    for subject in config["subjects"]:
        for spec in sae_specs(subject):
            for site in spec["sites"]:
                if site not in recorded_sites(subject):
                    raise ValueError(
                        f"config: subjects.{subject}.saes[{spec['name']}] wants site {site!r}, "
                        f"which is not recorded ({recorded_sites(subject)})"
                    )
                runs.append((subject, site, spec))
    return runs


def sae_spec(subject, sae):
    for spec in sae_specs(subject):
        if spec["name"] == sae:
            return spec
    raise ValueError(f"config: subjects.{subject} has no SAE named {sae!r}")


def subject_features(subject):
    return [
        f"results/features/{s}/{site}/{spec['name']}/features.parquet"
        for s, site, spec in sae_runs()
        if s == subject
    ]


def subject_sae_metrics(subject):
    return [
        f"results/sae/{s}/{site}/{spec['name']}/metrics.json"
        for s, site, spec in sae_runs()
        if s == subject
    ]


def s2_parameters(subject):
    """Parameters of study S2 for a folkrnn subject (config key subjects.<s>.s2, defaults filled
    in by the family schema; left-out tunes mean Sturm's C-major reel, see run_s2)."""
    return dict(subject_config(subject).get("s2", {}))


def s4_subjects():
    """Subjects with an s4: section (chordlm models in study S4)."""
    return [s for s, cfg in config["subjects"].items() if "s4" in cfg]


def s4_unit_runs():
    """(subject, site, sae) for every SAE of an S4 subject: neurons against latents (item 10)."""
    return [
        (s, site, spec["name"]) for s, site, spec in sae_runs() if s in s4_subjects()
    ]


def s4_seed_pairs():
    """(subject a, subject b, site, sae): S4 subjects with the same model and SAE but different
    seeds, whose SAE latents are matched across seeds (universality, item 11)."""
    import json

    runs = s4_unit_runs()
    pairs = []
    for i, (a, site, sae) in enumerate(runs):
        for b, site_b, sae_b in runs[i + 1 :]:
            same = json.dumps(subject_config(a)["model"], sort_keys=True) == json.dumps(
                subject_config(b)["model"], sort_keys=True
            )
            seeds = [
                subject_config(x)["train"].get("seed", config["seed"]) for x in (a, b)
            ]
            if same and (site, sae) == (site_b, sae_b) and seeds[0] != seeds[1]:
                pairs.append((a, b, site, sae))
    return pairs


def all_targets():
    targets = []
    for subject in config["subjects"]:
        targets += [
            f"results/activations/{subject}/{site}.h5"
            for site in recorded_sites(subject)
        ]
        targets.append(f"results/reports/{subject}_overview.html")
        if subject_config(subject)["family"] == "folkrnn" and "s2" in subject_config(
            subject
        ):
            targets.append(f"results/reports/{subject}_s2_folkrnn.html")
    if s4_subjects():
        targets.append("results/reports/s4_induction.html")
    for subject, site, spec in sae_runs():
        base = f"{subject}/{site}/{spec['name']}"
        targets += [
            f"results/sae/{base}/metrics.json",
            f"results/features/{base}/features.parquet",
            f"results/features/{base}/dashboard/index.html",
        ]
    return targets
