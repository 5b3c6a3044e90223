"""Security: nothing in a data, config or checkpoint file can run code; every untrusted load is a safe one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from stm3_lightning.cli import main
from stm3_lightning.config.compose import compose
from stm3_lightning.config.safety import SAFE_RESOLVERS, registered_resolvers

SRC = Path(__file__).resolve().parents[1] / "src" / "stm3_lightning"
RESTRICTED_UNPICKLER_MODULE = (
    "data/graph_formats.py"  # the DCRNN adjacency pickle: containers and arrays only
)


def _keyword(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<expression>"
    return None


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def unsafe_loads(path: Path) -> list[str]:
    """Calls in ``path`` that could execute code from a file: unpickling loads, eval/exec, unsafe YAML, resolvers."""
    rel = path.relative_to(SRC).as_posix()
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        where = f"{rel}:{node.lineno} {name}"
        if name in ("np.load", "numpy.load") and _keyword(node, "allow_pickle") is not False:
            found.append(f"{where} without allow_pickle=False")
        elif name == "torch.load" and _keyword(node, "weights_only") is not True:
            found.append(f"{where} without weights_only=True")
        elif name.split(".")[-1] in ("fit", "test", "validate", "predict", "load_from_checkpoint") and any(
            kw.arg == "ckpt_path" or name.endswith("load_from_checkpoint") for kw in node.keywords
        ):
            if _keyword(node, "weights_only") is not True:
                found.append(f"{where} loads a checkpoint without weights_only=True")
        elif name in ("pickle.load", "pickle.loads", "dill.load", "joblib.load", "cloudpickle.load"):
            found.append(where)
        elif name in ("eval", "exec", "__import__") or name.endswith(
            ("yaml.load", "unsafe_load", "full_load")
        ):
            found.append(where)
        elif name.endswith(("register_new_resolver", "register_resolver")):
            found.append(f"{where}: OmegaConf resolvers can run code from config files")
    if rel != RESTRICTED_UNPICKLER_MODULE and "Unpickler" in path.read_text():
        found.append(f"{rel}: defines or uses an Unpickler")
    return found


def test_source_loads_untrusted_files_safely() -> None:
    problems = [p for path in sorted(SRC.rglob("*.py")) for p in unsafe_loads(path)]
    assert problems == []


def test_the_audit_catches_unsafe_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = SRC / "_audit_probe.py"  # parsed only, never imported
    source = (
        "np.load(p)\nnp.load(p, allow_pickle=True)\ntorch.load(p)\ntrainer.fit(m, ckpt_path=c)\n"
        "pickle.loads(b)\neval(s)\nyaml.load(s)\nOmegaConf.register_new_resolver('x', f)\n"
        "np.load(p, allow_pickle=False)\ntorch.load(p, weights_only=True)\ntrainer.test(m, ckpt_path=c, weights_only=True)\n"
    )
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source)
    assert len(unsafe_loads(bad)) == 8


def test_only_safe_omegaconf_resolvers_are_registered() -> None:
    compose(["model=linear"])
    assert registered_resolvers() <= SAFE_RESOLVERS and "oc.env" in registered_resolvers()
    assert "oc.coerce" not in registered_resolvers()


@pytest.mark.parametrize(
    "payload",
    [
        "${{eval:\"__import__('pathlib').Path('{marker}').touch()\"}}",
        "${{oc.coerce:pwn_module.X,1}}",  # omegaconf's oc.coerce would import pwn_module.py
    ],
)
def test_interpolation_cannot_run_code(
    tmp_path: Path, payload: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "pwn_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["summary", "model=linear", f"data.name={payload.format(marker=marker)}"]) == 2
    assert "Unsupported interpolation type" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize("where", ["experiment", "resume"])
def test_yaml_python_tags_cannot_run_code(tmp_path: Path, where: str, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "pwned"
    evil = (
        f"seed: !!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path ['{marker}']]\n"
    )
    if where == "experiment":
        (tmp_path / "evil.yaml").write_text(evil)
        argv = ["summary", "model=linear", f"experiment={tmp_path / 'evil.yaml'}"]
    else:
        run = tmp_path / "run"
        run.mkdir()
        saved = OmegaConf.to_yaml(compose(["model=linear", f"paths.output_dir={run}"]))
        (run / "config.yaml").write_text(saved.replace("seed: 12\n", evil))
        argv = ["train", f"resume={run}"]
    assert main(argv) == 2
    assert "error: Cannot parse" in capsys.readouterr().err
    assert not marker.exists()


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("command", ["train", "eval"])
def test_checkpoint_with_pickled_code_is_refused(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "epoch": _Exploit(marker)}, ckpt)
    args = [
        "model=linear",
        "data.synthetic.num_nodes=4",
        "logger.wandb.mode=disabled",
        "callbacks.progress_bar=none",
    ]
    argv = [command, *args, f"paths.output_dir={tmp_path / 'out'}"]
    argv.append(f"ckpt_path={ckpt}" if command == "train" else f"ckpt={ckpt}")
    assert main(argv) == 2
    assert "holds Python objects that only a full unpickler could load" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out").exists()
