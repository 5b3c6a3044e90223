"""Verified, atomic file downloads over HTTP(S) with the standard library only, and a dataset's mirrors.

Hand-written rather than ``pooch.retrieve``: several release files are pinned only by their git blob id
(``gitsha1``, below), which pooch cannot verify (it hashes the bytes alone), and the errors here name the file to
place by hand in one sentence. A download streams into a hidden temporary file next to its destination, is
checked against a pinned checksum and only then renamed into place (``os.replace``), so an interrupted or corrupt
download never leaves a partial file under the expected name and an existing good file is never overwritten.

Checksums are written ``"<algo>:<hex digest>"``:

- ``sha256:<64 hex>``: SHA-256 of the file's bytes (preferred).
- ``gitsha1:<40 hex>``: the git blob id of the file (SHA-1 of ``b"blob <size>\\0" + bytes``), used where the only
  published fingerprint of a file is its object id in a pinned commit of a git repository.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import BinaryIO

from stm3_lightning import __version__
from stm3_lightning.data.errors import ChecksumError, DataError, DataWarning, DownloadError, MissingDataError
from stm3_lightning.data.specs import DataFile, DatasetSpec

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
DEFAULT_TIMEOUT_S = 60.0
_DIGEST_LENGTHS = {"sha256": 64, "gitsha1": 40}


def parse_checksum(checksum: str) -> tuple[str, str]:
    """Split ``"sha256:<hex>"`` / ``"gitsha1:<hex>"`` into ``(algo, lowercase hex digest)``."""
    algo, _, digest = checksum.partition(":")
    digest = digest.strip().lower()
    length = _DIGEST_LENGTHS.get(algo)
    if length is None or len(digest) != length or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(
            f"Checksum {checksum!r} is not of the form 'sha256:<64 hex digits>' or 'gitsha1:<40 hex digits>'."
        )
    return algo, digest


def file_checksum(path: str | Path, algo: str = "sha256") -> str:
    """Hex digest of a file for ``algo`` ``sha256`` or ``gitsha1`` (git blob id), read in 1 MiB chunks."""
    path = Path(path)
    if algo == "sha256":
        digest = hashlib.sha256()
    elif algo == "gitsha1":
        digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size, usedforsecurity=False)
    else:
        raise ValueError(f"Unknown checksum algorithm {algo!r}; use 'sha256' or 'gitsha1'.")
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path: str | Path, checksum: str, fix: str) -> None:
    """Raise :class:`ChecksumError` (ending with ``fix``) unless the file matches ``checksum``."""
    algo, expected = parse_checksum(checksum)
    actual = file_checksum(path, algo)
    if actual != expected:
        raise ChecksumError(f"{path} has {algo} {actual} but {expected} was expected; {fix}.")


def _describe(exc: BaseException) -> str:
    """A few words for why a connection failed (``connection refused``, ``timed out``, ...)."""
    reason = getattr(exc, "reason", None) or exc
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return "timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    return text.strip().rstrip(".")


def _stream(url: str, out: BinaryIO, dest: Path, timeout: float) -> int:
    """Copy the body of ``url`` into the open binary file ``out``; returns the byte count."""
    fix = f"check the network or place the file at {dest} by hand"
    request = urllib.request.Request(url, headers={"User-Agent": f"stm3-lightning/{__version__}"})
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            expected = response.headers.get("Content-Length")
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                received += len(chunk)
    except urllib.error.HTTPError as exc:
        exc.close()  # an HTTPError owns the error response's socket
        reason = f"HTTP {exc.code} {exc.reason}"
        raise DownloadError(f"Could not download {url} ({reason}); {fix}.", url=url, reason=reason) from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = _describe(exc)
        raise DownloadError(f"Could not download {url} ({reason}); {fix}.", url=url, reason=reason) from exc
    if expected is not None and expected.isdigit() and received != int(expected):
        reason = f"got {received} of {expected} bytes"
        raise DownloadError(f"Download of {url} was cut short ({reason}); {fix}.", url=url, reason=reason)
    return received


def download_file(url: str, dest: str | Path, checksum: str, timeout: float = DEFAULT_TIMEOUT_S) -> Path:
    """Download ``url`` to ``dest`` atomically and verify it against ``checksum``.

    If ``dest`` already exists it is verified and returned (never overwritten). ``timeout`` bounds each
    blocking network operation (connect, each read), in seconds. Raises :class:`DownloadError` when the
    transfer fails and :class:`ChecksumError` when the received bytes are not the published file; in both cases
    nothing is left behind.
    """
    dest = Path(dest)
    parse_checksum(checksum)
    if dest.exists():
        verify_checksum(dest, checksum, fix=f"delete it and run again to download a fresh copy from {url}")
        return dest
    created = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise DataError(
            f"Cannot write into {dest.parent} ({_describe(exc)}); point data_dir at a writable folder."
        ) from exc
    tmp = Path(tmp_name)
    try:
        log.info("Downloading %s to %s", url, dest)
        with os.fdopen(fd, "wb") as out:
            size = _stream(url, out, dest, timeout)
            out.flush()
            os.fsync(out.fileno())
        verify_checksum(
            tmp,
            checksum,
            fix=f"the copy served by {url} is corrupt or changed upstream, so it was discarded; "
            f"retry later or place a good copy at {dest} by hand",
        )
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
        log.info("Downloaded %s (%.1f MB, %s verified)", dest, size / 1e6, parse_checksum(checksum)[0])
    except BaseException:  # includes KeyboardInterrupt: never leave a partial file behind
        tmp.unlink(missing_ok=True)
        _remove_empty(created)
        raise
    return dest


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed download created (deepest first), leaving any that are not empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _fetch(file: DataFile, root: Path, timeout: float) -> Path:
    """Download ``file`` (which must have a pinned url and checksum) to ``root / file.path``."""
    if file.url is None or file.checksum is None:
        raise ValueError(f"{file.path} has no pinned download.")
    return download_file(file.url, root / file.path, file.checksum, timeout)


def _fetch_extras(spec: DatasetSpec, root: Path, timeout: float) -> None:
    """Best-effort download of the adjacency files (and their id lists); failures only warn."""
    for graph in spec.adjacency:
        for item in (graph.ids, graph):
            if item is None or not item.downloadable or (root / item.path).is_file():
                continue
            try:
                _fetch(item, root, timeout)
            except DataError as exc:
                warnings.warn(DataWarning(f"{spec.title} adjacency not downloaded: {exc}"), stacklevel=3)


def download_dataset(spec: DatasetSpec, data_dir: str | Path, timeout: float = DEFAULT_TIMEOUT_S) -> Path:
    """Make sure a series file of ``spec`` is present under ``data_dir``; returns its path.

    Tries the spec's pinned, checksummed mirrors in order (and then its adjacency files, best effort). Raises
    :class:`MissingDataError` naming every failed mirror and the files to place by hand when all fail.
    """
    root = Path(data_dir).expanduser()
    present = spec.find_file(root)
    if present is not None:
        return root / present.path
    if not spec.downloads:
        raise spec.missing_error(root, download=True)
    failures = []
    for mirror in spec.downloads:
        try:
            path = _fetch(mirror, root, timeout)
        except (DownloadError, ChecksumError) as exc:
            reason = exc.reason if isinstance(exc, DownloadError) else "checksum mismatch"
            failures.append(f"{mirror.url}: {reason}")
            continue
        _fetch_extras(spec, root, timeout)
        return path
    raise MissingDataError(
        f"Could not download {spec.title} ({'; '.join(failures)}); without network, place {spec.where(root)} "
        f"by hand (from {spec.source})."
    )
