"""Security (issue #9, section 5): safe loaders, refused code-running files, loopback only.

* Config files are parsed with ``yaml.safe_load`` / ``tomllib``: a YAML document
  with a ``!!python/...`` tag is refused with a clear error and runs nothing.
* Checkpoints are read with ``torch.load(weights_only=True)`` (both the envelope
  and the payload, see :mod:`hypergrad.checkpoint`): a ``checkpoint.pt`` whose
  pickle would call a function is refused with :class:`CheckpointError`, and the
  function is never called (it would create a marker file).
* The only pickles the project reads are the raw Planetoid files, through
  :class:`hypergrad.data.planetoid.RestrictedUnpickler`.
* A static scan of the shipped code (``hypergrad/``, ``recipes/``, ``benchmarks/``)
  keeps it that way: no ``torch.load`` without ``weights_only=True``, no
  ``pickle.load(s)`` or plain ``Unpickler``, no unsafe YAML loader, no
  ``allow_pickle=True``, no ``eval``/``exec``, no ``shell=True``, no
  ``0.0.0.0`` / ``bind_all``.
* A ``tune`` run binds no socket.
"""

from __future__ import annotations

import ast
import hashlib
import io
import pickle
import socket
from pathlib import Path

import pytest
import torch

from hypergrad.checkpoint import CHECKPOINT_NAME, FORMAT_VERSION, CheckpointError, load_checkpoint
from hypergrad.cli import EXIT_OK, EXIT_USAGE, main
from hypergrad.config import ConfigError, load_config_file
from hypergrad.data import DataError

ROOT = Path(__file__).resolve().parents[1]


