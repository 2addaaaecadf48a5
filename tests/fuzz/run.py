"""Coverage-guided fuzzing (atheris) of every binary reader, for a fixed time.

``python -m tests.fuzz.run --seconds 60`` (``make fuzz``) splits the time between the
targets (ONNX, TFLite, Keras .h5, safetensors, torch checkpoint and pickled model,
TorchScript, .npy/.npz). Each target
runs in its own child process, seeded with the real small files of
``tests/hostile/makers.py`` (the tiny DS-CNN exported to every format) plus the shipped
files of the regression corpus. The property checked on every input: the reader returns
well-formed kernels or raises a KernelAtlasError with a one-line message; anything else
(another exception, a crash, a hang, an out-of-memory) is a finding. A finding's input is
saved under ``tests/hostile/corpus/`` (if small) and then read by
``tests/hostile/test_mutations.py::test_regression_corpus`` on every ``make test``.

Keras .h5 is fuzzed through the reader's in-process path (``_read_keras``) so that libhdf5
crashes are seen; the public reader forks around it (a crash there is a FormatError).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "hostile" / "corpus"
MAX_SAVED = 256 * 1024  # findings larger than this are reported, not committed

#: target -> (seed keys of makers.SEED_NAMES, suffix of the temp file)
TARGETS: dict[str, tuple[tuple[str, ...], str]] = {
    "onnx": (("onnx",), ".onnx"),
    "tflite": (("tflite",), ".tflite"),
    "keras": (("keras", "keras3", "keras3_h5", "keras3_real"), ".h5"),
    "tfjs": (("tfjs", "tfjs_layers"), ".json"),  # manifests fuzzed; their shards beside
    "safetensors": (("safetensors",), ".safetensors"),
    "checkpoint": (("checkpoint", "checkpoint_legacy", "pickled_model"), ".pt"),
    "torchscript": (("torchscript",), ".pt"),
    "numpy": (("numpy", "npz"), ".npy"),
    "openvino": (("openvino",), ".xml"),  # the XML fuzzed; its .bin beside, as input.bin
    "ncnn": (("ncnn",), ".param"),  # the .param fuzzed; its .bin beside, as input.bin
    "tf_graphdef": (("tf_graphdef",), ".pb"),
}
#: targets whose fuzzed file reads the ``.bin`` of the same name beside it
_BIN_BESIDE = ("openvino", "ncnn")


def _write_seeds(folder: Path) -> dict[str, Path]:
    sys.path.insert(0, str(ROOT))
    from tests.conftest import build_tiny_dscnn
    from tests.hostile.makers import write_seeds

    return write_seeds(build_tiny_dscnn(), folder)


def _read(target: str, path: Path) -> list:
    from kernelatlas.harvest.formats import get_format

    if target == "keras":
        from kernelatlas.harvest.keras_h5 import _read_keras

        return _read_keras(path).layers
    return get_format(target).read(path).layers


def _child(target: str, seconds: float, seed_dir: str, findings: str) -> None:
    """Runs in the child: atheris over one reader."""
    import atheris

    # the third-party parsers load uninstrumented (fast); kernelatlas's readers are traced
    import h5py  # noqa: F401
    import numpy  # noqa: F401
    import onnx  # noqa: F401
    import safetensors  # noqa: F401
    import tflite  # noqa: F401
    import torch  # noqa: F401

    with atheris.instrument_imports(include=["kernelatlas"]):
        import kernelatlas.harvest.api  # noqa: F401
        import kernelatlas.harvest.arrays  # noqa: F401
        import kernelatlas.harvest.checkpoint  # noqa: F401
        import kernelatlas.harvest.keras_h5  # noqa: F401
        import kernelatlas.harvest.ncnn_  # noqa: F401
        import kernelatlas.harvest.onnx_  # noqa: F401
        import kernelatlas.harvest.openvino_ir  # noqa: F401
        import kernelatlas.harvest.safetensors_  # noqa: F401
        import kernelatlas.harvest.tf_graphdef  # noqa: F401
        import kernelatlas.harvest.tfjs  # noqa: F401
        import kernelatlas.harvest.tflite_  # noqa: F401
        import kernelatlas.harvest.torch_pickle  # noqa: F401
        import kernelatlas.harvest.torchscript  # noqa: F401
        import kernelatlas.limits  # noqa: F401
    import warnings

    import numpy as np

    from kernelatlas.errors import KernelAtlasError

    warnings.simplefilter("ignore")
    os.environ.setdefault("KERNELATLAS_MAX_TENSOR_BYTES", str(256 * 2**20))
    suffix = TARGETS[target][1]
    tmp = Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-")) / f"input{suffix}"
    shards = Path(seed_dir).parent / f"shards-{target}"
    for shard in shards.glob("*") if shards.is_dir() else ():  # TF.js: shards beside
        (tmp.parent / shard.name).write_bytes(shard.read_bytes())

    def one(data: bytes) -> None:
        tmp.write_bytes(data)
        try:
            layers = _read(target, tmp)
        except KernelAtlasError as exc:
            msg = str(exc)
            if not msg.strip() or "\n" in msg:
                raise AssertionError(f"error message not one line: {msg!r}") from None
            return
        for lk in layers:
            w = lk.weights
            if not (isinstance(w, np.ndarray) and w.dtype == np.float32 and w.ndim == 3):
                raise AssertionError(f"malformed kernels {type(w)} {getattr(w, 'shape', '')}")

    # -rss_limit_mb: an input that makes a reader allocate more is a finding (limits broken)
    args = [
        sys.argv[0],
        f"-max_total_time={max(1, int(seconds))}",
        "-timeout=20",
        "-rss_limit_mb=4096",
        "-max_len=65536",
        f"-artifact_prefix={findings}/",
        "-print_final_stats=1",
        seed_dir,  # a corpus directory: seeds in, new coverage-increasing inputs added
    ]
    atheris.Setup(args, one)
    atheris.Fuzz()


def _seed_dir(target: str, seeds: dict[str, Path], root: Path) -> Path:
    d = root / f"seeds-{target}"
    d.mkdir()
    keys, suffix = TARGETS[target]
    for k in keys:
        (d / f"{k}-{seeds[k].name}").write_bytes(seeds[k].read_bytes())
        if target == "tfjs":  # the manifests' shards go beside the fuzzed input
            (root / f"shards-{target}").mkdir(exist_ok=True)
            for shard in seeds[k].parent.glob("*.bin"):
                (root / f"shards-{target}" / shard.name).write_bytes(shard.read_bytes())
        if target in _BIN_BESIDE:  # the model's weights, named as the fuzzed input's .bin
            (root / f"shards-{target}").mkdir(exist_ok=True)
            blob = seeds[k].with_suffix(".bin").read_bytes()
            (root / f"shards-{target}" / "input.bin").write_bytes(blob)
    for f in CORPUS.glob(f"*{suffix}*"):  # earlier findings of this format
        if "segv" not in f.name and "hang" not in f.name:  # known libhdf5 crashers/hangs
            (d / f.name).write_bytes(f.read_bytes())
    return d


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="total fuzzing time")
    p.add_argument("--targets", nargs="+", choices=sorted(TARGETS), default=sorted(TARGETS))
    p.add_argument("--child", nargs=4, metavar=("TARGET", "SECONDS", "SEEDS", "FINDINGS"),
                   help=argparse.SUPPRESS)  # fmt: skip
    ns = p.parse_args(argv)
    if ns.child:
        target, seconds, seed_dir, findings = ns.child
        sys.argv = [sys.argv[0]]
        _child(target, float(seconds), seed_dir, findings)
        return 0
    share = ns.seconds / len(ns.targets)
    report = []
    with tempfile.TemporaryDirectory(prefix="kernelatlas-fuzz-") as tmp:
        root = Path(tmp)
        seeds = _write_seeds(root / "seeds")
        for target in ns.targets:
            findings = root / f"findings-{target}"
            findings.mkdir()
            t = time.monotonic()
            try:
                proc = subprocess.run(
                    [sys.executable, "-m", "tests.fuzz.run", "--child", target, str(share),
                     str(_seed_dir(target, seeds, root)), str(findings)],
                    cwd=ROOT, capture_output=True, text=True, timeout=share + 120,
                )  # fmt: skip
            except subprocess.TimeoutExpired as exc:
                out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
                proc = subprocess.CompletedProcess(exc.cmd, -9, out, "fuzzer did not stop")
            stats = re.findall(r"stat::number_of_executed_units:\s*(\d+)", proc.stderr or "")
            inputs = int(stats[-1]) if stats else None
            saved, contained = [], []
            for f in sorted(findings.iterdir()):
                data = f.read_bytes()
                name = f"fuzz_{target}_{hashlib.sha1(data).hexdigest()[:10]}" + TARGETS[target][1]
                if target == "keras" and _contained(f):
                    # a libhdf5 crash that the public reader's fork turns into a FormatError
                    kind = "hang" if f.name.startswith("timeout") else "segv"
                    name = name.replace("fuzz_keras_", f"fuzz_keras_{kind}_")
                    if len(data) <= MAX_SAVED:
                        (CORPUS / name).write_bytes(data)
                    contained.append(name)
                    continue
                if len(data) <= MAX_SAVED:
                    (CORPUS / name).write_bytes(data)
                    saved.append(name)
                else:
                    saved.append(f"{f.name} ({len(data)} bytes, not saved)")
            failed = bool(saved) or (proc.returncode != 0 and not contained)
            report.append({"target": target, "seconds": round(time.monotonic() - t, 1),
                           "inputs": inputs, "returncode": proc.returncode, "findings": saved,
                           "contained_crashes": contained, "failed": failed})  # fmt: skip
            status = "FINDING" if failed else "ok"
            print(f"{target:12s} {status:8s} inputs={inputs} findings={saved} "
                  f"contained={contained}", flush=True)  # fmt: skip
            if failed:
                print(proc.stderr[-3000:], file=sys.stderr)
    print(json.dumps(report, indent=1))
    return 1 if any(r["failed"] for r in report) else 0


def _contained(path: Path) -> bool:
    """Whether the public Keras reader (forked) turns this input into a KernelAtlasError."""
    code = (
        "import sys; from kernelatlas.errors import KernelAtlasError\n"
        "from kernelatlas.harvest.keras_h5 import read_keras\n"
        "from pathlib import Path\n"
        "try: read_keras(Path(sys.argv[1]))\n"
        "except KernelAtlasError as e: sys.exit(0 if '\\n' not in str(e) else 1)\n"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, timeout=300
        )
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


if __name__ == "__main__":
    sys.exit(main())
