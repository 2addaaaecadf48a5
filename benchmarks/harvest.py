"""Harvest speed on every shipped source, and bank read speed.

For each registered source: kernels/s of ``harvest(name)`` and the ratio of its time to
the bare load of the same file (``torch.load`` for checkpoints, ``onnx.load`` for ONNX,
reading the TFLite flatbuffer and materialising every buffer as numpy, parsing a TF.js
manifest and reading its shards, h5py reading every dataset of a Keras file). Best of
``--repeat`` runs, harvest and bare load alternating (so both see the same machine load),
the file already in the OS cache. Then the torch readers on files the benchmark writes
itself from torchvision's MobileNetV3-Small (TorchScript scripted and traced,
``torch.save(model)``, safetensors), against ``torch.jit.load``,
``torch.load(weights_only=False)`` and ``safetensors.torch.load_file`` of those trusted
files. Then the time to read 1M 7x7 kernels back from a bank (``KernelBank.kernels(7, 7)``).
Writes docs/benchmarks/harvest.{json,md}.

    .venv/bin/python benchmarks/harvest.py [--repeat 3] [--out docs/benchmarks]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

import kernelatlas
from kernelatlas.bank import KernelBank
from kernelatlas.harvest import HarvestResult, LayerKernels, get_source, harvest, list_sources
from kernelatlas.harvest.cache import fetch


def bare_load(fmt: str, path: Path) -> Callable[[], object]:
    if fmt == "checkpoint":
        import torch

        return lambda: torch.load(path, map_location="cpu", weights_only=True)
    if fmt == "onnx":
        import onnx

        return lambda: onnx.load(str(path))
    if fmt == "tflite":
        import tflite

        def load() -> list:
            m = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
            return [m.Buffers(i).DataAsNumpy() for i in range(m.BuffersLength())]

        return load
    if fmt == "tflite_task":  # the bundle unzipped (nested bundles too), each TFLite as above
        import io
        import zipfile

        import tflite

        def load_task() -> list:
            out: list = []
            todo = [path.read_bytes()]
            while todo:
                with zipfile.ZipFile(io.BytesIO(todo.pop())) as z:
                    for name in z.namelist():
                        if name.endswith(".task"):
                            todo.append(z.read(name))
                        elif name.endswith(".tflite"):
                            m = tflite.Model.GetRootAsModel(z.read(name), 0)
                            out += [m.Buffers(i).DataAsNumpy() for i in range(m.BuffersLength())]
            return out

        return load_task
    if fmt == "tfjs":

        def load_tfjs() -> list:
            doc = json.loads(path.read_bytes())
            groups = doc if isinstance(doc, list) else doc["weightsManifest"]
            return [(path.parent / p).read_bytes() for g in groups for p in g["paths"]]

        return load_tfjs
    if fmt == "keras":
        import h5py

        def load_h5() -> list:
            out: list = []
            with h5py.File(path, "r") as f:
                f.visititems(
                    lambda n, o: out.append(o[()]) if isinstance(o, h5py.Dataset) else None
                )
            return out

        return load_h5
    if fmt == "openvino":  # the XML parsed into a tree and the whole .bin read
        from xml.etree import ElementTree

        def load_ir() -> tuple:
            return ElementTree.fromstring(path.read_bytes()), path.with_suffix(".bin").read_bytes()

        return load_ir
    raise ValueError(fmt)


def fixture_rows(repeat: int) -> list[dict]:
    """The new torch readers on files written here (trusted, so torch may load them)."""
    import torch
    import torchvision
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small().eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = Path(tmp)
        torch.jit.save(torch.jit.script(model), d / "script.pt")
        torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, 64, 64), check_trace=False),
                       d / "traced.pt")  # fmt: skip
        torch.save(model, d / "model.pt")
        save_file(model.state_dict(), d / "state.safetensors")
        cases = [
            ("mobilenet_v3_small (scripted)", d / "script.pt", lambda p: torch.jit.load(p)),
            ("mobilenet_v3_small (traced)", d / "traced.pt", lambda p: torch.jit.load(p)),
            ("mobilenet_v3_small (torch.save(model))", d / "model.pt",
             lambda p: torch.load(p, weights_only=False)),
            ("mobilenet_v3_small (safetensors)", d / "state.safetensors", lambda p: load_file(p)),
        ]  # fmt: skip
        for name, path, bare in cases:
            res = harvest(path)
            bare(path)
            t_h, t_b, ratio = paired(lambda path=path: harvest(path),
                                     lambda path=path, bare=bare: bare(path), repeat)  # fmt: skip
            n = res.n_kernels
            rows.append({
                "source": name, "format": res.format, "kernels": n,
                "harvest_s": round(t_h, 4), "bare_load_s": round(t_b, 4),
                "kernels_per_s": round(n / t_h), "ratio": round(ratio, 2),
                "via": "file reader (benchmark-made file)",
            })  # fmt: skip
            print(f"{name:44s} {n:7d} k  {t_h * 1e3:8.1f} ms  bare {t_b * 1e3:8.1f} ms  "
                  f"ratio {ratio:5.2f}")  # fmt: skip
    return rows


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def paired(fn_a: Callable[[], object], fn_b: Callable[[], object], repeat: int) -> tuple:
    """Run ``fn_a`` and ``fn_b`` alternately ``repeat`` times: their best times and the
    ratio of those (both sides sampled over the same period of machine load; the best of
    many runs of a millisecond call is far steadier than a median under preemption)."""
    ta, tb = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        fn_a()
        a = time.perf_counter() - t
        t = time.perf_counter()
        fn_b()
        b = time.perf_counter() - t
        ta.append(a)
        tb.append(b)
    return min(ta), min(tb), min(ta) / min(tb)


def bank_read(n: int = 1_000_000, repeat: int = 3) -> dict:
    rng = np.random.default_rng(0)
    layers = [
        LayerKernels(f"l{i}", i, rng.standard_normal((n // 100, 7, 7), dtype=np.float32))
        for i in range(100)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        bank = KernelBank(tmp)
        t = time.perf_counter()
        bank.add(HarvestResult("synthetic-7x7", "synthetic", "numpy", layers))
        write = time.perf_counter() - t
        read = best(lambda: bank.kernels(7, 7), repeat)
        size = sum(f.stat().st_size for f in bank.files())
    return {"kernels": n, "write_s": round(write, 3), "read_s": round(read, 3),
            "file_mb": round(size / 2**20, 1), "target_read_s": 2.0}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="docs/benchmarks")
    args = ap.parse_args()
    rows = []
    for name in list_sources():
        info = get_source(name)
        path = fetch(info)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            harvest(name)  # warm-up (imports, page cache)
            t_h, t_b, ratio = paired(
                lambda name=name: harvest(name), bare_load(info.format, path), args.repeat
            )
        n = harvest(name).n_kernels
        rows.append({
            "source": name, "format": info.format, "kernels": n,
            "harvest_s": round(t_h, 4), "bare_load_s": round(t_b, 4),
            "kernels_per_s": round(n / t_h), "ratio": round(ratio, 2),
            "via": "torchvision architecture on meta + its depthwise tensors"
            if info.arch else "file reader",
        })  # fmt: skip
        print(f"{name:44s} {n:7d} k  {t_h * 1e3:8.1f} ms  bare {t_b * 1e3:8.1f} ms  "
              f"ratio {ratio:5.2f}")  # fmt: skip
    rows += fixture_rows(args.repeat)
    read = bank_read(repeat=args.repeat)
    print(f"bank: read {read['kernels']:,} 7x7 kernels in {read['read_s']} s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"kernelatlas_version": kernelatlas.__version__, "machine": platform.machine(),
            "python": platform.python_version(), "repeat": args.repeat, "target_ratio": 1.5}  # fmt: skip
    doc = {"meta": meta, "sources": rows, "bank_read": read}
    tmp = out / ".harvest.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(out / "harvest.json")
    lines = ["# Harvest benchmark", "", f"kernelatlas {meta['kernelatlas_version']}, "
             f"best of {args.repeat} (harvest and bare load alternating), "
             "`python benchmarks/harvest.py`. Target ratio <= 1.5.", "",
             "| source | format | kernels | harvest ms | bare load ms | kernels/s | ratio |",
             "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['source']} | {r['format']} | {r['kernels']:,} | {r['harvest_s'] * 1e3:.1f} "
                     f"| {r['bare_load_s'] * 1e3:.1f} | {r['kernels_per_s']:,} | {r['ratio']:.2f} |")  # fmt: skip
    lines += ["", f"Bank: {read['kernels']:,} 7x7 kernels ({read['file_mb']} MB) read back in "
              f"{read['read_s']} s (target <= 2 s); written in {read['write_s']} s.", ""]  # fmt: skip
    tmp = out / ".harvest.md.tmp"
    tmp.write_text("\n".join(lines))
    tmp.replace(out / "harvest.md")


if __name__ == "__main__":
    main()
