"""params.yaml validation: defaults load, bad keys/types/ranges name the key, profiles are real params."""

import subprocess
import sys

import pytest
import yaml

from pipeline.config import (ROOT, ConfigError, deep_merge, defaults, load_params, parse_params, profile_overrides,
                             read_yaml, set_args)


def test_repo_params_yaml_is_valid_and_complete():
    p = load_params(ROOT / "params.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    # every field of the schema is written in params.yaml (documented there, not only in code)
    assert set(raw) == set(type(p).model_fields)
    for name, section in raw.items():
        value = getattr(p, name)
        if isinstance(section, dict):
            assert set(section) == set(type(value).model_fields), name
        else:  # a top-level scalar (the training seed)
            assert section == value, name


@pytest.mark.parametrize("raw, key", [
    ({"train_cls": {"lr": "fast"}}, "train_cls.lr"),
    ({"seed": -1}, "seed"),
    ({"train_cls": {"seed": 1}}, "train_cls.seed"),  # one training seed, at the top level
    ({"train_cls": {"learning_rate": 0.1}}, "train_cls.learning_rate"),
    ({"dataset": {"toy": {"num_classes": 1}}}, "dataset.toy.num_classes"),
    ({"dataset": {"name": "imagenet"}}, "dataset.name"),
    ({"pseudo": {"alpha1": 0.8, "alpha2": 0.7}}, "pseudo"),
    ({"aream": {"enabled": "maybe"}}, "aream.enabled"),
    ({"bogus": {}}, "bogus"),
])
def test_bad_values_name_the_key(raw, key):
    with pytest.raises(ConfigError) as err:
        load_params(ROOT / "params.yaml", overrides=raw)
    assert key in str(err.value)


def test_defaults_live_in_params_yaml_only(tmp_path):
    """The schema has no default values: a key left out of params.yaml is an error that names it, and
    code that needs defaults reads them from params.yaml."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    del raw["seg"]["lr"]
    del raw["dataset"]["toy"]["seed"]
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert "seg.lr: missing" in str(err.value) and "dataset.toy.seed: missing" in str(err.value)
    assert defaults() == load_params(ROOT / "params.yaml")
    changed = defaults().seg.replace(lr=0.5)
    assert changed.lr == 0.5 and changed.epochs == defaults().seg.epochs
    with pytest.raises(ConfigError, match="lr"):
        defaults().seg.replace(lr=-1)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_deep_merge_and_set_args():
    merged = deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}})
    assert merged == {"a": {"b": 3, "c": 2}}
    assert set_args({"a": {"b": [1, 2]}, "d": 0.001, "e": None, "f": True}) == \
        ["-S", "a.b=[1,2]", "-S", "d=0.001", "-S", "e=null", "-S", "f=true"]


def test_set_args_survive_shell_word_splitting():
    """`dvc exp run $(python -m pipeline.config set-args voc)`: the shell splits the output on whitespace
    and does not strip quotes, so no argument may contain either."""
    with pytest.raises(ConfigError, match="word splitting"):
        set_args({"a": "two words"})


@pytest.mark.parametrize("name", ["smoke", "voc", "scratch", "toy-original"])
def test_set_args_give_dvc_the_profile_values(name, tmp_path):
    """DVC parses `-S` values with its own (Hydra) grammar: applying the printed arguments with DVC's code
    must give exactly the values of params.yaml merged with the profile."""
    from dvc.utils.hydra import apply_overrides

    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    args = set_args(profile_overrides(name))
    apply_overrides(params, [a for a in args if a != "-S"])
    expected = deep_merge(read_yaml(ROOT / "params.yaml"), profile_overrides(name))
    assert read_yaml(params) == expected


@pytest.mark.parametrize("name", ["smoke", "voc", "scratch", "toy-original"])
def test_profiles_hold_only_real_parameters(name):
    over = profile_overrides(name)
    assert over, f"profile {name} is empty"
    load_params(ROOT / "params.yaml", overrides=over)


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ConfigError, match="smoke"):
        profile_overrides("nope")


def test_cli_reports_errors_in_one_line(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    r = subprocess.run([sys.executable, "-m", "pipeline.config", "apply", "nope", "--params", str(params)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: profile 'nope'")
    r = subprocess.run([sys.executable, "-m", "pipeline.config", "apply", "smoke", "--params", str(params)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert load_params(params) != load_params(ROOT / "params.yaml")
