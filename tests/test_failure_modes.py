"""Bad input through the real CLI: every case exits 2 with one ``error:`` sentence and modifies no file.

Data files are written in the published layout under a temporary ``data_dir`` (e.g. ``<tmp>/PEMS08/PEMS08.npz``)
with ``data.download=false``; checkpoints come from a tiny run trained once for the module.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from stm3_lightning.cli import main
from stm3_lightning.data.catalogue import DATASETS
from stm3_lightning.run import rundir

QUICK = [
    "model=linear",
    "data.input_len=12",
    "data.horizon=3",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "callbacks.progress_bar=none",
    "callbacks.plots=false",
    "logger.wandb.mode=disabled",
    "data.download=false",
]
SYNTH = ["data.synthetic.num_nodes=4", "data.synthetic.num_steps=700"]
ETT_HEADER = "date,HUFL,HULL,MUFL,MULL,LUFL,LULL,OT"


@dataclass
class Ctx:
    tmp: Path
    trained: Path
    monkeypatch: pytest.MonkeyPatch
    server: str

    @property
    def data(self) -> Path:
        return self.tmp / "data"

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def train(self, *args: str) -> list[str]:
        return ["train", *QUICK, *args, f"paths.data_dir={self.data}", f"paths.output_dir={self.out}"]


# ----------------------------------------------------------------------------------------------- files


def pems08(ctx: Ctx, values: np.ndarray | None = None, key: str = "data") -> Path:
    """``<data>/PEMS08/PEMS08.npz`` holding ``values`` (default: 400 steps x 170 nodes x 1 channel)."""
    if values is None:
        values = np.random.default_rng(0).uniform(1, 100, (400, 170, 1)).astype(np.float32)
    path = ctx.data / "PEMS08" / "PEMS08.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{key: values})
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])
    return path


def with_nonfinite(value: float) -> np.ndarray:
    values = np.random.default_rng(1).uniform(1, 100, (400, 170, 1)).astype(np.float32)
    values[123, 7, 0] = value
    return values


def metr_la_h5(ctx: Ctx) -> Path:
    path = ctx.data / "METR-LA" / "metr-la.h5"
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("df/block0_values", data=np.random.default_rng(0).normal(size=(500, 207)))
    return path


def ett_csv(ctx: Ctx, rows: int = 300, bad_row: int | None = None, cut: bool = False) -> Path:
    """``<data>/ETTh1/ETTh1.csv``; ``bad_row`` gets a non-number, ``cut`` ends the file inside its last row."""
    rng = np.random.default_rng(2)
    lines = [ETT_HEADER]
    for i in range(rows):
        values = [f"{v:.3f}" for v in rng.normal(size=7)]
        if i == bad_row:
            values[3] = "n/a?"
        lines.append(f"2016-07-{1 + i // 24:02d} {i % 24:02d}:00:00," + ",".join(values))
    path = ctx.data / "ETTh1" / "ETTh1.csv"
    path.parent.mkdir(parents=True)
    if cut:
        lines[-1] = lines[-1][:25]  # the copy stopped in the middle of a row
    path.write_text("\n".join(lines) + ("" if cut else "\n"))
    return path


def checkpoint_copy(ctx: Ctx, edit: Callable[[dict], None]) -> Path:
    """A copy (outside any run folder) of the trained run's last checkpoint, edited by ``edit``."""
    ckpt = torch.load(ctx.trained / "checkpoints" / "last.ckpt", weights_only=True)
    edit(ckpt)
    path = ctx.tmp / "foreign.ckpt"
    torch.save(ckpt, path)
    return path


def wrong_download(ctx: Ctx) -> None:
    """PEMS08's mirror served by the loopback server with bytes that do not match the pinned sha256."""
    spec = DATASETS["pems08"]
    mirror = replace(spec.downloads[0], url=f"{ctx.server}/pems08.mat")
    ctx.monkeypatch.setitem(DATASETS, "pems08", replace(spec, downloads=(mirror,)))
    ctx.data.mkdir()


def full_disk(ctx: Ctx) -> None:
    usage = shutil.disk_usage(ctx.tmp)
    ctx.monkeypatch.setattr(rundir.shutil, "disk_usage", lambda path: usage._replace(free=5 * 2**20))


# ----------------------------------------------------------------------------------------------- cases


