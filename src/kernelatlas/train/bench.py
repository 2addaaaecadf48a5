"""``bench-train`` and ``bench-init``: do the atlas levers reach the result faster? Measured.

For every setting (dataset, training-set size, architecture) the same network is trained
once per (scheme, seed) with identical hyper-parameters (:mod:`.config`) by the one loop
(:mod:`.loop`); for a given seed every scheme starts from the same default weights outside
the depthwise layers and sees the same batches in the same order. A
:class:`~kernelatlas.train.CoverageTracker` runs beside each run, so each curve point has
the test accuracy *and* the atlas coverage of the depthwise kernels. Statistics and the
verdict rule are in :mod:`.stats`, tables and figures in :mod:`.report`.

The JSON (``OUT/bench-train.json``; ``bench-init.json`` for ``bench-init``) is rewritten,
complete and self-consistent (summary and verdict recomputed), after every run, so a run
cut short keeps what it finished; ``resume=True`` continues it. ``shard=(k, n)`` runs every
n-th (setting, seed) unit starting at k, for concurrent processes on one GPU;
:func:`merge_documents` joins their JSONs.

The ``atlas`` and ``covariance`` schemes need a reference bank: one extra default run with
seed :data:`~kernelatlas.train.config.REFERENCE_SEED` on the same data and budget supplies
its trained depthwise kernels (in-domain; the JSON says so).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import KernelAtlasError
from .config import REFERENCE_SEED, BenchConfig, parse_regime, regime_label
from .data import TRAIN_SIZES, load_dataset
from .init import depthwise_convs
from .loop import train_model
from .models import build_model
from .schemes import get_scheme, init_depthwise_
from .stats import RULE, summarize, time_basis, verdict

__all__ = [
    "SCHEMA",
    "json_schema",
    "plan_settings",
    "run_benchmark",
    "finalize",
    "merge_documents",
    "load_document",
]

SCHEMA = "kernelatlas.bench-train/1"


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a benchmark document (``bench_train.schema.json``)."""
    from importlib import resources

    return json.loads(resources.files(__package__).joinpath("bench_train.schema.json").read_text())


def plan_settings(cfg: BenchConfig) -> list[tuple[str, int | None, str]]:
    """The (dataset, n_train or None, arch) settings, regimes at/above a dataset's size
    folded into its ``all`` (run once)."""
    out = []
    for d in cfg.datasets:
        seen = set()
        for n in cfg.regimes:
            eff = None if n is None or n >= TRAIN_SIZES[d] else int(n)
            if eff in seen:
                continue
            seen.add(eff)
            out.extend((d, eff, a) for a in cfg.archs)
    return out


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    from ..atomic import temp_sibling

    tmp = temp_sibling(path)  # never a fixed name: a symlink planted there is written through
    try:
        tmp.write_text(json.dumps(obj, indent=1, allow_nan=False, default=_json_default))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``'steps 20 there, 40 here; ...'``: what differs between two documents' configs."""
    a = {**old["config"], "shard": old.get("shard")}
    b = {**new["config"], "shard": new.get("shard")}
    diff = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
    text = "; ".join(f"{k} {json.dumps(a.get(k))} there, {json.dumps(b.get(k))} here" for k in diff)
    return text if len(text) <= 300 else text[:297] + "..."


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _environment(dev: torch.device) -> dict[str, Any]:
    return {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else (platform.processor() or platform.machine()),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "tf32": dev.type == "cuda",
        "cudnn_benchmark": dev.type == "cuda",
    }


def _depthwise_bank(model: nn.Module) -> dict[str, np.ndarray]:
    out = {}
    for name, conv in depthwise_convs(model):
        w = conv.weight.detach().float().cpu().numpy()
        out[name] = w.reshape(w.shape[0], w.shape[2], w.shape[3])
    return out


def _atlas_reference(bank: dict[str, np.ndarray]):
    """Atlas analysis of a reference bank, pooled per kernel size (columns kh, kw added)."""
    import pandas as pd

    from .coverage import shared_atlas

    by_size: dict[tuple[int, int], list[np.ndarray]] = {}
    for k in bank.values():
        by_size.setdefault(k.shape[1:], []).append(k)
    frames = []
    for (kh, kw), ks in by_size.items():
        df = shared_atlas(kh, kw).predict(np.concatenate(ks))
        frames.append(df.assign(kh=kh, kw=kw))
    return pd.concat(frames, ignore_index=True)