class _WritesMarker:
    """Unpickling this calls ``open(marker, "w")``: the marker file appears iff code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# ---------------------------------------------------------------------- YAML
YAML_ATTACKS = {
    "apply os.system": '!!python/object/apply:os.system ["touch {marker}"]\n',
    "apply os.system in a value": 'inner_steps: !!python/object/apply:os.system ["touch {marker}"]\n',
    "apply builtins.open": 'method: !!python/object/apply:builtins.open ["{marker}", "w"]\n',
    "new subprocess.Popen": 'x: !!python/object/new:subprocess.Popen [["touch", "{marker}"]]\n',
    "name os.system": "x: !!python/name:os.system\n",
    "module os": "x: !!python/module:os\n",
}


@pytest.mark.parametrize("attack", list(YAML_ATTACKS))
def test_yaml_with_python_tags_is_refused_and_runs_nothing(tmp_path, attack):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(YAML_ATTACKS[attack].format(marker=marker))
    refused = r"cannot parse config file '.*evil\.yaml': could not determine a constructor"
    with pytest.raises(ConfigError, match=refused):
        load_config_file(path)
    assert not marker.exists()


def test_yaml_attack_through_the_cli(tmp_path, capsys):
    """(tests/test_bad_inputs.py runs the same refusal in a real ``python -m hypergrad`` process.)"""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(YAML_ATTACKS["apply os.system"].format(marker=marker))
    assert main(["tune", "--config", str(path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("hypergrad: error: cannot parse config file") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_the_yaml_payload_is_real_under_an_unsafe_loader(tmp_path):
    """Control: the same document *does* run code with yaml.unsafe_load, so the refusal above matters."""
    yaml = pytest.importorskip("yaml")
    marker = tmp_path / "pwned"
    yaml.unsafe_load(YAML_ATTACKS["apply builtins.open"].format(marker=marker))["method"].close()
    assert marker.exists()


# ---------------------------------------------------------------------- checkpoints
def _legacy_pickle(marker: Path) -> bytes:
    return pickle.dumps({"tuner": _WritesMarker(marker)}, protocol=2)


def _zip_checkpoint(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, "tuner": _WritesMarker(marker)}, buffer)
    return buffer.getvalue()


def _envelope_with_valid_digest(marker: Path) -> bytes:
    """A well-formed hypergrad envelope whose payload (with a correct sha256) would run code."""
    inner = _zip_checkpoint(marker)
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, "sha256": hashlib.sha256(inner).hexdigest(),
                "payload": torch.frombuffer(bytearray(inner), dtype=torch.uint8)}, buffer)
    return buffer.getvalue()


CRAFTED = {"legacy pickle": _legacy_pickle, "torch zip": _zip_checkpoint, "envelope": _envelope_with_valid_digest}


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_code_running_checkpoint_is_refused(tmp_path, kind):
    marker = tmp_path / "pwned"
    (tmp_path / CHECKPOINT_NAME).write_bytes(CRAFTED[kind](marker))
    with pytest.raises(CheckpointError, match=r"checkpoint '.*checkpoint\.pt' was refused: .*unsafe"):
        load_checkpoint(tmp_path)
    assert not marker.exists()


def test_code_running_checkpoint_through_cli_resume(tmp_path, capsys):
    marker = tmp_path / "pwned"
    (tmp_path / CHECKPOINT_NAME).write_bytes(_envelope_with_valid_digest(marker))
    assert main(["tune", "--resume", str(tmp_path), "--no-progress"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("hypergrad: error: checkpoint") and "refused" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists()


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_the_checkpoint_payloads_are_real_under_an_unsafe_load(tmp_path, kind):
    """Control: each crafted file does run code when loaded with weights_only=False."""
    marker = tmp_path / "pwned"
    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(CRAFTED[kind](marker))
    if kind == "legacy pickle":
        loaded = pickle.loads(path.read_bytes())
    elif kind == "torch zip":
        loaded = torch.load(path, weights_only=False)
    else:
        outer = torch.load(path, weights_only=False)
        loaded = torch.load(io.BytesIO(outer["payload"].numpy().tobytes()), weights_only=False)
    loaded["tuner"].close()
    assert marker.exists()


# ---------------------------------------------------------------------- Planetoid
def test_planetoid_reader_refuses_a_code_running_pickle(tmp_path):
    from hypergrad.data.planetoid import read_planetoid_pickle

    marker = tmp_path / "pwned"
    path = tmp_path / "ind.cora.graph"
    path.write_bytes(pickle.dumps(_WritesMarker(marker), protocol=2))
    with pytest.raises(DataError, match=r"ind\.cora\.graph"):
        read_planetoid_pickle(path)
    assert not marker.exists()


# ---------------------------------------------------------------------- static scan
SHIPPED = [p for d in ("hypergrad", "recipes", "benchmarks") for p in sorted((ROOT / d).rglob("*.py"))]


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def _findings(path: Path, rel: str) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            where = f"{rel}:{node.lineno}"
            if name == "torch.load" and _keyword(node, "weights_only") is not True:
                out.append(f"{where}: torch.load without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.loads", "dill.load",
                        "dill.loads", "joblib.load", "marshal.loads", "shelve.open"):
                out.append(f"{where}: {name}")
            if name.startswith("yaml.") and name.split(".")[-1] in (
                "load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"
            ):
                out.append(f"{where}: {name} (use yaml.safe_load)")
            if name in ("np.load", "numpy.load") and _keyword(node, "allow_pickle") is True:
                out.append(f"{where}: {name}(allow_pickle=True)")
            if name in ("eval", "exec"):
                out.append(f"{where}: {name}()")
            if _keyword(node, "shell") is True:
                out.append(f"{where}: shell=True")
        if isinstance(node, ast.ClassDef):
            bases = [_dotted(b) for b in node.bases]
            if "pickle.Unpickler" in bases:
                overrides = {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
                if "find_class" not in overrides or rel != "hypergrad/data/planetoid.py":
                    out.append(f"{rel}:{node.lineno}: pickle.Unpickler subclass {node.name}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if "0.0.0.0" in node.value or "bind_all" in node.value:
                out.append(f"{rel}:{node.lineno}: non-loopback address {node.value!r}")
    return out


def test_shipped_code_uses_only_safe_loaders_and_loopback():
    assert len(SHIPPED) > 10
    findings = [f for path in SHIPPED for f in _findings(path, path.relative_to(ROOT).as_posix())]
    assert findings == []


def test_the_scan_catches_what_it_should(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import pickle, torch, yaml, subprocess\n"
        "torch.load('x')\npickle.loads(b'')\nyaml.load('a: 1')\neval('1')\n"
        "subprocess.run('ls', shell=True)\nHOST = '0.0.0.0'\n"
        "class U(pickle.Unpickler):\n    pass\n"
        "torch.load('y', weights_only=True)\nyaml.safe_load('a: 1')\nmodel = None\n"
    )
    assert len(_findings(probe, "hypergrad/probe.py")) == 7


# ---------------------------------------------------------------------- sockets
def test_a_tune_run_binds_no_socket(tmp_path, capsys, monkeypatch):
    calls = []
    real_bind, real_listen = socket.socket.bind, socket.socket.listen

    def bind(self, address):
        calls.append(("bind", address))
        return real_bind(self, address)

    def listen(self, *args):
        calls.append(("listen", args))
        return real_listen(self, *args)

    monkeypatch.setattr(socket.socket, "bind", bind)
    monkeypatch.setattr(socket.socket, "listen", listen)
    argv = ["tune", "--inner-steps", "5", "--meta-steps", "1", "--hidden", "8", "--no-progress",
            "--logdir", str(tmp_path / "run")]
    assert main(argv) == EXIT_OK
    capsys.readouterr()
    assert calls == []
