"""Loggers: W&B never blocks or breaks a run (unreachable, bad key, silent server); CSV history survives a resume."""

from __future__ import annotations

import csv
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf

from stm3_lightning.cli import main
from stm3_lightning.config.schema import WandbConfig
from stm3_lightning.run.loggers import (
    WANDB_ID_FILE,
    continue_csv_log,
    resolve_wandb_mode,
    wandb_reachable,
    wandb_run_id,
)

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"
TINY = [
    "model=linear",
    "data.synthetic.num_nodes=4",
    "data.synthetic.num_steps=700",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "callbacks.progress_bar=none",
    "callbacks.plots=false",
    "logger.wandb.mode=online",
]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def online_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """W&B asked to log online with a fake key; ``WANDB_MODE`` is restored after the test (WandbLogger sets it).

    ``wandb.teardown()`` around the test: wandb caches the base URL of the first run of a process.
    """
    import wandb

    wandb.teardown()
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc, no ~/.config/wandb
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / "wandb"))
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    yield monkeypatch
    wandb.teardown()


@pytest.fixture
def unauthorized_server() -> Iterator[str]:
    """A loopback HTTP server that answers 401 to every request (a wrong API key)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = b'{"errors": [{"message": "user is not logged in"}]}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_HEAD = do_PUT = do_POST  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run_online(tmp_path: Path) -> tuple[int, float, Path]:
    out = tmp_path / "run"
    start = time.monotonic()
    code = main(["train", *TINY, f"paths.output_dir={out}"])
    return code, time.monotonic() - start, out


def test_unreachable_server_trains_offline_within_seconds(
    online_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    online_env.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    code, elapsed, out = run_online(tmp_path)
    assert code == 0 and (out / "test_metrics.json").is_file()
    assert list((out / "wandb").glob("offline-run-*")), "no offline W&B run was written"
    assert elapsed < 30  # a hung W&B connection would take init_timeout (30 s) or more


def test_rejected_api_key_trains_offline(
    online_env: pytest.MonkeyPatch, unauthorized_server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    online_env.setenv("WANDB_BASE_URL", unauthorized_server)
    assert wandb_reachable()  # the server answers, so only wandb.init can find out the key is bad
    with caplog.at_level("WARNING", logger="stm3_lightning.run.loggers"):
        code, elapsed, out = run_online(tmp_path)
    assert "could not start an online run" in caplog.text
    assert code == 0 and (out / "test_metrics.json").is_file()
    assert list((out / "wandb").glob("offline-run-*")), "no offline W&B run was written"
    assert elapsed < 30  # a hung W&B connection would take init_timeout (30 s) or more


def test_closed_port_is_unreachable_at_once(online_env: pytest.MonkeyPatch) -> None:
    online_env.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    start = time.monotonic()
    assert resolve_wandb_mode(WandbConfig(mode="online")) == "offline"
    assert time.monotonic() - start < 2


def test_silent_server_is_unreachable_after_the_timeout(online_env: pytest.MonkeyPatch) -> None:
    """A server that accepts the connection but never answers (firewall, hung proxy) must not hang the run."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)  # connections complete in the backlog, nobody answers
        online_env.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{listener.getsockname()[1]}")
        start = time.monotonic()
        assert not wandb_reachable(timeout=0.5)
        assert time.monotonic() - start < 3


def test_no_credentials_means_offline(online_env: pytest.MonkeyPatch) -> None:
    online_env.delenv("WANDB_API_KEY")
    assert resolve_wandb_mode(WandbConfig(mode="online")) == "offline"
    assert resolve_wandb_mode(WandbConfig(mode="disabled")) == "disabled"
    online_env.setenv("WANDB_MODE", "dryrun")
    assert resolve_wandb_mode(WandbConfig(mode="online")) == "offline"


def test_wandb_run_id_is_read_from_the_run_folder(tmp_path: Path) -> None:
    fresh = {wandb_run_id(tmp_path, resuming=True) for _ in range(3)}  # no stored id yet: new ones
    assert len(fresh) == 3 and all(len(i) == 8 and i.isalnum() for i in fresh)
    (tmp_path / WANDB_ID_FILE).write_text("abc123\n")
    assert wandb_run_id(tmp_path, resuming=True) == "abc123"
    assert wandb_run_id(tmp_path, resuming=False) != "abc123"


def test_resumed_csv_keeps_history_up_to_the_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "csv"
    folder.mkdir()
    with (folder / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["epoch", "step", "train/loss"])
        writer.writeheader()
        writer.writerows({"epoch": 0, "step": s, "train/loss": 10 - s} for s in range(0, 10, 2))
    logger = CSVLogger(str(tmp_path), name="csv", version="")
    continue_csv_log(logger, until_step=5)
    logger.log_metrics({"train/loss": 4.5, "val/loss": 3.0}, step=6)
    logger.save()
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 2, 4, 6]
    assert rows[0]["train/loss"] == "10" and rows[-1]["val/loss"] == "3.0"


def test_config_reaches_wandb_resolved(online_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The offline logger receives the resolved config (no interpolation strings)."""
    from stm3_lightning.run.loggers import build_wandb_logger

    online_env.setenv("WANDB_MODE", "offline")
    cfg = OmegaConf.create(
        {
            "a": "${b}",
            "b": 3,
            "tags": [],
            "logger": {"wandb": OmegaConf.structured(WandbConfig(mode="offline"))},
        }
    )
    logger = build_wandb_logger(cfg, tmp_path)
    assert logger is not None and logger._wandb_init["config"]["a"] == 3


def test_resumed_run_continues_its_wandb_run(online_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from stm3_lightning.run.loggers import build_wandb_logger

    online_env.setenv("WANDB_MODE", "offline")
    cfg = OmegaConf.create(
        {"tags": [], "logger": {"wandb": OmegaConf.structured(WandbConfig(mode="offline"))}}
    )
    first = build_wandb_logger(cfg, tmp_path)._wandb_init["id"]
    assert (tmp_path / WANDB_ID_FILE).read_text().strip() == first
    assert build_wandb_logger(cfg, tmp_path, resuming=True)._wandb_init["id"] == first
    assert build_wandb_logger(cfg, tmp_path, resuming=False)._wandb_init["id"] != first


def test_run_never_attaches_to_a_wandb_run_left_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    stale = wandb.init(mode="offline", dir=str(tmp_path), project="stale")
    try:
        out = tmp_path / "run"
        assert main(["train", *TINY, "logger.wandb.mode=offline", f"paths.output_dir={out}"]) == 0
        assert list((out / "wandb").glob("offline-run-*")), "the run's W&B files went to the stale run"
    finally:
        stale.finish()
