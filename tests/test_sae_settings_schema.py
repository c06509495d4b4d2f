"""Every SAE training setting is reachable from the workflow config, with the library's defaults:
the ``saes:`` item properties of workflow/schemas/config.schema.yaml against TrainSettings and the
architectures' config dataclasses."""

import dataclasses
from pathlib import Path

import pytest
import yaml
from conftest import validator_filling_defaults
from jsonschema import Draft202012Validator

from musinterp.sae import ARCHITECTURES, TrainSettings, split_settings
from musinterp.sae.base import DIMENSION_FIELDS

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
SAE_ITEM = SCHEMA["properties"]["subjects"]["additionalProperties"]["properties"]["saes"]["items"]
PROPERTIES = SAE_ITEM["properties"]
PLACING = ("name", "arch", "sites")  # what names an SAE and places it (arch is also a setting)
# seed has no default in the item: an SAE's seed defaults to the run's top-level seed.
RUN_LEVEL_DEFAULTS = {"seed": SCHEMA["properties"]["seed"]}

GENERIC = {f.name: f for f in dataclasses.fields(TrainSettings)}
ARCH_FIELDS = {
    arch: {f.name: f for f in dataclasses.fields(cls.config_class) if f.name not in DIMENSION_FIELDS}
    for arch, cls in ARCHITECTURES.items()
}


def test_every_setting_is_a_property():
    missing = sorted(set(GENERIC) - set(PROPERTIES))
    assert not missing, f"TrainSettings fields without a saes: property: {missing}"
    for arch, fields in ARCH_FIELDS.items():
        missing = sorted(set(fields) - set(PROPERTIES))
        assert not missing, f"{arch} settings without a saes: property: {missing}"


def test_every_property_is_a_setting():
    known = set(GENERIC) | set(PLACING) | {name for fields in ARCH_FIELDS.values() for name in fields}
    assert sorted(set(PROPERTIES) - known) == []


def test_arch_enum_is_the_registry():
    assert sorted(PROPERTIES["arch"]["enum"]) == sorted(ARCHITECTURES)


@pytest.mark.parametrize("name", sorted(GENERIC))
def test_generic_defaults_equal_the_dataclass_defaults(name):
    field = GENERIC[name]
    prop = RUN_LEVEL_DEFAULTS.get(name, PROPERTIES[name])
    if field.default is None or name == "arch":  # arch is required in the item
        assert "default" not in prop, f"{name}: the dataclass default is {field.default!r}"
    else:
        assert "default" in prop, f"{name}: the schema should give the default {field.default!r}"
        assert prop["default"] == field.default and type(prop["default"]) is type(field.default), name
    if name in RUN_LEVEL_DEFAULTS:
        assert "default" not in PROPERTIES[name]


def test_architecture_settings_have_no_schema_default():
    for arch, fields in ARCH_FIELDS.items():
        for name in fields:
            assert "default" not in PROPERTIES[name], f"{name} ({arch}): its default lives in the dataclass"


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_a_validated_item_gives_the_library_defaults(arch):
    Draft202012Validator.check_schema(SCHEMA)
    item = {"name": "x", "arch": arch, "sites": ["lstm0_h"], **({"k": 4} if "k" in ARCH_FIELDS[arch] else {})}
    validator_filling_defaults()(SAE_ITEM).validate(item)
    # what workflow/scripts/train_sae.py passes to train_sae (with the run's seed)
    settings = {key: value for key, value in item.items() if key not in ("name", "sites")}
    generic, own = split_settings({"seed": 0, **settings})
    assert generic == TrainSettings(arch=arch)
    assert own == ({"k": 4} if "k" in ARCH_FIELDS[arch] else {})


def test_a_setting_of_another_architecture_is_named():
    with pytest.raises(ValueError, match=r"threshold_rate=0\.1 is a setting of batchtopk, not of the topk"):
        split_settings({"arch": "topk", "k": 3, "threshold_rate": 0.1})
    with pytest.raises(ValueError, match="encoder_bias_init=0 is a setting of relu_l1, not of the jumprelu"):
        split_settings({"arch": "jumprelu", "encoder_bias_init": 0})
    with pytest.raises(ValueError, match="unknown SAE setting 'epoks'"):
        split_settings({"arch": "relu_l1", "epoks": 3})
