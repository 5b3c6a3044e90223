"""``launcher=`` / ``launcher.*``: values from configs/launcher/, keys and types from the schemas, one-sentence errors."""

from __future__ import annotations

import pytest

from stm3_lightning.config.compose import ConfigError, group_options
from stm3_lightning.multirun.launcher_config import LAUNCHERS, compose_launcher, slurm_minutes


def test_every_launcher_file_has_a_schema_and_composes() -> None:
    assert group_options("launcher") == sorted(LAUNCHERS)
    for name in LAUNCHERS:
        assert compose_launcher([f"launcher={name}"]).name == name
    assert compose_launcher([]).name == "basic"


def test_slurm_keys_are_typed_and_overridable() -> None:
    cfg = compose_launcher(
        [
            "launcher=submitit_slurm",
            "launcher.partition=gpu",
            "launcher.nodes=2",
            "launcher.gpus=4",
            "launcher.time=1-02:30",
            "launcher.setup=[module load cuda]",
            "launcher.additional_parameters={exclude: node12}",
        ]
    )
    assert (cfg.partition, cfg.nodes, cfg.gpus, cfg.time) == ("gpu", 2, 4, 26 * 60 + 30)
    assert list(cfg.setup) == ["module load cuda"] and dict(cfg.additional_parameters) == {
        "exclude": "node12"
    }


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        ("90", 90),
        ("30:00", 30),
        ("04:00:00", 240),
        ("1-00", 1440),
        ("2-01:30", 2970),
        ("0:30", 1),
        ("00:10:01", 11),
    ],
)
def test_slurm_time_formats(text: str, minutes: int) -> None:
    assert slurm_minutes(text) == minutes
    assert compose_launcher(["launcher=submitit_slurm", f"launcher.time={text}"]).time == minutes


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["launcher=slurm"],
            "Unknown launcher config 'slurm'; available: basic, submitit_local, submitit_slurm",
        ),
        (["launcher=submitit_slurm", "launcher.partitoin=gpu"], "closest valid keys: launcher.partition"),
        (
            ["launcher.gpus=2"],
            "launcher.gpus is a key of launcher=submitit_local and launcher=submitit_slurm",
        ),
        (
            ["launcher=submitit_local", "launcher.nodes=2"],
            "launcher.nodes is a key of launcher=submitit_slurm",
        ),
        (["launcher=submitit_local", "launcher.gpus=two"], "Invalid value for 'launcher.gpus'"),
        (["launcher=submitit_slurm", "launcher.time=soon"], "launcher.time=soon is not a time"),
        (["launcher=submitit_slurm", "launcher.nodes=0"], "launcher.nodes must be at least 1, got 0"),
        (
            ["launcher=submitit_local", "launcher.name=basic"],
            "launcher.name is set by launcher=submitit_local",
        ),
    ],
)
def test_launcher_errors_are_one_sentence(args: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        compose_launcher(args)
