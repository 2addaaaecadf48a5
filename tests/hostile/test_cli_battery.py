"""One line for every failure: each hostile input or bad option, run as a CLI command in a
child process, ends in exit code 2 and one ``kernelatlas: error:`` line on stderr (never a
traceback), within the deadline (a hang fails) and a stated memory growth, with the previous
``--out`` and every other file left as they were.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from kernelatlas.cli import build_parser, error_line
from kernelatlas.errors import KernelAtlasError
from kernelatlas.outputs import mark_dir

from .cli import run_cli, run_exe
from .test_outputs import snapshot

#: Memory a refused command may make resident (MB; up to ~40 MB seen): headers, no model.
GROWTH_LIMIT_MB = 128


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _onnx_stride(path: Path, stride: int) -> Path:
    """A depthwise 3x3 conv (4 channels) with the given stride, as ONNX."""
    from onnx import TensorProto, helper, numpy_helper, save

    w = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=4, strides=[stride, stride])
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[w],
    )  # fmt: skip
    save(helper.make_model(graph), path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Hostile and ordinary inputs, and a previous kernelatlas output to keep intact."""
    d = tmp_path_factory.mktemp("battery")
    np.save(d / "ok.npy", np.random.default_rng(0).standard_normal((32, 3, 3), np.float32))
    os.mkfifo(d / "fifo.pt")
    (d / "zero.pt").symlink_to("/dev/zero")
    (d / "dangling.pt").symlink_to(d / "gone.pt")
    (d / "loop.pt").symlink_to(d / "loop.pt")
    (d / "folder.pt").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock.pt"))
    sock.close()
    np.save(d / "wide.npy", np.zeros((2, 1, 40_000), np.float32))  # 1 x 40000 kernels
    _onnx_stride(d / "stride.onnx", 40_000)
    torch.save({"model": _System(d / "PWNED")}, d / "proto5.pt", pickle_protocol=5)
    prev = mark_dir(d / "previous", "analysis")  # a previous output: must survive every case
    (prev / "summary.json").write_text('{"kernelatlas_version": "0.1.0"}')
    (prev / "index.html").write_text("<html>earlier result</html>")
    return {p.name: p for p in d.iterdir()} | {"dir": d}


def _analyze(*extra: str) -> Callable[[dict[str, Path]], list[str]]:
    return lambda f: ["analyze", str(f["ok.npy"]), "--out", str(f["previous"]), *extra]


def _source(name: str) -> Callable[[dict[str, Path]], list[str]]:
    return lambda f: ["analyze", str(f[name]), "--out", str(f["previous"]), "--quiet"]


