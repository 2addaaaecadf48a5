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

import contextlib
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from .checks import check_device, check_scheduler, check_workers
from .errors import KernelAtlasError
from .null import (
    DEFAULT_BASELINES,
    DEFAULT_NULL_SIZE,
    MAX_NULL_SIZE,
    NullReference,
    ReferenceBuilder,
    calibration_null,
    gaussian_null,
    get_null,
    measure_baselines,
    null_kinds,
    size_reason,
)
from .outputs import ANALYSIS_FILES as OUTPUT_FILES
from .partitions import Partition, PartitionJob, SizeModels
from .report.summary import MODEL_KEYS, build_summary
from .results import KERNELS_NAME
from .sizes import unsupported_reason
from .taxonomy import DEFAULT_NULL_FPR
from .threads import in_thread

__all__ = [
    "AnalysisConfig", "AnalysisResult", "analyze", "METHODS", "AE_MODES", "OUTPUT_FILES",
    "STAGE_NAMES",
]  # fmt: skip

METHODS = ("atlas", "autoencoder", "both")
# reference: the shipped per-size reference autoencoders (a size without one falls back to
# per-run training, said in summary.json); train: one trained on this run's kernels per size.
AE_MODES = ("reference", "train")
#: Stages of ``AnalysisResult.timings["stages_s"]``, in pipeline order.
STAGE_NAMES: tuple[str, ...] = (
    "harvest", "calibrate", "autoencoder_train", "read", "classify", "fits", "autoencoder",
    "stats", "write", "merge", "baselines", "summary", "figures",
)  # fmt: skip


