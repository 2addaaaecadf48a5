"""Train the reference autoencoders shipped in kernelatlas/data/autoencoders, bit for bit.

The training bank of each kernel size is the pooled kernels of every source in the registry
(``kernelatlas sources``, harvested raw, in sorted order), so a re-run after new sources
are registered trains on them too. A size gets a reference only with at least
``MIN_REFERENCE_KERNELS`` non-degenerate kernels from ``MIN_REFERENCE_MODELS`` models
(kernelatlas.autoencoder.reference); the others are listed in index.json with their
counts. Training runs on the CPU with one torch thread, so the weights are reproducible bit
for bit on the same torch build.

Usage::

    .venv/bin/python benchmarks/train_reference_ae.py            # (re)write the package data
    .venv/bin/python benchmarks/train_reference_ae.py --check    # retrain aside, compare sha256

``--jobs 2`` trains two sizes at once in worker processes (one torch thread each: the
same bits as one process).

``--check`` retrains on the sources the shipped ``index.json`` names (and lists registry
sources added since) and exits 1 when a retrained reference differs from the shipped one
(weights, or config and provenance apart from their version stamp).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "src" / "kernelatlas" / "data" / "autoencoders"
COMMAND = "python benchmarks/train_reference_ae.py"


def _digest(path: Path, *, drop_version: bool = False) -> str:
    if not drop_version:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    doc = json.loads(path.read_text())
    doc.pop("kernelatlas_version", None)
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _compare(new: Path, old: Path) -> list[str]:
    problems = []
    a, b = (
        json.loads((new / "index.json").read_text()),
        json.loads((old / "index.json").read_text()),
    )
    for key in ("sources", "references", "not_shipped"):
        if a.get(key) != b.get(key):
            problems.append(f"index.json {key}: shipped {b.get(key)!r}, retrained {a.get(key)!r}")
    for name in a["references"].values():
        for f, drop in (
            ("model.safetensors", False),
            ("config.json", True),
            ("provenance.json", True),
        ):
            if not (old / name / f).is_file():
                problems.append(f"{name}/{f}: not shipped")
            elif _digest(new / name / f, drop_version=drop) != _digest(
                old / name / f, drop_version=drop
            ):
                problems.append(f"{name}/{f}: retrained file differs from the shipped one")
    return problems


def _train(bank, progress: bool):
    """One size, in a worker process with one torch thread (bit for bit as in-process)."""
    import torch

    from kernelatlas.autoencoder.reference import train_reference

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ae, prov = train_reference(bank, command=COMMAND, progress=progress)
    return ae, prov, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    import torch

    from kernelatlas.autoencoder.reference import eligibility, pool_sources, write_references
    from kernelatlas.harvest import list_sources

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="package data folder")
    ap.add_argument("--check", action="store_true", help="retrain aside and compare")
    ap.add_argument("--jobs", type=int, default=1, help="sizes trained at once (processes)")
    ap.add_argument("--progress", action="store_true", help="training progress bars")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # bit-for-bit: one thread, CPU

    names = list_sources()
    if args.check:  # reproduce the shipped training bank: the sources it names
        shipped = json.loads((args.out / "index.json").read_text())["sources"]
        new = sorted(set(names) - set(shipped))
        if new:
            print(f"not in the shipped references (re-run without --check): {', '.join(new)}")
        names = shipped
    print(f"pooling {len(names)} registry sources", flush=True)
    banks = pool_sources(names)
    todo, left_out = {}, {}
    for size, bank in banks.items():
        reason = eligibility(bank)
        if reason is None:
            todo[size] = bank
            continue
        left_out[size] = {
            "kernels": int(bank.kernels.shape[0]),
            "models": bank.n_models,
            "sources": [s["name"] for s in bank.sources],
            "reason": reason,
        }
        print(f"{size[0]}x{size[1]}: no reference ({reason})", flush=True)
    trained = {}
    with ProcessPoolExecutor(max(1, args.jobs), mp_context=mp.get_context("spawn")) as pool:
        futures = {size: pool.submit(_train, bank, args.progress) for size, bank in todo.items()}
        for size, fut in futures.items():
            ae, prov, seconds = fut.result()
            trained[size] = (ae, prov)
            key = f"{size[0]}x{size[1]}"
            segs = ", ".join(
                f"{r.label} {r.mass:.0%}" for r in ae.segments_.itertuples() if r.mass > 0.01
            )
            print(
                f"{key}: trained on {ae.n_train_:,} kernels of {todo[size].n_models} models in "
                f"{seconds:.0f} s; threshold {ae.threshold_:.3f} ({ae.threshold_rule_}), loss "
                f"{ae.loss_history_[-1]:.4f}; segments: {segs}",
                flush=True,
            )
    if not args.check:
        write_references(trained, left_out, args.out, sources=names, command=COMMAND)
        print(f"wrote {args.out}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        new = write_references(trained, left_out, Path(tmp) / "ae", sources=names, command=COMMAND)
        problems = _compare(new, args.out)
    for p in problems:
        print(f"DIFFERS: {p}")
    print("identical to the shipped references" if not problems else f"{len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