# (case, command, part of the one line)
CASES = [
    ("FIFO", _source("fifo.pt"), "FIFO"),
    ("symlink to /dev/zero", _source("zero.pt"), "character device"),
    ("socket", _source("sock.pt"), "socket"),
    ("dangling symlink", _source("dangling.pt"), "dangling symlink"),
    ("symlink loop", _source("loop.pt"), "symbolic links"),
    ("folder", _source("folder.pt"), "is a directory, neither a kernel bank nor a TF.js model"),
    ("folder of weight files", lambda f: ["analyze", str(f["dir"]), "--out", str(f["dir"].parent / "o")],
     "bank folder written by `kernelatlas harvest --out`; it holds .npy/.onnx/.pt files: name "
     "them, e.g. "),
    ("missing file", lambda f: ["analyze", str(f["dir"] / "no.pt"), "--out", str(f["previous"])],
     "no such file"),
    ("1x40000 kernel", _source("wide.npy"), "kw 40000 is outside"),
    ("stride 40000", _source("stride.onnx"), "stride 40000 is outside"),
    ("protocol-5 pickle payload", _source("proto5.pt"), "calls posix.system"),
    ("--device banana", _analyze("--device", "banana"), "not a torch device"),
    ("--device cuda:99", _analyze("--device", "cuda:99"), "cuda"),
    ("--device cuda without a GPU", _analyze("--device", "cuda"), "no CUDA GPU: use --device cpu"),
    ("unknown --scheduler scheme", _analyze("--engine", "dask", "--scheduler", "foo://h:1"),
     "not a Dask scheduler address"),
    ("--scheduler garbage", _analyze("--engine", "dask", "--scheduler", "a b"),
     "not a Dask scheduler address"),
    ("--workers 100000", _analyze("--engine", "dask", "--workers", "100000"), "more than this machine"),
    ("--workers 0", _analyze("--engine", "dask", "--workers", "0"), "--workers must be >= 1"),
    ("--workers without dask", _analyze("--workers", "2"), "need --engine dask"),
    ("--ae-epochs with atlas", _analyze("--method", "atlas", "--ae-epochs", "5"), "--ae-epochs"),
    ("--ae-epochs 0", _analyze("--method", "both", "--ae-epochs", "0"), "must be >= 1"),
    ("--null-fpr 0", _analyze("--null-fpr", "0"), "must be in (0, 1), got 0.0: at 0 or less"),
    ("--null-fpr -0.5", _analyze("--null-fpr=-0.5"), "got -0.5: at 0 or less the threshold"),
    ("--null-fpr 1", _analyze("--null-fpr", "1"), "got 1.0: at 1 or more every null kernel"),
    ("--null-fpr 2", _analyze("--null-fpr", "2"), "got 2.0: at 1 or more every null kernel"),
    ("--null-fpr nan", _analyze("--null-fpr", "nan"), "got nan: not a number"),
    ("--seed -1", _analyze("--seed", "-1"), "must be >= 0"),
    ("--null init with --no-init-baseline", _analyze("--null", "init", "--no-init-baseline"),
     "cannot go with --no-init-baseline"),
    ("--batch-size 0", _analyze("--batch-size", "0"), "batch_size (--batch-size) must be >= 1, got 0"),
    ("--n-null 5", _analyze("--n-null", "5"), "n_null (--n-null) must be between 100 and 10,000,000, got 5"),
    ("--n-null 10^11", _analyze("--n-null", "99999999999"), "between 100 and 10,000,000, got 99,999,999,999"),
    ("misspelt command", lambda f: ["anlyze", str(f["ok.npy"]), "--out", str(f["previous"])],
     "invalid choice: 'anlyze' (choose from sources, harvest, formats, fetch, analyze, compare, "
     "autoencoder, bench-train, bench-init, schemes); did you mean analyze? (see `kernelatlas --help`)"),
    ("misspelt --null kind", _analyze("--null", "gausian"), "; did you mean gaussian? (see"),
    ("misspelt autoencoder action", lambda f: ["autoencoder", "trian"], "did you mean train?"),
    ("no scheme matches", lambda f: ["schemes", "strucutred"],
     "no registered scheme matches 'strucutred'; did you mean structured, structured_njet?"),
    ("no source matches", lambda f: ["sources", "mobilnet_v2"], "; did you mean mobilenet_v2?"),
    ("fetch --all and names", lambda f: ["fetch", "--all", "mobilenet_v2"], "drop the names or --all"),
    ("compare a weight file",
     lambda f: ["compare", str(f["ok.npy"]), str(f["previous"]), "--out", str(f["dir"] / "cmp")],
     "ok.npy is not a summary.json (binary data): pass a directory written by `kernelatlas analyze`"),
    ("compare one run twice",
     lambda f: ["compare", str(f["previous"]), str(f["previous"]) + "/", "--out", str(f["dir"] / "cmp")],
     "previous/ is given twice (as "),
    ("bench-train --threads -1",
     lambda f: ["bench-train", "--out", str(f["dir"] / "bench"), "--threads", "-1"],
     "--threads must be >= 0 (0: torch's default), got -1"),
    ("--baselines init with --no-init-baseline",
     _analyze("--baselines", "init", "--no-init-baseline"), "drop one of the two"),
    ("unknown --method", _analyze("--method", "magic"), "invalid choice"),
    ("unknown option", _analyze("--frobnicate"), "unrecognized arguments"),
    ("misspelt option", _analyze("--methd", "atlas"),
     "unrecognized arguments: --methd atlas; did you mean --method? (see `kernelatlas analyze --help`)"),
    ("misspelt harvest option",
     lambda f: ["harvest", str(f["ok.npy"]), "--out", str(f["dir"] / "bank"), "--fold-nb"],
     "--fold-nb; did you mean --fold-bn? (see `kernelatlas harvest --help`)"),
    ("misspelt source", lambda f: ["analyze", "efficientnet_lite", "--out", str(f["previous"])],
     "no such file or registered source; did you mean efficientnet_lite0, efficientnet_lite1, "
     "efficientnet_lite2?"),
    ("misspelt source to harvest",
     lambda f: ["harvest", "mediapipe/hand_recorp", "--out", str(f["dir"] / "bank")],
     "; did you mean mediapipe/hand_recrop?"),
    ("misspelt source to fetch", lambda f: ["fetch", "efficientnet_lite"],
     "no registered source matches 'efficientnet_lite'; did you mean efficientnet_lite0,"),
    ("misspelt pattern to fetch", lambda f: ["fetch", "mediapip/*"], "did you mean mediapipe/*?"),
    ("--null-fpr not a number", _analyze("--null-fpr", "lots"), "invalid float value"),
    ("no registry match", lambda f: ["analyze", "nosuch/*", "--out", str(f["previous"])],
     "nothing matches"),
    ("harvest into a file", lambda f: ["harvest", str(f["ok.npy"]), "--out", str(f["ok.npy"])],
     "is the input"),
    ("autoencoder without an action", lambda f: ["autoencoder"],
     "kernelatlas autoencoder needs an action: train"),
    ("autoencoder --device banana",
     lambda f: ["autoencoder", "train", str(f["ok.npy"]), "--out", str(f["dir"] / "ae"),
                "--device", "banana"], "not a torch device"),
]  # fmt: skip