def case(setup: Callable[[Ctx], list[str]], expected: str, id: str):  # noqa: A002
    return pytest.param(setup, expected, id=id)


CASES = [
    # ---- data files
    case(
        lambda c: (c.data.mkdir(), c.train("data=pems08"))[1],
        "No PEMS08 data found: place one of",
        "missing-file",
    ),
    case(
        lambda c: (truncate(pems08(c)), c.train("data=pems08"))[1],
        r"Cannot read .*PEMS08\.npz as a \.npz archive \(BadZipFile",
        "truncated-npz",
    ),
    case(
        lambda c: (pems08(c).write_bytes(os.urandom(4096)), c.train("data=pems08"))[1],
        r"PEMS08\.npz is not a \.npz archive",
        "corrupted-npz",
    ),
    case(
        lambda c: (truncate(metr_la_h5(c)), c.train("data=metr_la"))[1],
        r"Cannot read .*metr-la\.h5 as an HDF5 file",
        "truncated-h5",
    ),
    case(
        lambda c: (
            metr_la_h5(c).write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(2048)),
            c.train("data=metr_la"),
        )[1],
        r"Cannot read .*metr-la\.h5 as an HDF5 file",
        "corrupted-h5",
    ),
    case(
        lambda c: (ett_csv(c, cut=True), c.train("data=etth1"))[1],
        r"ETTh1\.csv line 301 has 2 fields but the header has 8; it is truncated or corrupt",
        "truncated-csv",
    ),
    case(
        lambda c: (ett_csv(c, bad_row=40), c.train("data=etth1"))[1],
        r"ETTh1\.csv line 42 column 'MULL' holds 'n/a\?', which is not a number",
        "corrupted-csv",
    ),
    case(
        lambda c: (pems08(c, key="flow"), c.train("data=pems08"))[1], "has no array named 'data'", "wrong-key"
    ),
    case(
        lambda c: (pems08(c, np.ones(400, np.float32)), c.train("data=pems08"))[1],
        r"has shape \(400,\) \(rank 1\), expected \[T, N\] or \[T, N, C\]",
        "wrong-rank",
    ),
    case(
        lambda c: (pems08(c, np.ones((400, 50, 1), np.float32)), c.train("data=pems08"))[1],
        "has 50 nodes but PEMS08 has 170",
        "wrong-node-count",
    ),
    case(
        lambda c: (pems08(c, with_nonfinite(np.nan)), c.train("data=pems08"))[1],
        r"has 1 NaN/inf values \(first at step 123, node 7\); clean the file or set data.nan_policy=mask",
        "nan-policy-fail",
    ),
    case(
        lambda c: (pems08(c, with_nonfinite(np.inf)), c.train("data=pems08", "data.nan_policy=fail"))[1],
        r"has 1 NaN/inf values \(first at step 123, node 7\)",
        "inf-policy-fail",
    ),
    case(
        lambda c: (pems08(c, np.full((400, 170, 1), 7.0, np.float32)), c.train("data=pems08"))[1],
        r"constant or missing \(zero standard deviation\)",
        "constant-series",
    ),
    case(
        lambda c: c.train("data.synthetic.num_steps=20"),
        r"fewer than input_len \+ horizon = 15",
        "series-too-short",
    ),
    case(
        lambda c: (wrong_download(c), c.train("data=pems08", "data.download=true"))[1],
        "checksum mismatch",
        "download-checksum",
    ),
    # ---- names and config
    case(
        lambda c: c.train("data=pems09"),
        "Unknown data config 'pems09'.* Did you mean pems08",
        "unknown-dataset",
    ),
    case(lambda c: c.train("model=lienar"), "Unknown model 'lienar'.* Did you mean linear", "unknown-model"),
    case(
        lambda c: c.train("experiment=reproduce/pems8"),
        "Unknown experiment 'reproduce/pems8'",
        "unknown-experiment",
    ),
    case(
        lambda c: c.train("trainer.max_epoch=3"),
        "Unknown config key 'trainer.max_epoch'; closest valid keys: trainer.max_epochs",
        "mistyped-key",
    ),
    case(
        lambda c: c.train("trainer.max_epochs=ten"),
        "Invalid value for 'trainer.max_epochs'",
        "mistyped-value",
    ),
    case(
        lambda c: c.train("logger.wandb.mode=onlin"),
        "Invalid value 'onlin' for 'logger.wandb.mode'; choose one of online, offline, disabled",
        "mistyped-choice",
    ),
    # ---- checkpoints
    case(
        lambda c: ["eval", f"ckpt={c.trained / 'checkpoints' / 'last.ckpt'}", "data.synthetic.num_nodes=5"],
        r"was trained for model 'linear' on synthetic with 4 nodes, .* but this run builds model 'linear' on "
        r"synthetic with 5 nodes",
        "eval-checkpoint-other-node-count",
    ),
    case(
        lambda c: ["train", f"resume={c.trained}", "data.synthetic.num_nodes=5"],
        r"was trained for model 'linear' on synthetic with 4 nodes, .* but this run builds .* with 5 nodes",
        "resume-checkpoint-other-node-count",
    ),
    case(
        lambda c: c.train(
            *SYNTH, f"ckpt_path={checkpoint_copy(c, lambda k: k['stm3'].update(model='stm3'))}"
        ),
        r"was trained for model 'stm3' on synthetic with 4 nodes",
        "checkpoint-other-model",
    ),
    case(
        lambda c: c.train(
            *SYNTH, "model.per_node=false", f"ckpt_path={c.trained / 'checkpoints' / 'last.ckpt'}"
        ),
        r"does not fit the configured model: 'model.weight' has shape \[4, 12, 3\] there but \[1, 12, 3\] here",
        "checkpoint-other-architecture",
    ),
    case(
        lambda c: ["eval", f"ckpt={truncate(checkpoint_copy(c, lambda k: None))}", *QUICK, *SYNTH],
        "foreign.ckpt is truncated or corrupt",
        "truncated-checkpoint",
    ),
    case(lambda c: ["eval", f"ckpt={c.tmp / 'none.ckpt'}"], "none.ckpt does not exist", "missing-checkpoint"),
    case(
        lambda c: ["train", f"resume={c.trained}", "model=persistence"],
        "model=persistence cannot change",
        "resume-other-model",
    ),
    # ---- output folder
    case(
        lambda c: ["train", *QUICK, *SYNTH, f"paths.output_dir={c.trained}"],
        "already holds a run; choose another paths.output_dir or continue it with resume=",
        "output-dir-holds-a-run",
    ),
    case(
        lambda c: (
            c.data.mkdir(),
            (c.data / "f").write_text("x"),
            ["train", *QUICK, f"paths.output_dir={c.data}/f/run"],
        )[2],
        "because .*/data/f is a file, not a folder",
        "output-dir-unwritable",
    ),
    case(
        lambda c: (full_disk(c), c.train(*SYNTH))[1],
        r"has 5 MiB free but this run needs about \d+ MiB",
        "disk-full",
    ),
]


