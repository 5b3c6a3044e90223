"""Checkpoints: refused unless safe and complete; a checkpoint of another model or data shape is named as such."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from stm3_lightning.run.checkpoints import (
    META_KEY,
    CheckpointError,
    CheckpointMetadata,
    check_compatible,
    last_checkpoint,
    load_checkpoint,
    run_metadata,
)
from stm3_lightning.types import DataInfo

META = {"model": "linear", "dataset": "synthetic", "num_nodes": 6, "input_len": 12, "horizon": 3}


def save(path: Path, module: nn.Module, meta: dict | None = META) -> Path:
    ckpt: dict = {"state_dict": module.state_dict(), "global_step": 7}
    if meta is not None:
        ckpt[META_KEY] = meta
    torch.save(ckpt, path)
    return path


class _Exploit:
    def __reduce__(self):  # unpickling would create the marker file
        return (Path.touch, (Path(self.marker),))


def test_run_metadata_and_callback() -> None:
    cfg = OmegaConf.create({"model": {"name": "linear"}, "data": {"name": "synthetic"}})
    meta = run_metadata(cfg, DataInfo(num_nodes=6, input_len=12, horizon=3))
    assert meta == META
    ckpt: dict = {}
    CheckpointMetadata(meta).on_save_checkpoint(None, None, ckpt)  # type: ignore[arg-type]
    assert ckpt[META_KEY] == META


def test_compatible_checkpoint_loads(tmp_path: Path) -> None:
    module = nn.Linear(3, 2)
    ckpt = check_compatible(save(tmp_path / "a.ckpt", module), nn.Linear(3, 2), META)
    assert ckpt["global_step"] == 7 and torch.equal(ckpt["state_dict"]["weight"], module.weight)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model": "stm3"}, "trained for model 'stm3' on synthetic with 6 nodes"),
        ({"num_nodes": 7}, "with 7 nodes, input_len 12, horizon 3, but this run builds model 'linear'"),
        ({"horizon": 12}, "horizon 12, but this run builds"),
    ],
)
def test_metadata_mismatch_is_one_sentence(tmp_path: Path, change: dict, message: str) -> None:
    path = save(tmp_path / "a.ckpt", nn.Linear(3, 2), {**META, **change})
    with pytest.raises(CheckpointError, match=message) as info:
        check_compatible(path, nn.Linear(3, 2), META)
    assert "\n" not in str(info.value) and str(info.value).endswith("change the config to match it.")


def test_other_dataset_with_same_shape_is_accepted(tmp_path: Path) -> None:
    path = save(tmp_path / "a.ckpt", nn.Linear(3, 2), {**META, "dataset": "pems08"})
    check_compatible(path, nn.Linear(3, 2), META)


@pytest.mark.parametrize(
    "module, message",
    [
        (nn.Linear(4, 2), r"'weight' has shape \[2, 3\] there but \[2, 4\] here"),
        (nn.Linear(3, 2, bias=False), r"0 parameters missing, 1 unexpected; 'bias' is unexpected"),
        (nn.Sequential(nn.Linear(3, 2)), r"2 parameters missing, 2 unexpected; '0.weight' is missing"),
    ],
)
def test_state_dict_mismatch_without_metadata(tmp_path: Path, module: nn.Module, message: str) -> None:
    path = save(tmp_path / "a.ckpt", nn.Linear(3, 2), meta=None)
    with pytest.raises(CheckpointError, match=message):
        check_compatible(path, module, META)


def test_missing_truncated_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.ckpt")
    path = save(tmp_path / "a.ckpt", nn.Linear(30, 20))
    path.write_bytes(path.read_bytes()[:700])
    with pytest.raises(CheckpointError, match="is truncated or corrupt"):
        load_checkpoint(path)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint"):
        load_checkpoint(tmp_path / "bare.pt")


def test_pickled_code_is_refused_and_never_run(tmp_path: Path) -> None:
    exploit = _Exploit()
    exploit.marker = str(tmp_path / "pwned")  # type: ignore[attr-defined]
    torch.save({"state_dict": {}, "payload": exploit}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil.ckpt")
    assert not (tmp_path / "pwned").exists()
    torch.load(tmp_path / "evil.ckpt", weights_only=False)  # the payload is live: a full unpickler runs it
    assert (tmp_path / "pwned").exists()


def test_last_checkpoint(tmp_path: Path) -> None:
    assert last_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoints" / "last.ckpt"