@pytest.mark.parametrize("case,command,says", CASES, ids=[c[0] for c in CASES])
def test_one_line_exit_2_nothing_touched(files, case, command, says) -> None:
    if case == "--device cuda:99" and torch.cuda.device_count() > 99:  # pragma: no cover
        pytest.skip("a machine with 100 GPUs")
    if case == "--device cuda without a GPU" and torch.cuda.is_available():  # pragma: no cover
        pytest.skip("this machine has a CUDA GPU")
    before = snapshot(files["dir"])
    run = run_cli(command(files))
    line = run.one_line_error()
    assert run.code == 2, (run.code, line)
    assert says in line, line
    assert run.grown_mb < GROWTH_LIMIT_MB, f"{case}: +{run.grown_mb:.0f} MB"
    assert snapshot(files["dir"]) == before  # previous --out, inputs: byte for byte
    assert not (files["dir"] / "PWNED").exists()


def test_full_disk_is_one_line_and_the_previous_out_survives(files, tmp_path) -> None:
    """A file-size limit (``ulimit -f``, EFBIG: what a full disk looks like to a writer)."""
    import resource

    before = snapshot(files["dir"])

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, resource.RLIM_INFINITY))

    run = run_cli(["analyze", files["ok.npy"], "--out", files["previous"]], setup=small_files)
    assert "file too large" in run.one_line_error()
    assert snapshot(files["dir"]) == before  # no staging left, the previous output intact


def test_read_only_out_is_one_line(files) -> None:
    """The output's folder is not writable (EACCES); as root, the child drops to nobody."""
    base = Path(tempfile.mkdtemp(prefix="ka-ro-"))
    try:
        base.chmod(0o755)
        model = base / "m.npy"
        np.save(model, np.ones((4, 3, 3), np.float32))
        model.chmod(0o644)
        ro = base / "ro"
        ro.mkdir()
        (ro / "keep.txt").write_text("mine")
        ro.chmod(0o555)
        root = os.geteuid() == 0

        def drop() -> None:
            if root:
                os.setgid(65534)
                os.setuid(65534)

        run = run_cli(["analyze", model, "--out", ro / "report", "--quiet"], setup=drop, cwd=base)
        assert "permission denied" in run.one_line_error()
        assert sorted(p.name for p in ro.iterdir()) == ["keep.txt"]
    finally:
        for p in (base / "ro", base):
            p.chmod(stat.S_IRWXU)
        import shutil

        shutil.rmtree(base)


