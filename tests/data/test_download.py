"""Verified atomic downloads, exercised for real against a loopback HTTP server (127.0.0.1, no internet)."""

from __future__ import annotations

import gc
import hashlib
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from stm3_lightning.data.catalogue import DATASETS
from stm3_lightning.data.download import download_file, file_checksum, parse_checksum, verify_checksum
from stm3_lightning.data.errors import ChecksumError, DataWarning, DownloadError, MissingDataError
from stm3_lightning.data.reading import load_series
from stm3_lightning.data.specs import DataFile

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()


@dataclass
class Server:
    """Loopback server: ``routes`` maps a path to bytes; ``/short`` promises more bytes than it sends,
    ``/hang`` never answers until the test ends; everything else is 404. ``hits`` counts requests per path."""

    base: str
    routes: dict[str, bytes]
    hits: dict[str, int] = field(default_factory=dict)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    release = threading.Event()
    state = Server(base="", routes={})

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            state.hits[self.path] = state.hits.get(self.path, 0) + 1
            if self.path == "/hang":
                release.wait(10)
                return
            if self.path == "/short":
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                self.wfile.write(PAYLOAD[:1000])
                self.wfile.flush()
                self.close_connection = True
                return
            body = state.routes.get(self.path)
            if body is None:
                self.send_error(404, "Not Found")
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    release.set()
    httpd.shutdown()
    httpd.server_close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/file.bin"


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --------------------------------------------------------------------------------------------- checksums


def test_checksum_formats(tmp_path: Path) -> None:
    (tmp_path / "hello").write_bytes(b"hello\n")
    assert (
        file_checksum(tmp_path / "hello", "gitsha1") == "ce013625030ba8dba906f756967f9e9ca394464a"
    )  # git's id
    assert file_checksum(tmp_path / "hello") == hashlib.sha256(b"hello\n").hexdigest()
    assert parse_checksum("SHA256:".lower() + "A" * 64) == ("sha256", "a" * 64)
    for bad in ("md5:" + "a" * 32, "sha256:abc", "gitsha1:" + "z" * 40, "a" * 64):
        with pytest.raises(ValueError, match="is not of the form"):
            parse_checksum(bad)
    with pytest.raises(ChecksumError, match="expected; fix it"):
        verify_checksum(tmp_path / "hello", "sha256:" + "0" * 64, "fix it")


# --------------------------------------------------------------------------------------------- download_file


def test_good_download_is_verified_and_placed(server: Server, tmp_path: Path) -> None:
    server.routes["/f.bin"] = PAYLOAD
    dest = tmp_path / "sub" / "f.bin"
    assert download_file(f"{server.base}/f.bin", dest, SHA, timeout=5) == dest
    assert dest.read_bytes() == PAYLOAD
    assert listing(tmp_path) == ["sub", "sub/f.bin"]  # no temporary file left
    assert dest.stat().st_mode & 0o644 == 0o644


def test_gitsha1_download(server: Server, tmp_path: Path) -> None:
    server.routes["/f.bin"] = PAYLOAD
    blob = hashlib.sha1(b"blob %d\0" % len(PAYLOAD) + PAYLOAD).hexdigest()
    download_file(f"{server.base}/f.bin", tmp_path / "f.bin", f"gitsha1:{blob}", timeout=5)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_corrupt_download_leaves_nothing(server: Server, tmp_path: Path) -> None:
    server.routes["/f.bin"] = PAYLOAD[:-1] + b"\x00"
    with pytest.raises(ChecksumError, match="corrupt or changed upstream, so it was discarded"):
        download_file(f"{server.base}/f.bin", tmp_path / "new" / "deeper" / "f.bin", SHA, timeout=5)
    assert listing(tmp_path) == []  # the folders it created are gone too


