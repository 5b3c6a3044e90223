"""The kernel loader (compile, cache, load), the constants shared with the C++ and the shipped sources."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest

from stm3_lightning.models.stm3.kernels import backends, build
from stm3_lightning.models.stm3.kernels.build import CSRC, CpuKernel, load_cpu_kernel
from stm3_lightning.models.stm3.kernels.constants import ATTENTION_MAX_SIZE, DEFINES, LANES

REPO = Path(__file__).resolve().parents[4]
KERNELS = ["selective_scan", "causal_conv1d", "scale_attention"]
HAS_COMPILER = bool(shutil.which("c++") or shutil.which("g++"))
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler on this machine")


def _probe(tmp_path: Path, name: str, body: str) -> Path:
    source = tmp_path / f"{name}.cpp"
    source.write_text(f'#include "prelude.h"\n{body}\n')
    return source


def test_loader_without_compiler(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A missing compiler makes the loader return None with one warning (callers fall back)."""
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("STM3_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(backends, "_warned", set())
    source = _probe(tmp_path, "probe_no_compiler", "// missing compiler")
    with pytest.warns(UserWarning, match=f"Compiling the {source.stem} CPU kernel failed"):
        assert load_cpu_kernel(source) is None


def test_loader_disabled(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STM3_CPU_KERNELS", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_cpu_kernel(_probe(tmp_path, "probe_disabled", "// off")) is None


@needs_compiler
def test_loader_compiles_caches_and_passes_the_constants(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The library sees kernels/constants.py's values (the one definition) and lands in the cache once."""
    monkeypatch.setenv("STM3_KERNEL_CACHE", str(tmp_path / "cache"))
    source = _probe(
        tmp_path,
        "probe_constants",
        'extern "C" int stm3_lanes() { return W; }\n'
        'extern "C" int stm3_attention_max() { return STM3_ATTENTION_MAX_SIZE; }',
    )
    lib = load_cpu_kernel(source)
    assert lib is not None
    assert (lib.stm3_lanes(), lib.stm3_attention_max()) == (LANES, ATTENTION_MAX_SIZE)
    assert len(list((tmp_path / "cache").glob(f"{source.stem}-*.so"))) == 1


@needs_compiler
def test_prelude_refuses_to_compile_without_the_constants(tmp_path: Path) -> None:
    compiler = shutil.which("c++") or shutil.which("g++")
    cmd = [
        compiler,
        "-fsyntax-only",
        "-std=c++17",
        f"-I{CSRC}",
        str(_probe(tmp_path, "probe_no_defines", "// no -D")),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode != 0 and "STM3_LANES" in done.stderr


def test_no_source_defines_a_shared_constant() -> None:
    """Sizes shared with Python come only from constants.DEFINES: no numeric #define in any C++ source."""
    sources = sorted(CSRC.glob("*.cpp")) + sorted(CSRC.glob("*.h"))
    assert {p.stem for p in CSRC.glob("*.cpp")} == set(KERNELS)
    for path in sources:
        numeric = re.findall(r"^\s*#\s*define\s+(\w+)\s+\(?-?\d", path.read_text(), flags=re.MULTILINE)
        assert not numeric, f"{path.name} defines {numeric} itself; put shared sizes in kernels/constants.py"
    prelude = (CSRC / "prelude.h").read_text()
    assert all(f"defined({name})" in prelude for name in DEFINES), "prelude.h must refuse builds without them"


@needs_compiler
@pytest.mark.parametrize("name", KERNELS)
def test_every_kernel_builds_here(name: str) -> None:
    """With a compiler, every shipped kernel compiles and loads (so parity tests never skip silently)."""
    assert CpuKernel(name, {}).available()


def test_kernel_with_missing_library_reports_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build, "load_cpu_kernel", lambda source: None)
    kernel = CpuKernel("selective_scan", {})
    assert not kernel.available()
    with pytest.raises(AssertionError, match="selective_scan kernel is unavailable"):
        kernel.function("stm3_scan_fwd")


@pytest.mark.slow
def test_wheel_ships_the_sources(tmp_path: Path) -> None:
    """A wheel built from pyproject.toml holds every file of csrc/ (a wheel install can compile the kernels)."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project / name)
    shutil.copytree(REPO / "src", project / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(tmp_path),
    ]
    subprocess.run([*cmd, str(project)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    csrc = "stm3_lightning/models/stm3/kernels/csrc/"
    assert {csrc + p.name for p in CSRC.iterdir() if p.is_file()} <= names
