"""Config helpers used by the Snakefile at parse time."""

import pytest

from musinterp.config import expand_sae_specs, family_sites


def test_folkrnn_sites():
    assert family_sites("folkrnn", {"n_layers": 2}) == ["lstm0_h", "lstm0_c", "lstm1_h", "lstm1_c", "softmax"]
    assert len(family_sites("folkrnn", {})) == 7  # v2 default: 3 layers
    with pytest.raises(ValueError, match="family 'nope'"):
        family_sites("nope", {})


def test_sweeps_expand_to_named_grid():
    specs = [{"name": "a", "arch": "relu_l1", "sites": ["x"], "width": 64},
             {"name": "b", "arch": "relu_l1", "sites": ["x"], "width": [64, 128], "l1_coeff": [0.001, 0.01]}]
    out = expand_sae_specs(specs)
    assert [s["name"] for s in out] == ["a", "b-width64-l1_coeff0.001", "b-width64-l1_coeff0.01",
                                        "b-width128-l1_coeff0.001", "b-width128-l1_coeff0.01"]
    assert out[4]["width"] == 128 and out[4]["l1_coeff"] == 0.01 and out[0] == specs[0]


def test_colliding_names_are_refused():
    specs = [{"name": "a-width8", "sites": ["x"], "width": 8}, {"name": "a", "sites": ["x"], "width": [8]}]
    with pytest.raises(ValueError, match="repeat"):
        expand_sae_specs(specs)


def test_check_keys_names_section_and_keys():
    import dataclasses

    from musinterp.config import check_keys

    @dataclasses.dataclass
    class Settings:
        a: int = 1
        b: int = 2

    check_keys(Settings, {"a": 3}, "corpus 'x'", "popgen")  # known keys pass
    with pytest.raises(ValueError, match=r"corpus 'x': popgen\.c, popgen\.d are not settings \(known: a, b\)"):
        check_keys(Settings, {"a": 1, "d": 0, "c": 0}, "corpus 'x'", "popgen")
