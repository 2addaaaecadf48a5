"""Harvest many (hostile) files in a child process: a segfault or a hang cannot take the
test runner down, and it is reported with the file that caused it.

``run_batch(files, fmt)`` returns one :class:`Outcome` per file. In the child each file is
announced before it is read, so when the child dies the parent knows which file killed it,
records a ``crash`` (or ``hang``) and starts a new child for the files after it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Outcome", "run_batch", "classify_one"]


@dataclass(frozen=True)
class Outcome:
    """What harvesting one file did.

    kind : ``ok`` (a result), ``error`` (a KernelAtlasError), ``bug`` (any other exception),
        ``crash`` (the process died), ``hang`` (over the per-file time limit).
    detail : the error type and message, the result digest, or the signal.
    """

    file: str
    kind: str
    detail: str
    one_line: bool = True


def classify_one(path: str, fmt: str | None = None) -> dict:
    """Harvest ``path`` in this process and describe the outcome (JSON-able)."""
    import warnings

    from kernelatlas.errors import KernelAtlasError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt is None:
                from kernelatlas.harvest import harvest
                from kernelatlas.harvest.api import detect_format

                if Path(path).is_file() and _is_keras(path, detect_format):
                    # the unguarded libhdf5 read (the reader forks around it); the parent
                    # sees a crash here and checks the real reader contains it
                    from kernelatlas.harvest.keras_h5 import _read_keras

                    layers = _read_keras(Path(path)).layers
                else:
                    layers = harvest(path).layers
            else:
                from kernelatlas.harvest.formats import get_format

                layers = get_format(fmt).read(Path(path)).layers
        return {"kind": "ok", "detail": digest(layers)}
    except KernelAtlasError as exc:
        msg = str(exc)
        return {
            "kind": "error",
            "detail": f"{type(exc).__name__}: {msg}",
            "one_line": bool(msg.strip()) and "\n" not in msg,
        }
    except Exception as exc:  # noqa: BLE001 - the point is to report every other exception
        import traceback

        tb = traceback.format_exc(limit=-3).strip().splitlines()
        return {"kind": "bug", "detail": f"{type(exc).__name__}: {exc!s:.300} | {' / '.join(tb)}"}


def _is_keras(path: str, detect_format) -> bool:
    from kernelatlas.errors import KernelAtlasError

    try:
        return detect_format(path) == "keras"
    except KernelAtlasError:
        return False


def digest(layers: list) -> str:
    """Names, shapes and a hash of the kernels: equal digests = identical harvests."""
    import numpy as np

    h = hashlib.sha1()
    for lk in layers:
        w = lk.weights
        if not (isinstance(w, np.ndarray) and w.dtype == np.float32 and w.ndim == 3):
            return f"MALFORMED {lk.layer}: {type(w).__name__} {getattr(w, 'shape', '')}"
        h.update(lk.layer.encode(errors="replace"))
        h.update(np.asarray(w.shape, np.int64).tobytes())
        h.update(np.ascontiguousarray(w).tobytes())
    return f"{len(layers)} layers {h.hexdigest()[:16]}"


def run_batch(
    files: list[Path], fmt: str | None = None, *, per_file_s: float = 20.0, total_s: float = 300
) -> list[Outcome]:
    """Harvest each file in child processes (see the module docstring)."""
    todo = [str(f) for f in files]
    out: dict[str, Outcome] = {}
    env = {**os.environ, "PYTHONFAULTHANDLER": "0"}
    deadline = time.monotonic() + total_s
    while todo:
        proc = subprocess.Popen(
            [sys.executable, "-m", __name__.rpartition(".")[0] + ".worker", fmt or "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=str(Path(__file__).resolve().parents[2]),
            env={
                **env,
                "PYTHONPATH": os.pathsep.join(
                    [
                        str(Path(__file__).resolve().parents[1]),
                        *filter(None, [env.get("PYTHONPATH")]),
                    ]
                ),
            },  # fmt: skip
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("\n".join(todo) + "\n")
        proc.stdin.close()
        current = None
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        started = time.monotonic()
        hung = False
        while True:
            left = min(per_file_s - (time.monotonic() - started), deadline - time.monotonic())
            if left <= 0 or not sel.select(timeout=left):
                hung = True
                proc.kill()
                break
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("START "):
                current = line[6:].rstrip("\n")
                started = time.monotonic()
                continue
            rec = json.loads(line)
            out[rec["file"]] = Outcome(
                rec["file"], rec["kind"], rec["detail"], rec.get("one_line", True)
            )
            current = None
        rc = proc.wait()
        sel.close()
        if current is not None:
            kind = "hang" if hung else "crash"
            out[current] = Outcome(current, kind, f"returncode {rc}")
        elif rc != 0 and not hung:
            raise RuntimeError(f"worker failed before reading any file (returncode {rc})")
        todo = [f for f in todo if f not in out]
        if time.monotonic() > deadline:
            for f in todo:
                out[f] = Outcome(f, "hang", "batch deadline")
            break
    return [out[str(f)] for f in files]


def _main() -> None:
    fmt = None if sys.argv[1] == "-" else sys.argv[1]
    import kernelatlas.harvest  # noqa: F401  (import before the first file: no false hangs)

    # read every path first: the parent writes them all before it reads a line of output, so
    # answering while paths are still coming deadlocks once both pipes are full (64 KiB)
    for line in sys.stdin.read().splitlines():
        path = line.rstrip("\n")
        if not path:
            continue
        print("START " + path, flush=True)
        rec = classify_one(path, fmt)
        rec["file"] = path
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    _main()