@pytest.mark.parametrize(
    "exc,says",
    [
        (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x"), "/mnt/ro/x: read-only"),
        (OSError(errno.ENOSPC, "No space left on device", "/d/f"), "no space left"),
        (OSError(errno.EFBIG, "File too large"), "file too large"),
        (OSError(errno.EACCES, "Permission denied", "/p"), "/p: permission denied"),
        (OSError(errno.ELOOP, "Too many levels of symbolic links", "/l"), "symbolic links"),
        (OSError("IOError: Failed to write: No space left on device"), "no space left"),  # pyarrow
        (MemoryError(), "out of memory"),
        (KernelAtlasError("bad input: do X"), "bad input: do X"),
    ],
)
def test_error_line_maps_each_failure_to_a_sentence(exc, says) -> None:
    line, code = error_line(exc)
    assert says in line and code == 2 and "\n" not in line


def test_an_unwritable_cache_names_its_variable_not_out(files, tmp_path) -> None:
    """A cache that cannot be written (a file in its place; a read-only home) said
    "/x: File exists" (EEXIST was not mapped) or "read-only file system: write somewhere
    writable (--out)", though --out was fine: now the variable that moves the cache."""
    run = run_cli(["fetch", "mobilenet_v2"], env={"KERNELATLAS_CACHE": str(files["ok.npy"])})
    assert run.one_line_error() == (
        f"kernelatlas: error: {files['ok.npy']}: is in the way (a file where a folder is "
        "needed?): kernelatlas keeps its cache there; set KERNELATLAS_CACHE to a folder you "
        "can write"
    )
    ro = OSError(errno.EROFS, "Read-only file system", str(tmp_path / "home" / ".cache"))
    calib = OSError(errno.EROFS, "Read-only file system", str(tmp_path / "c" / "3x3.json"))
    env = {"HOME": str(tmp_path / "home"), "KERNELATLAS_CACHE": "",
           "KERNELATLAS_CALIBRATIONS": str(tmp_path / "c")}  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        assert error_line(ro)[0].endswith("set KERNELATLAS_CACHE to a folder you can write")
        assert error_line(calib)[0].endswith(
            "set KERNELATLAS_CALIBRATIONS to a folder you can write"
        )
        elsewhere = OSError(errno.EROFS, "Read-only file system", str(tmp_path / "out"))
        assert error_line(elsewhere)[0].endswith("write somewhere writable (--out)")


def test_a_broken_home_gives_matplotlib_a_folder_without_its_warning(tmp_path) -> None:
    """With a home matplotlib cannot write (read-only, or a file), importing it printed a
    multi-line "mkdir -p failed ... Matplotlib created a temporary cache directory" warning
    into every analysis; the CLI now hands it a temporary folder first."""
    import subprocess

    home = tmp_path / "home"
    home.write_text("not a folder")
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME",
                                                            "XDG_CACHE_HOME")}  # fmt: skip
    env |= {"HOME": str(home), "MPLBACKEND": "Agg"}
    code = (
        "import os, kernelatlas.cli as cli; {} "
        "import matplotlib.pyplot; print(os.environ.get('MPLCONFIGDIR', ''))"
    )
    before = subprocess.run([sys.executable, "-c", code.format("")], env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "Matplotlib created a temporary" in before.stderr  # what a user saw
    after = subprocess.run([sys.executable, "-c", code.format("cli.use_writable_matplotlib_dir();")],
                           env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert after.returncode == 0 and after.stderr == "", after.stderr
    made = after.stdout.strip()
    assert Path(made).name.startswith("kernelatlas-matplotlib-") and not Path(made).exists()


def test_an_unexpected_exception_is_one_line_exit_3() -> None:
    line, code = error_line(ZeroDivisionError("division by zero"))
    assert code == 3 and "ZeroDivisionError" in line and "KERNELATLAS_DEBUG=1" in line


def test_the_real_executable_prints_one_line(files) -> None:
    for args, says in (
        (
            ["analyze", files["ok.npy"], "--out", files["previous"], "--method", "x"],
            "invalid choice",
        ),
        (["analyze", files["ok.npy"], "--out", files["dir"]], "holds the input"),
    ):
        run = run_exe(args)
        assert says in run.one_line_error(), run.lines


def test_every_option_says_what_it_does() -> None:
    """Every option and argument of every command has a help text, and the autoencoder's
    help promises only the commands it has."""
    import argparse

    def walk(parser: argparse.ArgumentParser, path: str):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
                yield path, action

    missing = [
        f"{path} {action.option_strings or action.dest}"
        for path, action in walk(build_parser(), "kernelatlas")
        if not action.help
    ]
    assert missing == []
    text = run_cli(["autoencoder", "--help"]).stdout
    assert "train" in text and "inspect" not in text and "save," not in text


def test_warnings_are_one_line_each(tmp_path) -> None:
    """A model without depthwise kernels: kernelatlas's warning is one line, no UserWarning."""
    np.save(tmp_path / "dense.npy", np.ones((4, 1, 1), np.float32))  # 1x1 only: skipped
    run = run_cli(["harvest", tmp_path / "dense.npy", "--out", tmp_path / "bank"])
    assert "UserWarning" not in run.stderr and "Traceback" not in run.stderr
    warned = [ln for ln in run.lines if ln.startswith("kernelatlas: warning:")]
    assert len(warned) == 1 and "no depthwise convolution" in warned[0], run.lines
    skipped = [ln for ln in run.lines if ln.startswith("kernelatlas: note:")]
    assert len(skipped) == 1 and "1 1x1 layer skipped" in skipped[0], run.lines  # by reason
    assert run.code == 2 and run.lines[-1].startswith("kernelatlas: error:")
    assert not (tmp_path / "bank").exists()  # nothing was written: no empty bank folder


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("FIFOs, sockets and /dev/zero are Linux cases")