@dataclass(frozen=True)
class AnalysisConfig:
    """Options of one analysis (every field is recorded in summary.json)."""

    method: Literal["atlas", "autoencoder", "both"] = "atlas"
    fold_bn: bool = False
    null: str = "gaussian"
    null_fpr: float = DEFAULT_NULL_FPR
    n_null: int = DEFAULT_NULL_SIZE
    seed: int = 0
    batch_size: int = 65_536
    fit: bool = True
    init_baseline: bool = True
    ae: Literal["reference", "train"] = "reference"
    baselines: tuple[str, ...] | None = None
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

    def baseline_kinds(self) -> tuple[str, ...]:
        """The null kinds measured as baselines (registry order): ``baselines`` or the
        default ones, always the calibrating ``null``, ``init`` only with ``init_baseline``."""
        kinds = DEFAULT_BASELINES if self.baselines is None else tuple(self.baselines)
        keep = {k for k in kinds if k != "init" or self.init_baseline} | {self.null}
        return tuple(k for k in null_kinds() if k in keep)

    def validate(self) -> None:
        """Refuse invalid, contradictory and no-op options (one line each), before any work."""
        if self.method not in METHODS:
            raise KernelAtlasError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.ae not in AE_MODES:
            raise KernelAtlasError(f"ae must be one of {AE_MODES}, got {self.ae!r}")
        if self.null not in null_kinds():
            raise KernelAtlasError(f"null must be one of {null_kinds()}, got {self.null!r}")
        for kind in self.baselines or ():
            get_null(kind)
        if not 0.0 < self.null_fpr < 1.0:
            if self.null_fpr != self.null_fpr:
                why = "not a number"
            elif self.null_fpr >= 1.0:
                why = "at 1 or more every null kernel passes, so almost every kernel is classified"
            else:
                why = (
                    "at 0 or less the threshold is the null's maximum and almost nothing is "
                    "classified"
                )
            raise KernelAtlasError(
                f"null_fpr (--null-fpr) must be in (0, 1), got {self.null_fpr}: {why}; it is "
                "the share of null kernels allowed through, e.g. 0.01 (1%)"
            )
        if self.batch_size < 1:
            raise KernelAtlasError(f"batch_size (--batch-size) must be >= 1, got {self.batch_size}")
        if not 100 <= self.n_null <= MAX_NULL_SIZE:
            raise KernelAtlasError(
                f"n_null (--n-null) must be between 100 and {MAX_NULL_SIZE:,}, got "
                f"{self.n_null:,}: null kernels drawn per size and per baseline kind (default "
                f"{DEFAULT_NULL_SIZE:,})"
            )
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
        if "init" in (self.baselines or ()) and not self.init_baseline:
            raise KernelAtlasError(
                "--baselines init measures the fresh-init twins, which --no-init-baseline "
                "leaves out: drop one of the two"
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


#: Fewer null kernels than this allowed through (``n_null * null_fpr``) make a coarse
#: threshold: the analysis says so (``--null init`` on a small model: 216 3x3 kernels).
COARSE_NULL_PASSES = 10


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
    """The job's stages (calibrate, autoencoder, classify, figures), each with its own bar."""
    from .progress import Progress

    return Progress(quiet=quiet).stages()


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
    force : write ``out`` even when it holds what kernelatlas did not write; that folder is
        moved aside to ``NAME.previous``, never deleted (a warning names it).

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
        self.kinds = cfg.baseline_kinds()
        self.twins: dict[str, Any] = {}
        self.models: dict[tuple[int, int], SizeModels] = {}
        self.job: PartitionJob | None = None
        self.thresholds: list[dict[str, Any]] = []
        self.baselines: list[pd.DataFrame] = []
        self.calibration: list[dict[str, Any]] = []
        self.notes: list[str] = []  # said in summary.json's config and by the CLI
        self.ae_by_size: list[dict[str, Any]] = []
        self.spectra: dict[str, Any] = {}
        self.status: dict[str, str] = {}
        self.bar: Any = None
        self._lock = threading.Lock()
        self.partitions = 0
        self._measured: set[tuple[int, int]] = set()
        # torch and the atlas are imported (~1.5 s) in a thread while the first source is
        # harvested, which needs neither
        self._panels = in_thread(_warm_imports, cfg.figures, name="kernelatlas-imports")

    @property
    def panels(self) -> tuple[tuple[Any, ...], ...] | None:
        """The atlas diagram's panels (from the family registry as it is now) when the
        report has figures, else None."""
        return self._panels.result()

    def progress(self) -> Any:
        """The job's stages (made when first needed)."""
        with self._lock:
            if self.bar is None:
                self.bar = _progress(0, self.cfg.quiet, "analyse")
            return self.bar

    def references(
        self, kh: int, kw: int, collected: ReferenceBuilder | None = None, *, scan: bool = True
    ) -> dict[str, NullReference]:
        """The null references of one size, per bank source: from what the partitions
        ``collected``, or (``scan``) read from the bank (which must be complete), or (neither)
        the fresh-init kernels only."""
        return _null_references(
            self.bank, kh, kw, self.twins, self.kinds, self.cfg, collected, scan=scan
        )

    def add_size(self, kh: int, kw: int) -> None:
        """Calibrate (or load) the atlas of one kernel size, measure its baselines (now, or
        after the map when the bank is still filling), train or load its autoencoder when
        asked, and make the job that carries it."""
        from .atlas import Atlas  # noqa: F401  (torch's import is not the calibration's time)
        from .calibration import calibrate

        cfg = self.cfg
        bar = self.progress()
        t = time.perf_counter()
        refs = init_refs = None
        if get_null(cfg.null).reference == "none":  # drawn from nothing: no reference needed
            null = calibration_null(cfg.null, {"": NullReference(kh, kw)}, cfg.n_null,
                                    seed=cfg.seed)  # fmt: skip
        elif _references_first(cfg):  # drawn from the kernels: one pass over them first
            bar.set_description(f"null references {kh}x{kw}")
            refs = self.references(kh, kw)
            null = calibration_null(cfg.null, refs, cfg.n_null, seed=cfg.seed)
        else:  # the fresh-init twins (harvested already)
            init_refs = self.references(kh, kw, scan=False)
            null = calibration_null(cfg.null, init_refs, cfg.n_null, seed=cfg.seed)
            if cfg.null == "init" and len(null) < 100:
                raise KernelAtlasError(
                    f"--null init needs at least 200 freshly initialised {kh}x{kw} kernels of "
                    "the same architecture (half to calibrate, half held out); none is known "
                    "for these sources: use --null gaussian or analyse timm:NAME sources"
                )
        # the null, then as many held-out Gaussian kernels (calibration.calibrate)
        total = len(null) + cfg.n_null
        bar.set_description(f"calibrate {kh}x{kw}", total, "kernel", counts="score")
        cal = calibrate(
            kh, kw, null_kind=cfg.null, null_fpr=cfg.null_fpr, n_null=cfg.n_null, seed=cfg.seed,
            null=null, refresh=cfg.recalibrate,
        )  # fmt: skip
        atlas = cal.atlas
        if cal.cached and bar.current is not None:
            bar.current.skipped("from the cache")
        self.calibration.append(
            {"kh": kh, "kw": kw, "cached": cal.cached, "seconds": round(cal.seconds, 4)}
        )
        if len(null) * cfg.null_fpr < COARSE_NULL_PASSES:
            if get_null(cfg.null).finite:  # as many kernels as the sources have
                fix = "use --null gaussian, or more sources"
            else:  # drawn: --n-null of them
                need = math.ceil(COARSE_NULL_PASSES / cfg.null_fpr)
                fix = f"raise --n-null to {need:,} or more, or --null-fpr"
            self.notes.append(
                f"the {kh}x{kw} calibration null ({cfg.null}) holds {len(null):,} kernels: at "
                f"--null-fpr {cfg.null_fpr:g} its threshold is set by "
                f"{len(null) * cfg.null_fpr:.1f} of them, so the realised null rate "
                f"({atlas.null_rate_:.2%}) is coarse; {fix}"
            )
        fitter = None
        if cfg.fit:
            from .fit import KernelFitter

            fitter = KernelFitter((kh, kw), device=cfg.device, seed=cfg.seed).fit(atlas)
        self.stages.add("calibrate", time.perf_counter() - t)
        if refs is not None:
            self.measure_baselines(kh, kw, atlas, refs)
        ae = None
        if cfg.method in ("autoencoder", "both"):
            if refs is None and init_refs is None:
                init_refs = self.references(kh, kw, scan=False)
            init = [r.init for r in (refs or init_refs or {}).values() if r.init is not None]
            init_k = np.concatenate(init or [np.zeros((0, kh, kw))]).astype(np.float32)
            ae = self._autoencoder(kh, kw, init_k)
        self.models[(kh, kw)] = SizeModels(atlas=atlas, autoencoder=ae, fitter=fitter)
        self.job = PartitionJob(
            models=dict(self.models), fit=cfg.fit, seed=cfg.seed, device=cfg.device,
            batch_size=cfg.batch_size, with_weights=cfg.with_weights,
            parts_dir=str(self.parts_dir), stats=cfg.figures, panels=self.panels,
            references=None if _references_first(cfg) else self.kinds,
            reference_sample=2 * cfg.n_null,
        )  # fmt: skip
        self._classify_stage = None  # the stages above ended it: a new one counts from here

    def measure_baselines(
        self,
        kh: int,
        kw: int,
        atlas: Any,
        refs: dict[str, NullReference] | None = None,
        collected: ReferenceBuilder | None = None,
    ) -> None:
        """Held-out surrogates of every baseline kind named by the size's atlas, and the
        held-out rate of the calibrating null (:func:`kernelatlas.null.measure_baselines`);
        the references are ``refs``, or built from what the partitions ``collected``."""
        cfg = self.cfg
        t = time.perf_counter()
        if refs is None:
            self.progress().set_description(f"null references {kh}x{kw}")
            refs = self.references(kh, kw, collected)
        self.progress().set_description(f"baselines {kh}x{kw}", counts="score")
        rows, pooled = measure_baselines(
            _names(atlas), refs, self.kinds, cfg.n_null, seed=cfg.seed, calibrated=cfg.null
        )
        self.baselines.append(rows.assign(kh=kh, kw=kw))
        held = (
            {"heldout_surrogates": pooled["surrogates"], "heldout_classified": pooled["classified"]}
            if pooled is not None
            else {}
        )
        for fam, thr in atlas.thresholds_.items():
            self.thresholds.append(
                {"kh": kh, "kw": kw, "method": "atlas", "family": fam, "threshold": float(thr),
                 "null_kind": cfg.null, "null_fpr": cfg.null_fpr, "null_rate": float(atlas.null_rate_),
                 "calibration_surrogates": int(atlas.n_null_), **held}
            )  # fmt: skip
        self._measured.add((kh, kw))
        self.stages.add("baselines", time.perf_counter() - t)

    def finish_baselines(self, collected: dict[tuple[int, int], ReferenceBuilder]) -> None:
        """Measure the baselines of the sizes whose references the partitions ``collected``."""
        for size, models in sorted(self.models.items()):
            if size not in self._measured:
                self.measure_baselines(*size, models.atlas, collected=collected.get(size))

    def _autoencoder(self, kh: int, kw: int, init_k: np.ndarray) -> Any:
        cfg = self.cfg
        t = time.perf_counter()
        self.progress().set_description(*_ae_stage(kh, kw, cfg), counts="ae_epoch")
        ae, ae_info = _autoencoder_for(self.bank, kh, kw, cfg)
        ae_null = float(ae.null_coverage(gaussian_null(cfg.n_null, kh, kw, seed=cfg.seed + 7919)))
        self.ae_by_size.append(
            {"kh": kh, "kw": kw, "threshold": float(ae.threshold_), "threshold_rule": str(ae.threshold_rule_),
             "null_coverage": ae_null, **ae_info,
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
        (calibrating the sizes not seen yet; sizes the atlas cannot name are left out)."""
        from .partitions import file_partitions

        parts = file_partitions(path)
        sizes = {(kh, kw): total for p in parts for kh, kw, _, total in p.sizes}
        for kh, kw in sorted(sizes):
            if unsupported_reason(kh, kw) is None and (kh, kw) not in self.models:
                self.add_size(int(kh), int(kw))
        if self.job is None:
            return  # no size of this file can be named
        bar = self.progress()
        if self._classify_stage is None:
            desc = "classify and fit" if self.cfg.fit else "classify"
            self._classify_stage = bar.set_description(
                desc, 0, "kernel", counts="fit" if self.cfg.fit else None
            )
        self._classify_stage.total += sum(sizes.values())
        for part in parts:
            self.partitions += 1
            yield part, self.job

    _classify_stage: Any = None


def _warm_imports(figures: bool) -> tuple[tuple[Any, ...], ...] | None:
    """Import the atlas (torch) and, for a report with figures, matplotlib (~0.5 s that the
    first figure would otherwise spend after the last partition, when the figures are the
    tail's longest thread); return the diagram's panels."""
    from . import atlas  # noqa: F401

    if not figures:
        return None
    from .report.diagram import diagram_columns
    from .report.figures import pyplot

    panels = tuple(tuple(c) for c in diagram_columns())
    pyplot()
    return panels


def _names(atlas: Any) -> Any:
    """``atlas.predict``'s ``family`` and ``classified`` columns, which are all the baselines
    count, without its other columns (:meth:`Atlas.scores`: the same decision)."""
    from .taxonomy import DEGENERATE, UNCLASSIFIED

    def name(kernels: np.ndarray) -> pd.DataFrame:
        _, family, classified = atlas.scores(kernels)
        named = classified | (family == DEGENERATE)  # otherwise unclassified (closest family)
        return pd.DataFrame({"family": np.where(named, family, UNCLASSIFIED), "classified": classified})  # fmt: skip

    return name


def _references_first(cfg: AnalysisConfig) -> bool:
    """Whether the calibrating null is drawn from the analysed kernels (moments or a sample
    of them), so their references are read from the bank before classifying; otherwise the
    partitions collect them as they classify and the baselines are measured after the last
    one."""
    return get_null(cfg.null).reference in ("moments", "layer_moments", "sample")


def _streams(cfg: AnalysisConfig) -> bool:
    """Whether sources are classified as they are harvested: nothing needs the whole bank
    before classifying (no autoencoder to train on it, a calibrating null drawn from
    nothing). The baselines are then measured after the last partition."""
    return cfg.method == "atlas" and get_null(cfg.null).reference == "none"


def _no_kernels(skipped: list[dict[str, Any]]) -> KernelAtlasError:
    why = "; ".join(sorted({r["reason"] for r in skipped}))
    return KernelAtlasError(
        "the sources yielded no depthwise kernels kernelatlas can name"
        + (f" ({why})" if why else "")
        + ": nothing to analyse"
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
    if "init" in run.kinds:
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
        raise _no_kernels(_skipped_sizes(run.bank, run.bank.shapes()))


def _analyze_into(
    staging: Path, sources: list[Any], cfg: AnalysisConfig
) -> tuple[dict[str, Any], dict[str, pd.DataFrame], pd.DataFrame, dict[str, Any]]:
    """The analysis, written into ``staging``: (summary, merged counts, harvest table,
    timings)."""
    from .bank import KernelBank
    from .engine import make_engine
    from .partitions import PartsMerger
    from .report import start_page, write_report

    stages = _Stages()
    bank = KernelBank(staging / "bank")
    parts_dir = staging / KERNELS_NAME
    parts_dir.mkdir(exist_ok=True)
    merger = PartsMerger(parts_dir)
    # the engine first: a LocalCluster's processes start before the driver imports torch
    with make_engine(cfg.engine, scheduler=cfg.scheduler, n_workers=cfg.n_workers) as engine:
        run = _Run(bank, cfg, stages, parts_dir)
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
            t = time.perf_counter()
            merger.finish()
            stages.add("merge", time.perf_counter() - t)
            partition_cpu = merger.seconds.pop("cpu", 0.0)
            for k, v in merger.seconds.items():
                stages.add(k, v)
            t = time.perf_counter()
            counts = bank.counts()
            merged = merger.counts()
            summarise = _summariser(run, sources, merged, counts)
            # the page's pass over the kernels needs the layers and models, not the baselines:
            # it runs in a thread while they are measured (report.start_page), as do the
            # figures that need no baseline (report.write_report's ``final``)
            early = summarise(thresholds=[])
            page = start_page(staging, early, figures=cfg.figures, init_twins=run.twins)
            stages.add("summary", time.perf_counter() - t)
            import torch

            baselines = in_thread(
                run.finish_baselines, merger.references, name="kernelatlas-baselines",
                torch_threads=torch.get_num_threads(),
            )  # fmt: skip
        except BaseException:
            if run.bar is not None:
                run.bar.close()
            raise
        slots = engine.slots
        n_tasks = getattr(engine, "tasks", run.partitions)

    def final() -> dict[str, Any]:
        """The summary, once the baselines are measured (from the partitions' references)."""
        try:
            baselines.result()
        finally:
            merger.references.clear()  # (the phase samples: up to 2 * n_null kernels a model)
            if run.bar is not None:
                run.bar.close()
        t = time.perf_counter()
        base = _baseline_frame(counts, run.baselines)
        thresholds = sorted(run.thresholds, key=lambda r: (r["kh"], r["kw"]))  # family order
        done.append(summarise(thresholds=thresholds, baselines=base))
        stages.add("summary", time.perf_counter() - t)
        return done[-1]

    done: list[dict[str, Any]] = []
    t = time.perf_counter()
    try:
        write_report(
            staging, early, spectra=run.spectra, figures=cfg.figures,
            panel_stats=(run.panels, merger.panel_stats) if run.panels is not None else None,
            progress=run.progress().progress, init_twins=run.twins, page=page, final=final,
        )  # fmt: skip
    finally:
        page.close()
        with contextlib.suppress(BaseException):
            baselines.result()  # never left running once the analysis ends
        if run.bar is not None:
            run.bar.close()
    (summary,) = done
    stages.add("figures", time.perf_counter() - t)
    engine.wait_closed()  # a cluster may have been shutting down while the report was written
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


def _summariser(
    run: _Run, sources: Sequence[Any], merged: dict[str, pd.DataFrame], counts: pd.DataFrame
) -> Any:
    """:func:`build_summary` of the merged counts with all but the ``thresholds`` and
    ``baselines`` given (the config, its notes, the autoencoders, the skipped sizes)."""
    from .report.spectra import spectra_docs

    cfg = run.cfg
    skipped = _skipped_sizes(run.bank, run.bank.shapes())  # sizes the atlas cannot name: listed
    config_doc = {**asdict(cfg), "sources": [str(s) for s in sources]}
    notes = [INIT_FOLD_NOTE] if run.twins and cfg.fold_bn else []
    notes += run.notes
    for kh, kw in sorted({(int(a), int(b)) for a, b in zip(counts["kh"], counts["kw"])}):
        notes += [r for k in run.kinds if (r := size_reason(k, kh, kw))]  # a baseline left out
    if notes:
        config_doc["notes"] = notes
    autoencoder = (
        {"by_size": sorted(run.ae_by_size, key=lambda r: (r["kh"], r["kw"])),
         "spectra_sizes": sorted(run.spectra), "spectra": spectra_docs(run.spectra)}
        if run.ae_by_size else None
    )  # fmt: skip
    return partial(
        build_summary, merged, config=config_doc, autoencoder=autoencoder, null=cfg.null,
        skipped=skipped,
    )  # fmt: skip


def _ae_stage(kh: int, kw: int, cfg: AnalysisConfig) -> tuple[str, int, str]:
    """The progress stage of one size's autoencoder: its epochs when it trains, none when
    the shipped reference is used."""
    import inspect

    from .autoencoder import KernelAutoencoder
    from .autoencoder.reference import has_reference

    if cfg.ae == "reference" and has_reference((kh, kw)):
        return f"autoencoder {kh}x{kw} (reference)", 0, "epoch"
    epochs = cfg.ae_epochs or inspect.signature(KernelAutoencoder).parameters["epochs"].default
    return f"autoencoder {kh}x{kw}", int(epochs), "epoch"


def _autoencoder_for(bank: Any, kh: int, kw: int, cfg: AnalysisConfig) -> tuple[Any, dict]:
    """The autoencoder of one size and what summary.json says about it.

    ``cfg.ae == "reference"``: the shipped reference (the same for every run, so a model's
    AE figures do not depend on its company); a size without one, and ``"train"``: trained
    on this run's kernels (a seeded sample of at most ``cfg.ae_max_train``).
    """
    from .autoencoder import KernelAutoencoder
    from .autoencoder.model import FEW_STEPS, optimiser_steps
    from .autoencoder.reference import has_reference, load_reference, why_no_reference

    if cfg.ae == "reference" and has_reference((kh, kw)):
        ae = load_reference((kh, kw), device=cfg.device)
        if ae.threshold_rule_ == "null" and ae.null_fpr != cfg.null_fpr:
            ae.calibrate(null_fpr=cfg.null_fpr)
        prov = ae.provenance_
        info = {
            "autoencoder": "reference",
            "trained_on": int(ae.n_train_),
            "reference": {
                "name": f"ae_{kh}x{kw}",
                "kernelatlas_version": prov["kernelatlas_version"],
                "bank_sha256": prov["bank"]["sha256"],
                "models": int(prov["bank"]["models"]),
                "sources": [s["name"] for s in prov["sources"]],
            },
            "note": None,
        }
        return ae, info
    train = _bank_sample(bank, kh, kw, cfg.ae_max_train, cfg.seed)
    kwargs = {"epochs": cfg.ae_epochs} if cfg.ae_epochs else {}
    ae = KernelAutoencoder(
        kernel_size=(kh, kw), seed=cfg.seed, device=cfg.device, null_fpr=cfg.null_fpr, **kwargs
    ).fit(train)
    notes = []
    if cfg.ae == "reference":
        notes.append(
            f"no reference autoencoder for {kh}x{kw} ({why_no_reference((kh, kw))}): trained"
            f" on this run's {len(train):,} kernels, so these autoencoder figures depend on"
            " what else is in the run"
        )
    steps = optimiser_steps(len(train), ae.batch_size, ae.epochs)
    if 0 < steps < FEW_STEPS:
        notes.append(
            f"the {kh}x{kw} autoencoder trained for only {steps} optimiser steps ({ae.epochs}"
            f" epochs of {len(train):,} kernels at batch {ae.batch_size}; the references took"
            " about 55,000), too few for its curve to reach every family: its classified"
            " share is a floor (raise --ae-epochs)"
        )
    note = "; ".join(notes) or None
    info = {"autoencoder": "run", "trained_on": int(len(train)), "reference": None, "note": note}
    return ae, info


def _null_references(
    bank: Any,
    kh: int,
    kw: int,
    twins: dict[str, Any],
    kinds: Sequence[str],
    cfg: AnalysisConfig,
    collected: ReferenceBuilder | None = None,
    *,
    scan: bool = True,
) -> dict[str, Any]:
    """The null references of one kernel size, per bank source: merged from what the
    partitions ``collected`` (its ``expected`` names the sources), or read from the bank
    (``scan``: one pass over the row groups holding that size, added as the partitions add
    them, so both give the same references), or the fresh-init twins only."""
    import pyarrow.compute as pc

    from .bank import weights_array
    from .partitions import file_partitions

    if collected is not None:
        expected = collected.expected
    else:
        counts = bank.counts().query("kh == @kh and kw == @kw")
        expected = counts.groupby("source")["kernels"].sum().to_dict()
    builder = ReferenceBuilder(
        kh, kw, kinds=kinds, expected=expected, sample_size=2 * cfg.n_null, seed=cfg.seed
    )
    if collected is not None:
        builder.merge(collected)
    elif scan and builder.collects:
        cols = ["source", "layer_index", "kh", "kw", "weights"]
        for f in bank.files():
            pf = None
            for part in file_partitions(str(f), bank.storage_options):
                at = {(a, b): first for a, b, first, _ in part.sizes}
                if (kh, kw) not in at:
                    continue
                pf = pf or bank.parquet_file(f)
                t = pf.read_row_group(part.row_group, columns=cols)
                if len(part.sizes) > 1:
                    t = t.filter(pc.and_(pc.equal(t["kh"], kh), pc.equal(t["kw"], kw)))
                source = str(t.column("source")[0].as_py())  # one source per bank file
                k = weights_array(t.column("weights"), kh, kw)
                builder.add(source, t.column("layer_index").to_numpy(), k, first=at[(kh, kw)])
    for key, twin in twins.items():  # keyed by the bank's source key
        if key in expected:
            builder.set_init(key, _layer_kernels(twin, kh, kw))
    return builder.build()


def _baseline_frame(counts: pd.DataFrame, baselines: list[pd.DataFrame]) -> pd.DataFrame:
    """Baseline counts, one row per (source, model, kh, kw, kind)."""
    rows = pd.concat(baselines, ignore_index=True).rename(columns={"model": "source"})
    models = counts[MODEL_KEYS].drop_duplicates()
    return models.merge(rows, on=["source", "kh", "kw"], how="inner")


def _skipped_sizes(bank: Any, shapes: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """Per (source, model, size) the layers and kernels of sizes the atlas cannot name."""
    bad = {s for s in shapes if unsupported_reason(*s) is not None}
    if not bad:
        return []
    counts = bank.counts()
    rows = []
    for rec in counts.to_dict(orient="records"):
        size = (int(rec["kh"]), int(rec["kw"]))
        if size in bad:
            rows.append(
                {"source": str(rec["source"]), "model": str(rec["model"]), "kh": size[0],
                 "kw": size[1], "layers": int(rec["layers"]), "kernels": int(rec["kernels"]),
                 "reason": unsupported_reason(*size)}
            )  # fmt: skip
    return rows
