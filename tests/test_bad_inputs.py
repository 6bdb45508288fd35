"""Bad inputs: CLI flags, config files (TOML, YAML) and data files (issue #9, section 3).

One table, :data:`CASES`: each entry builds its input under ``tmp_path``, runs
``hypergrad.cli.main`` in-process, and asserts

* a non-zero exit (2: invalid input),
* the error message (a regex that names the key, flag or file, and the allowed values),
* one ``error:`` line last on stderr (argparse prints its usage above it), and no traceback.

Two cases also run as real ``python -m hypergrad`` processes. The MNIST cases
copy the real IDX files into a temporary folder and damage the copy.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from hypergrad.checkpoint import save_checkpoint
from hypergrad.cli import EXIT_USAGE, main
from hypergrad.data import default_data_root

ROOT = Path(__file__).resolve().parents[1]
MNIST = default_data_root("mnist")
MNIST_GZ = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz"]
TINY = ["--inner-steps", "5", "--meta-steps", "1", "--hidden", "8", "--no-progress"]


@dataclass(frozen=True)
class Case:
    """``build(tmp_path, mnist_copy) -> argv``; ``message``: regex searched in the error line."""

    id: str
    build: Callable[[Path, Path], list[str]]
    message: str
    argparse: bool = False  # argparse errors print the usage before the error line
    needs_mnist: bool = False


def flags(*argv: str, message: str) -> Case:
    return Case("flag " + " ".join(argv), lambda tmp, mnist: list(argv), message, argparse=True)


def usage(id: str, build: Callable[[Path, Path], list[str]], message: str) -> Case:
    return Case(id, build, message)


def config(suffix: str, text: str | bytes, message: str) -> Case:
    def build(tmp: Path, mnist: Path) -> list[str]:
        path = tmp / f"c{suffix}"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return ["tune", "--config", str(path)]

    shown = text if isinstance(text, str) else repr(text)
    return Case(f"{suffix[1:]} {shown!r}", build, message)


def data(id: str, damage: Callable[[Path], None], message: str, *extra: str) -> Case:
    """An MNIST folder of links to the pristine copies, with ``damage(folder)`` applied."""

    def build(tmp: Path, mnist: Path) -> list[str]:
        folder = tmp / "mnist"
        folder.mkdir()
        for name in MNIST_GZ:
            (folder / name).symlink_to(mnist / name)
        damage(folder)
        return ["tune", "--dataset", "mnist", "--data-root", str(folder), *extra, *TINY]

    return Case("mnist " + id, build, message, needs_mnist=True)


def _replace(folder: Path, name: str, content: bytes) -> None:
    (folder / name).unlink(missing_ok=True)
    (folder / name).write_bytes(content)


def _plain_labels(folder: Path) -> bytes:
    """Swap the gzipped training labels for their uncompressed IDX file (no checksum applies); return its bytes."""
    raw = gzip.decompress((folder / "train-labels-idx1-ubyte.gz").read_bytes())
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    return raw


def _truncate_gz(folder: Path) -> None:
    raw = (folder / "train-images-idx3-ubyte.gz").read_bytes()
    _replace(folder, "train-images-idx3-ubyte.gz", raw[: len(raw) // 2])


def _flip_gz(folder: Path) -> None:
    raw = bytearray((folder / "train-labels-idx1-ubyte.gz").read_bytes())
    raw[len(raw) // 2] ^= 0x01
    _replace(folder, "train-labels-idx1-ubyte.gz", bytes(raw))


def _truncated_plain(folder: Path) -> None:
    raw = _plain_labels(folder)
    _replace(folder, "train-labels-idx1-ubyte", raw[:-100])


def _bad_magic(folder: Path) -> None:
    raw = _plain_labels(folder)
    _replace(folder, "train-labels-idx1-ubyte", b"\x00\x00\x0d\x01" + raw[4:])


def _short_header(folder: Path) -> None:
    (folder / "train-images-idx3-ubyte.gz").unlink()
    _replace(folder, "train-images-idx3-ubyte", b"\x00\x00\x08\x03\x00\x00\xea\x60\x00\x00")


def _count_mismatch(folder: Path) -> None:
    raw = _plain_labels(folder)
    _replace(folder, "train-labels-idx1-ubyte", raw[:4] + (1000).to_bytes(4, "big") + raw[8 : 8 + 1000])


def _missing(folder: Path) -> None:
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()


def _data_root_is_a_file(tmp: Path, mnist: Path) -> list[str]:
    (tmp / "afile").write_text("x")
    return ["tune", "--dataset", "mnist", "--data-root", str(tmp / "afile"), *TINY]


def _empty_data_root(tmp: Path, mnist: Path) -> list[str]:
    (tmp / "empty").mkdir()
    return ["tune", "--dataset", "mnist", "--data-root", str(tmp / "empty"), *TINY]


def _resume_text_file(tmp: Path, mnist: Path) -> list[str]:
    (tmp / "notes.txt").write_text("not a checkpoint\n")
    return ["tune", "--resume", str(tmp / "notes.txt")]


def _logdir_with_checkpoint(tmp: Path, mnist: Path) -> list[str]:
    save_checkpoint(tmp / "run", {"run": {}, "tuner": {}})
    return ["tune", "--logdir", str(tmp / "run"), *TINY]


def _json_config(tmp: Path, mnist: Path) -> list[str]:
    (tmp / "c.json").write_text("{}")
    return ["tune", "--config", str(tmp / "c.json")]


def _logdir_is_a_file(tmp: Path, mnist: Path) -> list[str]:
    (tmp / "afile").write_text("x")
    return ["tune", "--logdir", str(tmp / "afile"), *TINY]


def _out_is_a_directory(tmp: Path, mnist: Path) -> list[str]:
    return ["tune", "--out", str(tmp), *TINY]


CHOICE = "bptt, tbptt, rbp, cg, neumann, gmres, forward"
YAML_ATTACK = '!!python/object/apply:os.system ["echo unsafe"]\n'
YAML_ATTACK_ID = f"yml {YAML_ATTACK!r}"
CASES: list[Case | pytest.param] = [
    # ------------------------------------------------------------ CLI flags
    flags("tune", "--method", "sgd", message=r"argument --method: invalid choice: 'sgd' \(choose from .*neumann"),
    flags("tune", "--inner-steps", "abc", message=r"argument --inner-steps: expected an integer, got 'abc'"),
    flags("tune", "--inner-steps", "0", message=r"argument --inner-steps: must be >= 1, got 0"),
    flags("tune", "--batch-size", "1.5", message=r"argument --batch-size: expected an integer, got '1.5'"),
    flags("tune", "--meta-lr", "nan", message=r"argument --meta-lr: must be a positive finite number, got nan"),
    flags("tune", "--meta-lr=-0.1", message=r"argument --meta-lr: must be a positive finite number, got -0.1"),
    flags("tune", "--clip", "inf", message=r"argument --clip: must be a positive finite number, got inf"),
    flags("tune", "--seed", "-1", message=r"argument --seed: must be >= 0, got -1"),
    flags("--threads", "0", "tune", message=r"argument --threads: must be >= 1, got 0"),
    flags("tune", "--per", "neuron", message=r"argument --per: invalid choice: 'neuron' \(choose from .*tensor"),
    flags("tune", "--on-divergence", "ignore", message=r"argument --on-divergence: invalid choice: 'ignore'"),
    flags("tune", "--dataset", "cifar10", message=r"argument --dataset: invalid choice: 'cifar10'"),
    flags("tune", "--frobnicate", message=r"unrecognized arguments: --frobnicate"),
    flags(message=r"the following arguments are required: command"),
    usage("flag --hidden 50,x", lambda t, m: ["tune", "--hidden", "50,x"],
          r"hidden must be comma-separated integers such as 50,50,50, got '50,x'"),
    usage("flag --hidden 0", lambda t, m: ["tune", "--hidden", "0"],
          r"hidden must be comma-separated integers >= 1, got '0'"),
    usage("flag tbptt truncate > inner steps",
          lambda t, m: ["tune", "--method", "tbptt", "--inner-steps", "5", "--truncate", "6"],
          r"truncate \(6\) must not exceed inner_steps \(5\) for tbptt"),
    usage("flag check-grad --methods", lambda t, m: ["check-grad", "--methods", "bptt,magic"],
          r"unknown method 'magic' in --methods; expected some of " + CHOICE),
    usage("flag --resume missing", lambda t, m: ["tune", "--resume", str(t / "nowhere")],
          r"no checkpoint at '.*nowhere'"),
    usage("flag --resume text file", _resume_text_file, r"checkpoint '.*notes\.txt' was refused"),
    usage("flag --logdir holds a checkpoint", _logdir_with_checkpoint,
          r"'.*run' already holds a checkpoint; continue it with --resume"),
    usage("flag --config missing", lambda t, m: ["tune", "--config", str(t / "missing.toml")],
          r"cannot read config file '.*missing\.toml'"),
    usage("flag --config .json", _json_config, r"config file '.*c\.json' must end in \.toml, \.yaml or \.yml"),
    usage("flag --logdir is a file", _logdir_is_a_file, r"hypergrad: error: .*afile"),
    usage("flag --out is a directory", _out_is_a_directory, r"hypergrad: error: .*--out"),
    # ------------------------------------------------------------ TOML
    config(".toml", 'methd = "rbp"\n', r"unknown key 'methd' in '?.*c\.toml'?; allowed keys: .*method, "),
    config(".toml", 'inner_steps = "ten"\n', r"config key 'inner_steps' must be an integer, got 'ten'"),
    config(".toml", "inner_steps = 0\n", r"inner_steps must be an integer >= 1, got 0"),
    config(".toml", "meta_lr = -1\n", r"meta_lr must be a positive finite number, got -1"),
    config(".toml", "meta_lr = nan\n", r"config key 'meta_lr' must be a finite number, got nan"),
    config(".toml", 'method = "sgd"\n', rf"method='sgd' is not allowed; expected one of {CHOICE}"),
    config(".toml", "method = 5\n", rf"config key 'method' must be one of {CHOICE}, got 5"),
    config(".toml", "init_momentum = 1.5\n", r"init_momentum must lie in \(0, 1\), got 1\.5"),
    config(".toml", 'normalize = "yes"\n', r"config key 'normalize' must be true or false, got 'yes'"),
    config(".toml", "hidden = [50, 0]\n", r"hidden must be a non-empty list of integers >= 1"),
    config(".toml", "seed = true\n", r"config key 'seed' must be an integer, got True"),
    config(".toml", 'method = "rbp"\nmethod = "cg"\n', r"cannot parse config file '.*c\.toml': .*"),
    config(".toml", '[tune]\nmethod = "rbp"\n', r"unknown key 'tune' in .*; allowed keys: "),
    config(".toml", 'dataset = "cifar10"\n', r"dataset='cifar10' is not allowed; expected one of digits, mnist"),
    config(".toml", "clip = 0\n", r"clip must be a positive finite number, got 0"),
    config(".toml", 'on_divergence = "ignore"\n',
           r"on_divergence='ignore' is not allowed; expected one of backoff, skip, clip, fallback, stop"),
    config(".toml", b"\xff\xfe method", r"cannot read config file '.*c\.toml'"),
    # ------------------------------------------------------------ YAML
    config(".yaml", "method: [rbp]\n", rf"config key 'method' must be one of {CHOICE}, got \['rbp'\]"),
    config(".yaml", "truncate: -3\n", r"truncate must be an integer >= 1, got -3"),
    config(".yaml", "per: null\n", r"config key 'per' must not be null; expected one of tensor"),
    config(".yaml", "- method\n- rbp\n", r"config file '.*c\.yaml' must hold a table of key = value pairs"),
    config(".yaml", 'method: "rbp\n', r"cannot parse config file '.*c\.yaml'"),
    config(".yaml", "meta_lr: .inf\n", r"config key 'meta_lr' must be a finite number, got inf"),
    config(".yaml", "hyper_batches: 2.5\n", r"config key 'hyper_batches' must be an integer, got 2\.5"),
    config(".yaml", "inner-steps: 10\nbogus-key: 1\n", r"unknown key 'bogus-key' in .*c\.yaml"),
    config(".yml", YAML_ATTACK,
           r"cannot parse config file '.*c\.yml': could not determine a constructor for the tag .*os\.system"),
    # ------------------------------------------------------------ data files (MNIST)
    data("train images truncated (.gz)", _truncate_gz,
         r"checksum mismatch for '.*/mnist/train-images-idx3-ubyte\.gz'"),
    data("train labels one byte flipped (.gz)", _flip_gz,
         r"checksum mismatch for '.*/mnist/train-labels-idx1-ubyte\.gz'"),
    data("train labels truncated (IDX)", _truncated_plain,
         r"'.*/mnist/train-labels-idx1-ubyte' is truncated or corrupt: 59900 data bytes, header says 60000"),
    data("train labels bad magic (IDX)", _bad_magic,
         r"'.*/mnist/train-labels-idx1-ubyte' is not an IDX file of unsigned bytes \(bad magic number\)"),
    data("train images header cut (IDX)", _short_header,
         r"'.*/mnist/train-images-idx3-ubyte' is truncated \(incomplete header\)"),
    data("train labels count mismatch", _count_mismatch, r"MNIST train images and labels differ in count"),
    data("test labels missing", _missing, r"MNIST file t10k-labels-idx1-ubyte\(\.gz\) not found under '.*mnist'"),
    data("asks for more images than exist", lambda f: None,
         r"asked for 55000 \+ 10000 training/validation images, only 60000 exist", "--n-train", "55000"),
    usage("mnist data root is a file", _data_root_is_a_file, r"MNIST data root '.*afile' is not a directory"),
    usage("mnist data root is empty", _empty_data_root,
          r"MNIST file train-images-idx3-ubyte\(\.gz\) not found under '.*empty'"),
]


def _case_id(case) -> str:
    case = case.values[0] if hasattr(case, "values") else case
    return re.sub(r"\s+", " ", case.id)[:60]


def _case(case) -> Case:
    return case.values[0] if hasattr(case, "values") else case


@pytest.fixture(scope="module")
def mnist_copy(tmp_path_factory) -> Path:
    """A private copy of the real MNIST files (tests damage links to it, never the originals)."""
    if not all((MNIST / name).is_file() for name in MNIST_GZ):
        pytest.skip(f"MNIST files not found under {MNIST}")
    folder = tmp_path_factory.mktemp("mnist_copy")
    for name in MNIST_GZ:
        shutil.copyfile(MNIST / name, folder / name)
    return folder


def test_the_table_has_at_least_30_bad_inputs_of_every_kind():
    ids = [_case(c).id for c in CASES]
    assert len(ids) >= 30 and len(set(ids)) == len(ids)
    kinds = {i.split()[0] for i in ids}
    assert {"flag", "toml", "yaml", "mnist"} <= kinds


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_bad_input_is_one_clear_error(case, tmp_path, capsys, request):
    case = _case(case)
    mnist = request.getfixturevalue("mnist_copy") if case.needs_mnist else tmp_path
    argv = case.build(tmp_path, mnist)
    code, err = _run(argv, capsys)
    assert code == EXIT_USAGE, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    assert re.match(r"hypergrad( [\w-]+)?: error: ", lines[-1]), lines[-1]
    assert re.search(case.message, lines[-1]), lines[-1]
    if not case.argparse:
        assert len(lines) == 1, err  # exactly one line


def test_real_processes_report_bad_inputs_without_a_traceback(tmp_path, mnist_copy):
    """Two of the cases through ``python -m hypergrad`` (run in parallel): the YAML attack and a data file."""
    chosen = [c for c in map(_case, CASES) if c.id in (
        YAML_ATTACK_ID, "mnist train images truncated (.gz)"
    )]
    assert len(chosen) == 2
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = []
    for i, case in enumerate(chosen):
        folder = tmp_path / str(i)
        folder.mkdir()
        argv = case.build(folder, mnist_copy)
        procs.append((case, subprocess.Popen([sys.executable, "-m", "hypergrad", *argv], cwd=ROOT, env=env,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    for case, proc in procs:
        out, err = proc.communicate(timeout=120)
        assert "unsafe" not in out  # the YAML's os.system("echo unsafe") never ran
        assert proc.returncode == EXIT_USAGE, err
        assert "Traceback" not in err
        assert re.search(case.message, err.strip().splitlines()[-1]), err