def finalize(doc: dict[str, Any]) -> dict[str, Any]:
    """Recompute every run's steps/seconds to target, the summary and the verdict, in place."""
    basis = time_basis(doc.get("environment", {}).get("device", "cpu"))
    doc["summary"] = summarize(doc["runs"], time_key=basis)
    doc["verdict"] = verdict(doc["summary"])
    doc["rule"] = doc["verdict"]["rule"]
    return doc


def load_document(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A bench-train/bench-init JSON written by kernelatlas (the error says what is wrong)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise KernelAtlasError(f"{p}: cannot read a benchmark JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise KernelAtlasError(
            f"{p}: not a {SCHEMA} document (kernelatlas 0.1.0 bench-init JSONs predate it)"
        )
    return doc


_GRID_AXES = ("datasets", "regimes", "archs")


def _union(lists: list[list[Any]]) -> list[Any]:
    out: list[Any] = []
    for items in lists:
        out.extend(i for i in items if i not in out)
    return out


def merge_documents(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """One document from pieces of one grid: shards, or runs over different datasets,
    regimes or architectures with every other setting equal (duplicates refused)."""
    if not docs:
        raise KernelAtlasError("nothing to merge")
    rest = [{k: v for k, v in d["config"].items() if k not in _GRID_AXES} for d in docs]
    if any(r != rest[0] for r in rest):
        diff = sorted(k for k in rest[0] if any(r.get(k) != rest[0][k] for r in rest))
        raise KernelAtlasError(
            f"the documents differ in more than datasets/regimes/archs: {', '.join(diff)}"
        )
    cfg = dict(docs[0]["config"])
    for axis in _GRID_AXES:
        cfg[axis] = _union([d["config"][axis] for d in docs])
    from .data import DATASETS

    cfg["datasets"] = sorted(
        cfg["datasets"], key=lambda d: DATASETS.index(d) if d in DATASETS else 99
    )
    out = {k: v for k, v in docs[0].items() if k not in ("runs", "references", "skipped")}
    seen, runs, refs, skipped = set(), [], [], []
    for d in docs:
        for r in d["runs"]:
            key = (r["dataset"], r["n_train"], r["arch"], r["scheme"], r["seed"])
            if key in seen:
                raise KernelAtlasError(f"run {key} appears in two documents")
            seen.add(key)
            runs.append(r)
        refs.extend(d.get("references", []))
        skipped.extend(s for s in d.get("skipped", []) if s not in skipped)
    settings = {
        (d, regime_label(n), a): i
        for i, (d, n, a) in enumerate(
            plan_settings(
                BenchConfig(
                    datasets=tuple(cfg["datasets"]),
                    regimes=tuple(parse_regime(r) for r in cfg["regimes"]),
                    archs=tuple(cfg["archs"]),
                )
            )
        )
    }
    for r in runs:
        r["setting_index"] = settings.get((r["dataset"], r["regime"], r["arch"]), 999)
    order = {s: i for i, s in enumerate(cfg["schemes"])}
    runs.sort(key=lambda r: (r["setting_index"], r["seed"], order.get(r["scheme"], 99)))
    commands = _union([[d.get("command", "")] for d in docs])
    out.update(
        config=cfg,
        runs=runs,
        references=refs,
        skipped=skipped,
        shard=None,
        command=commands[0] if len(commands) == 1 else " ; ".join(commands),
    )
    out["complete"] = all(d.get("complete") for d in docs)
    out["elapsed_s"] = max(d.get("elapsed_s", 0.0) for d in docs)
    return finalize(out)


def run_benchmark(
    cfg: BenchConfig,
    out: str | os.PathLike[str],
    *,
    device: str = "cpu",
    data_root: str | os.PathLike[str] | None = None,
    command: str = "",
    name: str = "bench-train",
    shard: tuple[int, int] | None = None,
    resume: bool = False,
    write_report: bool = True,
    force: bool = False,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Run the benchmark into ``out``; returns the final JSON document.

    Writes ``out/<name>.json`` after every run and, at the end, ``out/<name>.md`` (tables
    and verdict), ``out/<name>.png`` (accuracy curves) and ``out/<name>-coverage.png``
    (coverage curves). ``out`` must be absent, empty or an earlier output of ``name``
    (its ``.kernelatlas`` marker, which a folder this creates gets), never a dataset's
    folder; one run at a time per ``out`` (:mod:`kernelatlas.outputs`). ``force`` writes
    into another folder beside its files, never over them, and leaves it unmarked.
    """
    cfg.validate()
    if shard is not None:
        k, n = shard
        if not (n >= 1 and 0 <= k < n):
            raise KernelAtlasError(f"shard must be k/n with 0 <= k < n, got {k}/{n}")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise KernelAtlasError("--device cuda but CUDA is not available: use --device cpu")
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    from ..outputs import appending
    from .data import dataset_paths

    kind = "bench-init" if name == "bench-init" else "bench-train"
    inputs = dataset_paths(cfg.datasets, data_root)
    with appending(out, kind=kind, inputs=inputs, force=force) as folder:
        return _run_into(
            cfg, folder, dev, data_root, command, name, shard, resume, write_report, log
        )


def _run_into(
    cfg: BenchConfig,
    out: Path,
    dev: torch.device,
    data_root: str | os.PathLike[str] | None,
    command: str,
    name: str,
    shard: tuple[int, int] | None,
    resume: bool,
    write_report: bool,
    log: Callable[[str], None] | None,
) -> dict[str, Any]:
    """:func:`run_benchmark` in checked, locked folder ``out``."""
    from ..outputs import BENCH_SUFFIXES

    path = out / f"{name}.json"
    log = log or (lambda _m: None)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "kernelatlas_version": __version__,
        "command": command,
        "config": json.loads(json.dumps(cfg.to_dict(), default=_json_default)),
        "shard": list(shard) if shard else None,
        "environment": _environment(dev),
        "rule": RULE,
        "reference": (
            f"atlas/covariance references: the depthwise kernels of one default run with "
            f"seed {REFERENCE_SEED} on the same training data and budget (in-domain)"
        ),
        "references": [],
        "skipped": [],
        "runs": [],
        "complete": False,
    }
    report_files = [out / f"{name}{suffix}" for suffix in BENCH_SUFFIXES if suffix != ".json"]
    if not path.exists() and any(p.exists() for p in report_files):
        found = next(p for p in report_files if p.exists())
        raise KernelAtlasError(
            f"{found} exists but {path.name} does not: kernelatlas did not write it and never "
            "overwrites what it did not write; choose another --out"
        )
    if path.exists():
        old = load_document(path)  # refuses a file kernelatlas did not write
        if resume:
            if old["config"] != doc["config"] or old.get("shard") != doc["shard"]:
                raise KernelAtlasError(
                    f"{path} holds a different configuration or shard "
                    f"({_differences(old, doc)}): repeat its options to resume it, or use "
                    "another --out"
                )
            doc.update(runs=old["runs"], references=old.get("references", []))
        elif old["runs"]:
            raise KernelAtlasError(
                f"{path} already holds {len(old['runs'])} run{'s' * (len(old['runs']) != 1)}: pass --resume to continue "
                "it, or choose another --out"
            )
    done_keys = {
        (r["dataset"], r["n_train"], r["arch"], r["scheme"], r["seed"]) for r in doc["runs"]
    }
    settings = plan_settings(cfg)
    units = [(i, s) for i, _ in enumerate(settings) for s in range(cfg.seeds)]
    if shard is not None:
        units = [u for j, u in enumerate(units) if j % shard[1] == shard[0]]
    applicable = {a: _applicable(cfg, a) for a in cfg.archs}
    n_todo = sum(
        1
        for i, s in units
        for sch in applicable[settings[i][2]][0]
        if _key(settings[i], sch, s) not in done_keys
    )
    started = time.perf_counter()
    finished = 0
    data_key, data = None, None
    for i, (dname, n_train, arch) in enumerate(settings):
        seeds = [s for j, s in units if j == i]
        if not seeds:
            continue
        if data_key != (dname, n_train):
            data = None  # free the previous regime first
            data = load_dataset(dname, n_train=n_train, n_test=cfg.n_test, root=data_root).to(dev)
            data_key = (dname, n_train)
        ac = cfg.arch_configs[arch]
        loop = cfg.loop(arch)
        regime = regime_label(n_train)
        n_actual = len(data.y_train)

        def make(seed: int, arch=arch, ac=ac, data=data) -> nn.Module:
            return build_model(
                arch,
                data.num_classes,
                image_size=ac.image_size,
                width=ac.width,
                depth=ac.depth,
                seed=seed,
                **ac.options,
            )

        for scheme, reason in applicable[arch][1]:
            skip = {
                "dataset": dname,
                "regime": regime,
                "arch": arch,
                "scheme": scheme,
                "reason": reason,
            }
            if skip not in doc["skipped"]:
                doc["skipped"].append(skip)
        reference: dict[str, Any] = {}
        todo_here = [
            (s, sch)
            for s in seeds
            for sch in applicable[arch][0]
            if (dname, n_actual, arch, sch, s) not in done_keys
        ]
        if any(get_scheme(sch).needs_reference for _, sch in todo_here):
            ref_model = make(REFERENCE_SEED)
            r = train_model(ref_model, data, loop, seed=REFERENCE_SEED)
            bank = _depthwise_bank(ref_model)
            frame = _atlas_reference(bank)
            reference = {"bank": bank, "frame": frame}
            cov = float(frame["classified"].mean())
            doc["references"].append(
                {
                    "dataset": dname,
                    "regime": regime,
                    "n_train": n_actual,
                    "arch": arch,
                    "final_accuracy": r.final_accuracy,
                    "atlas_coverage": cov,
                    "family_shares": frame["family"].value_counts(normalize=True).to_dict(),
                }
            )
            log(
                f"{dname}/{regime}/{arch} reference (seed {REFERENCE_SEED}): acc "
                f"{r.final_accuracy:.4f}, atlas coverage {cov:.2f}"
            )
        for seed, scheme in todo_here:
            info = get_scheme(scheme)
            model = make(seed)
            ref = None
            if info.needs_reference:
                ref = reference["frame"] if scheme == "atlas" else reference["bank"]
            init_depthwise_(model, scheme, seed=seed, reference=ref, total_steps=cfg.steps)
            n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            tracker = None
            if cfg.coverage:
                from .coverage import CoverageTracker

                tracker = CoverageTracker(model, every=cfg.eval_every)
            res = train_model(model, data, loop, seed=seed, tracker=tracker)
            finished += 1
            doc["runs"].append(
                {
                    "scheme": scheme,
                    "lever": info.lever,
                    "arch": arch,
                    "dataset": dname,
                    "regime": regime,
                    "n_train": n_actual,
                    "n_test": len(data.y_test),
                    "seed": seed,
                    "setting_index": i,
                    "total_steps": cfg.steps,
                    "eval_every": cfg.eval_every,
                    "trainable_params": n_trainable,
                    "steps_to_target": None,
                    "seconds_to_target": None,
                    "cpu_seconds_to_target": None,
                    "target": None,
                    "final_accuracy": res.final_accuracy,
                    "train_seconds": res.train_seconds,
                    "cpu_seconds": res.cpu_seconds,
                    "eval_seconds": res.eval_seconds,
                    "curve": res.curve,
                }
            )
            elapsed = time.perf_counter() - started
            cov = res.curve[-1].get("coverage")
            log(
                f"[{finished}/{n_todo}] {dname}/{regime}/{arch} {scheme} seed {seed}: acc "
                f"{res.final_accuracy:.4f}"
                + (
                    f", coverage {res.curve[0]['coverage']:.2f}->{cov:.2f}"
                    if cov is not None
                    else ""
                )
                + f", train {res.train_seconds:.1f}s (cpu {res.cpu_seconds:.1f}s); elapsed "
                f"{elapsed:.0f}s, eta {elapsed / finished * (n_todo - finished):.0f}s"
            )
            doc["elapsed_s"] = elapsed
            _write_json(path, finalize(doc))
    doc["complete"] = True
    doc["elapsed_s"] = time.perf_counter() - started
    _write_json(path, finalize(doc))
    if write_report and doc["runs"]:
        from .report import write_report as _report

        _report(doc, out, name)
    return doc


def _key(setting: tuple[str, int | None, str], scheme: str, seed: int) -> tuple:
    d, n, a = setting
    return (d, TRAIN_SIZES[d] if n is None else n, a, scheme, seed)


def _applicable(cfg: BenchConfig, arch: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The schemes that apply to ``arch`` and the (scheme, reason) pairs that do not."""
    from .frozen import layer_scales

    ac = cfg.arch_configs[arch]
    probe = build_model(
        arch, 10, image_size=ac.image_size, width=ac.width, depth=ac.depth, seed=0, **ac.options
    )
    has_ls = bool(layer_scales(probe))
    ok, skipped = [], []
    for scheme in cfg.schemes:
        if get_scheme(scheme).needs_layer_scale and not has_ls:
            skipped.append((scheme, "the architecture has no layer scale"))
        else:
            ok.append(scheme)
    return ok, skipped