def test_existing_good_file_is_kept_without_network(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    dest.write_bytes(PAYLOAD)
    server.routes["/f.bin"] = b"something else"
    download_file(f"{server.base}/f.bin", dest, SHA, timeout=5)
    assert server.hits == {} and dest.read_bytes() == PAYLOAD


def test_existing_bad_file_is_never_overwritten(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"old")
    server.routes["/f.bin"] = PAYLOAD
    with pytest.raises(ChecksumError, match="delete it and run again"):
        download_file(f"{server.base}/f.bin", dest, SHA, timeout=5)
    assert dest.read_bytes() == b"old" and server.hits == {}


@pytest.mark.parametrize(
    ("path", "reason"),
    [("/missing", "HTTP 404"), ("/short", "got 1000 of 1048576 bytes")],
)
def test_http_errors(server: Server, tmp_path: Path, path: str, reason: str) -> None:
    with pytest.raises(DownloadError, match=reason) as info:
        download_file(f"{server.base}{path}", tmp_path / "f.bin", SHA, timeout=5)
    assert reason in info.value.reason
    assert "place the file at" in str(info.value)
    assert listing(tmp_path) == []


def test_closed_port_fails_fast(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(DownloadError, match="connection refused") as info:
        download_file(closed_port_url(), tmp_path / "f.bin", SHA, timeout=5)
    assert time.monotonic() - start < 2.0
    assert info.value.reason == "connection refused"
    assert listing(tmp_path) == []


# urllib leaves the half-read response's socket to the garbage collector when a read times out (CPython
# behaviour, not ours): drop the exception and collect here so that ResourceWarning stays inside this test.
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_unresponsive_server_times_out(server: Server, tmp_path: Path) -> None:
    def attempt() -> str:
        try:
            download_file(f"{server.base}/hang", tmp_path / "f.bin", SHA, timeout=0.3)
        except DownloadError as exc:
            return f"{exc.reason}: {exc}"
        return "no error"

    start = time.monotonic()
    message = attempt()
    gc.collect()
    assert message.startswith("timed out: Could not download")
    assert time.monotonic() - start < 3.0
    assert listing(tmp_path) == []


# --------------------------------------------------------------------------------------------- load_series


def synthetic_mat(days: int = 2) -> bytes:
    """A small file in the GTC layout: variable T, uint16 [288 slots, days, 170 sensors]."""
    import io

    buffer = io.BytesIO()
    values = np.random.default_rng(1).integers(0, 1000, size=(288, days, 170)).astype(np.uint16)
    scipy.io.savemat(buffer, {"T": values})
    return buffer.getvalue()


EDGES = b"from,to,cost\n0,1,10.5\n1,2,3.0\n"


def sha256(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def patch_pems08(
    monkeypatch: pytest.MonkeyPatch, base: str, mat_checksum: str, edges_checksum: str = sha256(EDGES)
) -> None:
    """Point the PEMS08 .mat mirror at ``<base>/m`` and the edge list at ``<base>/c``; drop the other mirror."""
    spec = DATASETS["pems08"]
    mat = next(f for f in spec.files if f.fmt == "mat")
    local_mat = replace(mat, url=f"{base}/m", checksum=mat_checksum)
    edges = replace(spec.adjacency[0], url=f"{base}/c", checksum=edges_checksum)
    files = tuple(local_mat if f is mat else f for f in spec.files)
    monkeypatch.setitem(
        DATASETS, "pems08", replace(spec, files=files, downloads=(local_mat,), adjacency=(edges,))
    )


def test_load_series_downloads_verifies_and_loads(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = synthetic_mat()
    server.routes.update({"/m": body, "/c": EDGES})
    patch_pems08(monkeypatch, server.base, sha256(body))
    with pytest.warns(DataWarning, match="576 steps"):
        series = load_series("pems08", tmp_path, download=True)
    assert series.source == tmp_path / "PEMS08/pems08_288_62_170.mat"
    assert series.values.shape == (576, 170)
    assert series.adjacency is not None and series.adjacency.sum() == 2
    assert listing(tmp_path) == ["PEMS08", "PEMS08/PEMS08.csv", "PEMS08/pems08_288_62_170.mat"]
    with pytest.warns(DataWarning):  # second load: no network
        load_series("pems08", tmp_path, download=True)
    assert server.hits == {"/m": 1, "/c": 1}


def test_load_series_real_pems08_through_loopback(
    server: Server, real_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pinned sha256 of the real .mat, served over HTTP, downloaded and read: the genuine pipeline."""
    real = real_data_dir / "PEMS08"
    server.routes["/m"] = (real / "pems08_288_62_170.mat").read_bytes()
    server.routes["/c"] = (real / "PEMS08.csv").read_bytes()
    spec = DATASETS["pems08"]
    mat = next(f for f in spec.files if f.fmt == "mat")
    patch_pems08(monkeypatch, server.base, mat.checksum or "", spec.adjacency[0].checksum or "")
    series = load_series("pems08", tmp_path)  # the pinned checksums must match the real files
    assert series.values.shape == (17856, 170)
    assert float(series.values.astype(np.float64).mean()) == pytest.approx(230.68069424678473, abs=1e-9)
    assert series.adjacency is not None and int(series.adjacency.sum()) == 277


def test_corrupt_mirror_and_dead_mirror_give_one_clear_error(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = synthetic_mat()
    server.routes["/m"] = body[:-10] + b"0123456789"
    patch_pems08(monkeypatch, server.base, sha256(body))
    spec = DATASETS["pems08"]
    dead = DataFile("PEMS08/PEMS08.npz", "npz", key="data", url=closed_port_url(), checksum=sha256(b""))
    monkeypatch.setitem(
        DATASETS, "pems08", replace(spec, files=(dead, *spec.files[1:]), downloads=(spec.downloads[0], dead))
    )
    start = time.monotonic()
    with pytest.raises(MissingDataError) as info:
        load_series("pems08", tmp_path / "data", download=True)
    message = str(info.value)
    assert "checksum mismatch" in message and "connection refused" in message
    assert "PEMS08/pems08_288_62_170.mat" in message and str(tmp_path / "data" / "PEMS08") in message
    assert time.monotonic() - start < 5.0
    assert listing(tmp_path) == []


def test_no_download_names_files_folder_and_url(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError) as info:
        load_series("pems08", tmp_path, download=False)
    message = str(info.value)
    for part in (
        "PEMS08.npz",
        "PEMS08_flow.npz",
        "pems08_288_62_170.mat",
        str(tmp_path / "PEMS08"),
        "zenodo.org",
    ):
        assert part in message
    assert "data.download=true" in message and "summerdenglei/GTC" in message
    assert message.count(". ") == 0 and message.endswith(".")
