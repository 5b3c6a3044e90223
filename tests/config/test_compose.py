from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from stm3_lightning.config.compose import (
    ConfigError,
    compose,
    compose_saved,
    experiment_options,
    group_options,
)


def test_defaults_compose() -> None:
    cfg = compose([])
    assert cfg.data.name == "synthetic"
    assert cfg.model.name == "stm3"
    assert cfg.choices.data == "synthetic"


@pytest.mark.parametrize("group", ["data", "model", "trainer", "logger", "callbacks"])
def test_every_group_file_composes(group: str) -> None:
    options = group_options(group)
    assert options, f"no configs in configs/{group}"
    for name in options:
        cfg = compose([f"{group}={name}"])
        assert OmegaConf.select(cfg, group) is not None


def test_every_experiment_composes() -> None:
    for name in experiment_options():
        cfg = compose([f"experiment={name}"])
        assert cfg.choices.experiment == name


def test_cli_overrides_last() -> None:
    cfg = compose(["model=linear", "trainer.max_epochs=5", "seed=3", "data.input_len=36"])
    assert (cfg.trainer.max_epochs, cfg.seed, cfg.data.input_len, cfg.model.name) == (5, 3, 36, "linear")


def test_unknown_key_names_closest() -> None:
    with pytest.raises(ConfigError, match=r"trainer\.max_epoch.*closest valid keys: trainer\.max_epochs"):
        compose(["trainer.max_epoch=3"])


def test_unknown_model_key() -> None:
    with pytest.raises(ConfigError, match="model.per_nod"):
        compose(["model=linear", "model.per_nod=false"])


def test_wrong_type_names_key() -> None:
    with pytest.raises(ConfigError, match="trainer.max_epochs"):
        compose(["trainer.max_epochs=abc"])


@pytest.mark.parametrize(
    ("arg", "pattern"),
    [
        ("data=pems8", "Unknown data config 'pems8'.*pems08"),
        ("model=stm4", "Unknown model 'stm4'.*stm3"),
        ("experiment=nope", "Unknown experiment 'nope'"),
        ("metrics.protocol=maskd", "metrics.protocol"),
        ("data.split.ratios=[0.5,0.2,0.2]", "sum"),
        ("justaword", "key=value"),
    ],
)
def test_bad_choices_fail_clearly(arg: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        compose([arg])


@pytest.mark.parametrize(
    ("key", "allowed"),
    [
        ("data.split.mode", "ratio, ratio_lookback, borders, window"),
        ("data.scaler.kind", "standard, none"),
        ("data.nan_policy", "fail, mask"),
        ("metrics.protocol", "official, masked"),
        ("logger.wandb.mode", "online, offline, disabled"),
        ("callbacks.progress_bar", "auto, rich, tqdm, plain, none"),
    ],
)
def test_string_choices_are_checked_by_the_schema(key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        compose([f"{key}=bogus"])
    assert str(info.value) == f"Invalid value 'bogus' for '{key}'; choose one of {allowed} (in command line)."
    first = allowed.split(", ")[0]
    value = OmegaConf.select(compose([f"{key}={first}"]), key)
    assert value == first and f"{value}" == first


@pytest.mark.parametrize(
    ("name", "suggested"),
    [
        ("reproduce/pems8", "reproduce/pems08"),
        ("no_agcn", "ablations/no_agccn"),  # spelling of the last path part
        ("hidden", "ablations/hidden_router"),  # a part of the name
        ("reproduce/PEMS08", "reproduce/pems08"),
    ],
)
def test_unknown_experiment_suggests_closest_names(name: str, suggested: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"Unknown experiment '{name}'; available: .*\. Did you mean [^?]*{suggested}"
    ):
        compose([f"experiment={name}"])


@pytest.mark.parametrize("arg", ["data.horizon=-3", "data.input_len=0"])
def test_non_positive_window_lengths_echo_the_values(arg: str) -> None:
    key, value = arg.split("=")
    with pytest.raises(ConfigError, match=rf"must be positive integers, got .*{key}={value}\b"):
        compose([arg])


def test_compose_saved_roundtrip(tmp_path) -> None:
    cfg = compose(["model=linear", "seed=5"])
    OmegaConf.save(cfg, tmp_path / "config.yaml")
    again = compose_saved(tmp_path / "config.yaml", ["seed=6"])
    assert again.model.name == "linear" and again.seed == 6


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["tags=[a"], "Cannot parse the override 'tags=\\[a'"),
        (["paths.root_dir=${eval:1+1}"], "Unsupported interpolation type eval.*only"),
        (["data.nan_policy=mask"], "metrics.protocol=masked"),
    ],
)
def test_bad_overrides_one_sentence(args: list[str], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        compose(args)


def test_merge_error_sentence_ends_once() -> None:
    with pytest.raises(ConfigError) as info:
        compose(["trainer.max_epoch=3"])
    assert str(info.value).endswith("(in command line).") and ".. " not in str(info.value)


def test_synthetic_time_features_follow_the_generated_period() -> None:
    """data.synthetic.steps_per_day sets the period of the series and of its time-of-day features alike; a
    data.steps_per_day that disagrees with it is refused with the key to set instead."""
    assert compose(["data.synthetic.steps_per_day=288"]).data.steps_per_day == 288
    assert compose([]).data.steps_per_day == compose([]).data.synthetic.steps_per_day == 96
    with pytest.raises(
        ConfigError, match=r"data.steps_per_day=24 differs .* set data.synthetic.steps_per_day=24"
    ):
        compose(["data.steps_per_day=24"])
    assert compose(["data=pems08"]).data.steps_per_day == 288