def snapshot(*roots: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``roots``: size, mtime and content hash."""
    out = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                stat = path.stat()
                out[str(path)] = (
                    stat.st_size,
                    stat.st_mtime_ns,
                    hashlib.sha256(path.read_bytes()).hexdigest(),
                )
            else:
                out[str(path)] = (0, 0, "dir")
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    os.environ.pop(rundir.RUN_DIR_ENV, None)
    assert main(["train", *QUICK, *SYNTH, f"paths.output_dir={run}"]) == 0
    assert (run / "checkpoints" / "last.ckpt").is_file()
    return run


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = b"<html>this is not the dataset</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("setup, expected", CASES)
def test_bad_input_fails_with_one_sentence_and_touches_nothing(
    setup: Callable[[Ctx], list[str]],
    expected: str,
    trained: Path,
    server: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture,
) -> None:
    ctx = Ctx(tmp_path, trained, monkeypatch, server)
    argv = setup(ctx)
    before = snapshot(tmp_path, trained)
    capfd.readouterr()
    code = main(argv)
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err[-3000:]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert re.search(expected, errors[0]), errors[0]
    assert snapshot(tmp_path, trained) == before, "a file was created or modified"
    assert not ctx.out.exists()


def test_nan_policy_mask_trains_on_the_same_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The other NaN policy: the same file trains, the NaN entry counted as missing."""
    ctx = Ctx(tmp_path, tmp_path, monkeypatch, "")
    pems08(ctx, with_nonfinite(np.nan))
    assert main(ctx.train("data=pems08", "data.nan_policy=mask")) == 0
    assert (ctx.out / "test_metrics.json").is_file()
