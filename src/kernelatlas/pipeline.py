"""The main job: sources -> kernel bank -> atlas / fits / autoencoder -> tables, figures, HTML.

``analyze`` harvests the sources into a bank, calibrates one atlas per kernel size (from
the user cache when it can, :mod:`kernelatlas.calibration`), and runs the bank's
partitions on an engine (:mod:`kernelatlas.engine`): each partition becomes one part file
of kernels.parquet and a few exact integer counts, which the driver adds up into the
coverage tables (:mod:`kernelatlas.partitions`). When nothing needs the whole bank before
classifying (an atlas-only analysis against a null that does not come from the analysed
kernels), the local engine classifies each source while the next one is harvested.

The output directory is published atomically: the new state is built beside it and
swapped in with renames, so a reader (or a crash) only ever sees the previous complete
state or the new one. What may be written where (never over a user's folder or an input,
one run per output) is :mod:`kernelatlas.outputs`'s.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from .checks import check_device, check_scheduler, check_workers
from .errors import KernelAtlasError
from .null import DEFAULT_NULL_SIZE, NULL_KINDS, gaussian_null
from .outputs import ANALYSIS_FILES as OUTPUT_FILES
from .partitions import Partition, PartitionJob, SizeModels
from .report.summary import MODEL_KEYS, build_summary
from .results import KERNELS_NAME
from .taxonomy import DEFAULT_NULL_FPR

__all__ = ["AnalysisConfig", "AnalysisResult", "analyze", "METHODS", "OUTPUT_FILES", "STAGE_NAMES"]

METHODS = ("atlas", "autoencoder", "both")
#: Null kinds whose kernels do not come from the analysed models (a calibration for them
#: needs no pass over the bank, so classification can start while harvesting goes on).
_DATA_FREE_NULLS = frozenset({"gaussian", "init"})
#: Stages of ``AnalysisResult.timings["stages_s"]``, in pipeline order.
STAGE_NAMES: tuple[str, ...] = (
    "harvest", "calibrate", "autoencoder_train", "read", "classify", "fits", "autoencoder",
    "stats", "write", "merge", "summary", "figures",
)  # fmt: skip


@dataclass(frozen=True)
class AnalysisConfig:
    """Options of one analysis (every field is recorded in summary.json)."""

    method: Literal["atlas", "autoencoder", "both"] = "atlas"
    fold_bn: bool = False
    null: Literal["gaussian", "init"] = "gaussian"
    null_fpr: float = DEFAULT_NULL_FPR
    n_null: int = DEFAULT_NULL_SIZE
    seed: int = 0
    batch_size: int = 65_536
    fit: bool = True
    init_baseline: bool = True
    ae_epochs: int | None = None
    ae_max_train: int = 1_000_000
    device: str | None = None
    quiet: bool = False
    figures: bool = True
    command: str | None = None
    engine: Literal["local", "dask"] = "local"
    scheduler: str | None = None
    n_workers: int | None = None
    with_weights: bool = False
    recalibrate: bool = False

    def validate(self) -> None:
        """Refuse invalid, contradictory and no-op options (one line each), before any work."""
        if self.method not in METHODS:
            raise KernelAtlasError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.null not in NULL_KINDS:
            raise KernelAtlasError(f"null must be one of {NULL_KINDS}, got {self.null!r}")
        if not 0.0 < self.null_fpr < 1.0:
            raise KernelAtlasError(
                f"null_fpr (--null-fpr) must be in (0, 1), got {self.null_fpr}: at 0 the "
                "threshold is the null's maximum and almost nothing is classified; e.g. 0.01"
            )
        if self.batch_size < 1 or self.n_null < 100:
            raise KernelAtlasError("batch_size must be >= 1 and n_null >= 100")
        if self.seed < 0:
            raise KernelAtlasError(f"seed (--seed) must be >= 0, got {self.seed}")
        if self.ae_epochs is not None and self.method == "atlas":
            raise KernelAtlasError(
                "ae_epochs (--ae-epochs) trains the autoencoder, which method 'atlas' does not "
                "run: add --method autoencoder or both, or drop --ae-epochs"
            )
        if self.ae_epochs is not None and self.ae_epochs < 1:
            raise KernelAtlasError(f"ae_epochs (--ae-epochs) must be >= 1, got {self.ae_epochs}")
        if self.null == "init" and not self.init_baseline:
            raise KernelAtlasError(
                "--null init calibrates on the fresh-init kernels and reports their held-out "
                "half as the baseline: it cannot go with --no-init-baseline"
            )
        if self.engine not in ("local", "dask"):
            raise KernelAtlasError(f"engine must be 'local' or 'dask', got {self.engine!r}")
        if self.engine == "local" and (self.scheduler or self.n_workers is not None):
            raise KernelAtlasError("--scheduler and --workers need --engine dask")
        if self.n_workers is not None and (self.scheduler or self.n_workers < 1):
            raise KernelAtlasError(
                "--workers must be >= 1 and sizes only a local cluster (not with --scheduler)"
            )
        if self.n_workers is not None:
            check_workers(self.n_workers)
        if self.scheduler is not None:
            check_scheduler(self.scheduler)
        if self.device is not None:
            check_device(self.device)


@dataclass
class AnalysisResult:
    """Where the outputs went, the summary document, and where the time went.

    ``timings``: ``wall_s``; ``stages_s`` (seconds per stage, summed over the threads or
    workers that ran it, so they may add up to more than the wall time); ``calibration``
    (per kernel size: ``cached`` and ``seconds``); ``engine``, ``slots``, ``partitions``.
    """

    out: Path
    summary: dict[str, Any]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    harvest: pd.DataFrame | None = None  # counts per source and size, with a ``status``
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def kernels_path(self) -> Path:
        """kernels.parquet (a folder of part files; read weights with
        :func:`kernelatlas.results.kernel_weights`)."""
        return self.out / KERNELS_NAME


# --------------------------------------------------------------------------- stages
def _progress(total: int, quiet: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, disable=quiet, unit="kernel", desc=desc, file=sys.stderr, dynamic_ncols=True
    )


#: Why the fresh-init twins are never batch-norm folded (stated in summary.json).
INIT_FOLD_NOTE = (
    "fresh-init twins are harvested without --fold-bn: at initialisation a batch norm is the "
    "identity (gamma 1, running variance 1), so folding it would change no normalised kernel"
)


def _harvest_init(keys: Sequence[str]) -> dict[str, Any]:
    """Harvest the fresh-init twin of every source that has one (unfolded, see
    :data:`INIT_FOLD_NOTE`; the twin is ``harvest.zoo.init_twin``'s): bank key of the
    source -> HarvestResult."""
    from .harvest import harvest
    from .harvest.zoo import init_twin

    twins = {}
    for key in keys:
        try:
            twin = init_twin(key.removesuffix("+fold_bn"))
        except KernelAtlasError:
            twin = None
        if twin is not None:
            twins[key] = harvest(twin)
    return twins


def _init_halves(kernels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of fresh-init kernels into a calibration half and a held-out half."""
    order = np.random.default_rng(seed).permutation(len(kernels))
    half = (len(kernels) + 1) // 2
    return kernels[order[:half]], kernels[order[half:]]


def _layer_kernels(res: Any, kh: int, kw: int) -> np.ndarray:
    arrays = [layer.weights for layer in res.layers if layer.weights.shape[1:] == (kh, kw)]
    return (
        np.concatenate(arrays).astype(np.float32) if arrays else np.zeros((0, kh, kw), np.float32)
    )


def _bank_sample(bank: Any, kh: int, kw: int, limit: int, seed: int) -> np.ndarray:
    """All kernels of one size, or a seeded uniform sample of ``limit`` of them (streamed)."""
    from .bank import weights_array

    total = int(bank.counts().query("kh == @kh and kw == @kw")["kernels"].sum())
    keep = 1.0 if total <= limit else limit / total
    rng = np.random.default_rng(seed)
    parts = []
    for batch in bank.iter_batches(kh=kh, kw=kw, columns=["weights"]):
        k = weights_array(batch["weights"], kh, kw)
        if keep < 1.0:
            k = k[rng.random(len(k)) < keep]
        parts.append(k)
    return np.concatenate(parts) if parts else np.zeros((0, kh, kw), np.float32)


class _Stages:
    """Seconds per stage, added to from any thread."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(STAGE_NAMES, 0.0)
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def timed(self, stage: str) -> _Timed:
        return _Timed(self, stage)


class _Timed:
    def __init__(self, stages: _Stages, stage: str) -> None:
        self.stages, self.stage = stages, stage

    def __enter__(self) -> None:
        self.t = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.stages.add(self.stage, time.perf_counter() - self.t)


def analyze(
    sources: Sequence[Any],
    out: str | os.PathLike[str],
    config: AnalysisConfig | None = None,
    *,
    force: bool = False,
    **overrides: Any,
) -> AnalysisResult:
    """Harvest ``sources``, name every kernel, and write kernels.parquet, summary.json,
    figures/ and index.html under ``out``.

    Parameters
    ----------
    sources : registry names (``kernelatlas sources``), ``timm:NAME[@init]``, file paths,
        kernel bank folders (``kernelatlas harvest --out``) or ``torch.nn.Module`` objects.
    out : output folder: absent, empty or an earlier analysis (see :mod:`kernelatlas.outputs`);
        replaced atomically. Its bank is reused for sources whose content is unchanged.
    config : an :class:`AnalysisConfig`; keyword ``overrides`` replace its fields.
    force : replace ``out`` even when it is a non-empty folder kernelatlas did not write.

    Examples
    --------
    >>> from kernelatlas import analyze
    >>> res = analyze(["efficientnet_lite0"], "report", method="atlas")  # doctest: +SKIP
    >>> res.summary["models"][0]["coverage"]  # doctest: +SKIP
    >>> res.timings["calibration"]  # [{'kh': 3, 'kw': 3, 'cached': True, ...}, ...]  # doctest: +SKIP
    """
    from dataclasses import replace

    from .harvest.api import source_paths
    from .outputs import replacing
    from .report.summary import coverage_tables

    t0 = time.perf_counter()
    cfg = replace(config or AnalysisConfig(), **overrides)
    cfg.validate()
    sources = list(sources)
    if not sources:
        raise KernelAtlasError("no sources given: name at least one (see `kernelatlas sources`)")
    inputs = [p for s in sources for p in source_paths(s)]
    with replacing(out, kind="analysis", inputs=inputs, force=force, keep=("bank",)) as stage:
        summary, merged, harvested, timings = _analyze_into(stage.path, sources, cfg)
        stage.publish()
    timings["wall_s"] = time.perf_counter() - t0
    return AnalysisResult(stage.out, summary, coverage_tables(merged), harvested, timings)


class _Run:
    """The state of one analysis: models per size as they are calibrated, and what the
    summary reports about each (thresholds, baselines, autoencoders)."""

    def __init__(self, bank: Any, cfg: AnalysisConfig, stages: _Stages, parts_dir: Path) -> None:
        self.bank, self.cfg, self.stages = bank, cfg, stages
        self.parts_dir = parts_dir
        self.twins: dict[str, Any] = {}
        self.models: dict[tuple[int, int], SizeModels] = {}
        self.job: PartitionJob | None = None
        self.thresholds: list[dict[str, Any]] = []
        self.baselines: list[dict[str, Any]] = []
        self.heldout: dict[tuple[int, int], float] = {}
        self.calibration: list[dict[str, Any]] = []
        self.ae_by_size: list[dict[str, Any]] = []
        self.spectra: dict[str, Any] = {}
        self.status: dict[str, str] = {}
        self.bar: Any = None
        self._lock = threading.Lock()
        self.partitions = 0

    def progress(self) -> Any:
        """The progress bar (made when the first source is in the bank)."""
        with self._lock:
            if self.bar is None:
                self.bar = _progress(0, self.cfg.quiet, "analyse")
            return self.bar

    def add_size(self, kh: int, kw: int) -> None:
        """Calibrate (or load) the atlas of one kernel size, measure its baselines, train
        its autoencoder when asked, and make the job that carries it."""
        from .atlas import Atlas  # noqa: F401  (torch's import is not the calibration's time)
        from .calibration import calibrate

        cfg = self.cfg
        if self.bar is not None:
            self.bar.set_description(f"calibrate {kh}x{kw}")
        t = time.perf_counter()
        twin_k = {src: _layer_kernels(tw, kh, kw) for src, tw in self.twins.items()}
        twin_k = {src: k for src, k in twin_k.items() if len(k)}
        init_k = (
            np.concatenate(list(twin_k.values())) if twin_k else np.zeros((0, kh, kw), np.float32)
        )
        null = heldout = None
        judged = twin_k
        if cfg.null == "init":
            # calibrate on one half of the fresh-init kernels; the other half is the
            # independent check (the null rate and the init coverage reported)
            halves = {src: _init_halves(k, cfg.seed) for src, k in twin_k.items()}
            null = np.concatenate([c for c, _ in halves.values()]) if halves else init_k
            if len(null) < 100:
                raise KernelAtlasError(
                    f"--null init needs at least 200 freshly initialised {kh}x{kw} kernels of "
                    "the same architecture (half to calibrate, half held out); none is known "
                    "for these sources: use --null gaussian or analyse timm:NAME sources"
                )
            heldout = np.concatenate([h for _, h in halves.values()])
            judged = {src: h for src, (_, h) in halves.items()}
        cal = calibrate(
            kh, kw, null_kind=cfg.null, null_fpr=cfg.null_fpr, n_null=cfg.n_null, seed=cfg.seed,
            null=null, heldout=heldout, refresh=cfg.recalibrate,
        )  # fmt: skip
        atlas = cal.atlas
        self.heldout[(kh, kw)] = cal.heldout_rate
        self.calibration.append(
            {"kh": kh, "kw": kw, "cached": cal.cached, "seconds": round(cal.seconds, 4)}
        )
        for fam, thr in atlas.thresholds_.items():
            self.thresholds.append(
                {"kh": kh, "kw": kw, "method": "atlas", "family": fam, "threshold": float(thr),
                 "null_kind": cfg.null, "null_fpr": cfg.null_fpr, "null_rate": float(atlas.null_rate_)}
            )  # fmt: skip
        for src, k in judged.items():
            pred = atlas.predict(k)
            live = pred["family"] != "degenerate"
            cov = float(pred["classified"][live].mean()) if live.any() else float("nan")
            self.baselines.append(
                {"source": src, "init_source": self.twins[src].source, "kh": kh, "kw": kw,
                 "init_coverage": cov}
            )  # fmt: skip
        self.stages.add("calibrate", time.perf_counter() - t)
        ae = None
        if cfg.method in ("autoencoder", "both"):
            ae = self._train_autoencoder(kh, kw, init_k)
        self.models[(kh, kw)] = SizeModels(atlas=atlas, autoencoder=ae)
        self.job = PartitionJob(
            models=dict(self.models), fit=cfg.fit, seed=cfg.seed, device=cfg.device,
            batch_size=cfg.batch_size, with_weights=cfg.with_weights,
            parts_dir=str(self.parts_dir), stats=cfg.figures,
        )  # fmt: skip

    def _train_autoencoder(self, kh: int, kw: int, init_k: np.ndarray) -> Any:
        from .autoencoder import KernelAutoencoder

        cfg = self.cfg
        t = time.perf_counter()
        if self.bar is not None:
            self.bar.set_description(f"autoencoder {kh}x{kw}")
        train = _bank_sample(self.bank, kh, kw, cfg.ae_max_train, cfg.seed)
        kwargs = {"epochs": cfg.ae_epochs} if cfg.ae_epochs else {}
        ae = KernelAutoencoder(
            kernel_size=(kh, kw), seed=cfg.seed, device=cfg.device, **kwargs
        ).fit(train)
        ae_null = float(ae.null_coverage(gaussian_null(cfg.n_null, kh, kw, seed=cfg.seed + 7919)))
        self.ae_by_size.append(
            {"kh": kh, "kw": kw, "threshold": float(ae.threshold_), "threshold_rule": str(ae.threshold_rule_),
             "null_coverage": ae_null, "trained_on": int(len(train)),
             "init_coverage": float(ae.null_coverage(init_k)) if len(init_k) else None}
        )  # fmt: skip
        spec = ae.spectrum()
        self.spectra[f"{kh}x{kw}"] = {
            "spectrum": spec.to_dict(orient="list"),
            "decoded": ae.inverse_transform(spec["z"].to_numpy()).tolist(),
        }
        self.stages.add("autoencoder_train", time.perf_counter() - t)
        return ae

    def source_file(self, key: str) -> str | None:
        """The bank file of source ``key`` (None: it yielded no kernel)."""
        f = self.bank.file_for(key)
        if Path(f).is_file():
            return str(f)
        for g, k in zip(self.bank.files(), self.bank.sources(), strict=True):
            if k == key:  # a linked bank whose file has another name
                return str(g)
        return None

    def partitions_of(self, path: str) -> Iterator[tuple[Partition, PartitionJob]]:
        """The partitions of one bank file with the job that has their sizes' models
        (calibrating the sizes not seen yet)."""
        import pyarrow.parquet as pq

        from .partitions import file_partitions

        pf = pq.ParquetFile(path)
        sizes = pf.read(columns=["kh", "kw"]).group_by(["kh", "kw"]).aggregate([])
        for kh, kw in sorted(zip(sizes["kh"].to_pylist(), sizes["kw"].to_pylist())):
            if (kh, kw) != (1, 1) and (kh, kw) not in self.models:
                self.add_size(int(kh), int(kw))
        bar = self.progress()
        bar.total = (bar.total or 0) + pf.metadata.num_rows
        bar.set_description("analyse")
        bar.refresh()
        for part in file_partitions(path):
            self.partitions += 1
            assert self.job is not None
            yield part, self.job


def _streams(cfg: AnalysisConfig) -> bool:
    """Whether sources are classified as they are harvested: nothing needs the whole bank
    first (no autoencoder to train on it, no null built from it)."""
    return cfg.method == "atlas" and cfg.null in _DATA_FREE_NULLS


def _no_kernels() -> KernelAtlasError:
    return KernelAtlasError(
        "no depthwise kernels in any source: check the models hold depthwise convolutions "
        "(groups == in_channels)"
    )


def _tasks(
    run: _Run, engine: Any, sources: list[Any], cfg: AnalysisConfig
) -> Iterator[tuple[Partition, PartitionJob]]:
    """Harvest, calibrate and yield every partition with its job.

    Streaming (see the module docstring): each source's partitions as soon as the source
    is in the bank. Otherwise the whole bank first (the autoencoder trains on a sample of
    it), then every size calibrated, then the partitions in bank order.
    """
    from .harvest.api import is_bank_dir, link_bank

    streaming = _streams(cfg)
    linked: dict[str, str] = {}
    t = time.perf_counter()
    for src in sources:
        if is_bank_dir(src):
            linked.update(link_bank(src, run.bank, fold_bn=cfg.fold_bn))
    models = [s for s in sources if not is_bank_dir(s)]
    if cfg.init_baseline or cfg.null == "init":
        from .harvest import source_key

        keys = list(linked) + [k for s in models if (k := source_key(s, fold_bn=cfg.fold_bn))]
        run.twins = _harvest_init(list(dict.fromkeys(keys)))
    run.stages.add("harvest", time.perf_counter() - t)

    def events() -> Iterator[tuple[str, str]]:
        yield from linked.items()
        if models:
            it = engine.harvest(models, run.bank, fold_bn=cfg.fold_bn, progress=not cfg.quiet)
            while True:
                t = time.perf_counter()
                event = next(it, None)
                run.stages.add("harvest", time.perf_counter() - t)
                if event is None:
                    return
                yield event

    files: list[str] = []
    for key, state in events():
        run.status.setdefault(key, state)
        path = run.source_file(key)
        if path is None:
            continue
        if streaming:
            yield from run.partitions_of(path)
        else:
            files.append(path)
    run.bank.keep_only(run.status)  # a reused bank may hold sources this run was not asked about
    if not streaming:
        for path in sorted(files, key=lambda p: Path(p).name):
            yield from run.partitions_of(path)
    if not run.models:
        raise _no_kernels()


def _analyze_into(
    staging: Path, sources: list[Any], cfg: AnalysisConfig
) -> tuple[dict[str, Any], dict[str, pd.DataFrame], pd.DataFrame, dict[str, Any]]:
    """The analysis, written into ``staging``: (summary, merged counts, harvest table,
    timings)."""
    from .bank import KernelBank
    from .engine import make_engine
    from .partitions import PartsMerger
    from .report import write_report

    stages = _Stages()
    bank = KernelBank(staging / "bank")
    parts_dir = staging / KERNELS_NAME
    parts_dir.mkdir(exist_ok=True)
    merger = PartsMerger(parts_dir)
    run = _Run(bank, cfg, stages, parts_dir)
    with make_engine(cfg.engine, scheduler=cfg.scheduler, n_workers=cfg.n_workers) as engine:
        try:
            tasks: Any = _tasks(run, engine, sources, cfg)
            if not _streams(cfg):  # harvest, calibrate, train here, with every thread
                tasks = list(tasks)
            map_t, map_cpu = time.perf_counter(), time.process_time()
            for res in engine.map_partitions(tasks):
                t = time.perf_counter()
                merger.add(res)
                stages.add("merge", time.perf_counter() - t)
                run.progress().update(res.rows)
            map_t, map_cpu = time.perf_counter() - map_t, time.process_time() - map_cpu
        finally:
            if run.bar is not None:
                run.bar.close()
        slots = engine.slots
        n_tasks = getattr(engine, "tasks", run.partitions)
    t = time.perf_counter()
    merger.finish()
    stages.add("merge", time.perf_counter() - t)
    partition_cpu = merger.seconds.pop("cpu", 0.0)
    for k, v in merger.seconds.items():
        stages.add(k, v)

    t = time.perf_counter()
    counts = bank.counts()
    merged = merger.counts()
    base = _baseline_frame(counts, run.baselines, run.heldout)
    config_doc = {**asdict(cfg), "sources": [str(s) for s in sources]}
    if run.twins and cfg.fold_bn:
        config_doc["notes"] = [INIT_FOLD_NOTE]
    autoencoder = (
        {"by_size": sorted(run.ae_by_size, key=lambda r: (r["kh"], r["kw"])),
         "spectra_sizes": sorted(run.spectra)}
        if run.ae_by_size else None
    )  # fmt: skip
    thresholds = sorted(run.thresholds, key=lambda r: (r["kh"], r["kw"]))  # stable: family order
    summary = build_summary(
        merged, config=config_doc, thresholds=thresholds, baselines=base, autoencoder=autoencoder
    )
    stages.add("summary", time.perf_counter() - t)
    t = time.perf_counter()
    write_report(
        staging, summary, spectra=run.spectra, figures=cfg.figures,
        family_stats=merger.family_stats if cfg.figures else None,
    )  # fmt: skip
    stages.add("figures", time.perf_counter() - t)
    harvested = counts
    harvested["status"] = harvested["source"].map(run.status)
    timings = {
        "engine": cfg.engine,
        "slots": slots,
        "partitions": run.partitions,
        "tasks": n_tasks,
        "map_wall_s": round(map_t, 4),  # harvest (streaming) + classify, until the last part
        "map_cpu_s": round(map_cpu, 4),  # this process's CPU meanwhile (all its threads)
        "partition_cpu_s": round(partition_cpu, 4),  # CPU of the partitions, wherever they ran
        "stages_s": {k: round(v, 4) for k, v in stages.seconds.items()},
        "calibration": sorted(run.calibration, key=lambda r: (r["kh"], r["kw"])),
    }
    return summary, merged, harvested, timings


def _baseline_frame(
    counts: pd.DataFrame, baselines: list[dict[str, Any]], heldout: dict[tuple[int, int], float]
) -> pd.DataFrame:
    """Per (source, model, size): the rate on a held-out Gaussian null, and fresh-init coverage."""
    counts = counts[MODEL_KEYS].drop_duplicates()
    counts["null_coverage"] = [
        heldout.get((kh, kw), np.nan) for kh, kw in zip(counts["kh"], counts["kw"])
    ]
    if baselines:
        b = pd.DataFrame(baselines)[["source", "kh", "kw", "init_coverage"]]
        counts = counts.merge(b, on=["source", "kh", "kw"], how="left")
    else:
        counts["init_coverage"] = np.nan
    return counts
