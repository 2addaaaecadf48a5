"""The main job: sources -> kernel bank -> atlas / fits / autoencoder -> tables, figures, HTML.

``analyze`` streams the bank one batch at a time (peak memory bounded by the batch size),
merges exact per-batch counts into the coverage tables, and publishes the output
directory atomically: the new state is built beside it and swapped in with renames, so a
reader (or a crash) only ever sees the previous complete state or the new one. What may be
written where (never over a user's folder or an input, one run per output) is
:mod:`kernelatlas.outputs`'s.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .checks import check_device, check_scheduler, check_workers
from .errors import KernelAtlasError
from .null import (
    DEFAULT_BASELINES,
    DEFAULT_NULL_SIZE,
    ReferenceBuilder,
    calibration_null,
    gaussian_null,
    get_null,
    measure_baselines,
    null_kinds,
)
from .outputs import ANALYSIS_FILES as OUTPUT_FILES
from .report.summary import MODEL_KEYS, build_summary, merge_counts, partial_counts
from .sizes import unsupported_reason
from .taxonomy import DEFAULT_NULL_FPR

__all__ = ["AnalysisConfig", "AnalysisResult", "analyze", "METHODS", "AE_MODES", "OUTPUT_FILES"]

METHODS = ("atlas", "autoencoder", "both")
# reference: the shipped per-size reference autoencoders (a size without one falls back to
# per-run training, said in summary.json); train: one trained on this run's kernels per size.
AE_MODES = ("reference", "train")
# Provenance columns carried from the bank into kernels.parquet (weights come last).
_CARRY = [
    "source", "model", "format", "layer", "layer_index", "depth", "channel",
    "kh", "kw", "stride", "dilation", "bn_folded", "dtype", "nonfinite",
]  # fmt: skip
# Columns that the coverage tables count.
_COUNTED = ["source", "model", "kh", "kw", "layer", "layer_index", "depth", "family", "classified"]
_AE_COUNTED = ["ae_family", "ae_classified"]
# Fold the per-batch partial counts into one table every this many batches.
_FOLD_EVERY = 256


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
    """Where the outputs went and the summary document."""

    out: Path
    summary: dict[str, Any]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    harvest: pd.DataFrame | None = None  # counts per source and size, with a ``status``

    @property
    def kernels_path(self) -> Path:
        return self.out / "kernels.parquet"


# --------------------------------------------------------------------------- stages
def _progress(total: int, quiet: bool, desc: str):
    """The job's stages (calibrate, autoencoder, classify, figures), each with its own bar."""
    from .progress import Progress

    return Progress(quiet=quiet).stages()


def _init_counterpart(source: str) -> str | None:
    """The freshly initialised twin of a source (same architecture), where one is known."""
    if source.startswith("timm:"):
        name = source[len("timm:") :].split("?")[0]
        return None if name.endswith("@init") else f"timm:{name}@init"
    try:
        from .harvest.zoo import get_source

        entry = get_source(source)
    except (KernelAtlasError, ImportError, KeyError):
        return None
    return getattr(entry, "init_source", None)


#: Why the fresh-init twins are never batch-norm folded (stated in summary.json).
INIT_FOLD_NOTE = (
    "fresh-init twins are harvested without --fold-bn: at initialisation a batch norm is the "
    "identity (gamma 1, running variance 1), so folding it would change no normalised kernel"
)


def _harvest_init(keys: Sequence[str]) -> dict[str, Any]:
    """Harvest the fresh-init twin of every source that has one (unfolded, see
    :data:`INIT_FOLD_NOTE`): bank key of the source -> HarvestResult."""
    from .harvest import harvest

    twins = {}
    for key in keys:
        twin = _init_counterpart(key.removesuffix("+fold_bn"))
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


@dataclass(frozen=True)
class Partition:
    """One unit of work: a row group of one bank file (<= 65,536 kernels)."""

    path: str
    row_group: int


def bank_partitions(bank: Any) -> list[Partition]:
    """Every (file, row group) of a bank, in a fixed order (the order of kernels.parquet)."""
    from .bank import open_parquet

    parts = []
    for f in bank.files():
        n = open_parquet(f).metadata.num_row_groups
        parts.extend(Partition(str(f), rg) for rg in range(n))
    return parts


def analyse_record_batch(
    batch: pa.RecordBatch, models: dict[tuple[int, int], dict[str, Any]], cfg: AnalysisConfig
) -> pa.Table:
    """Analyse one batch of bank rows (any mix of kernel sizes), keeping the row order.

    Returns provenance, atlas, fit and autoencoder columns and the weights, one row per
    kernel; 1x1 rows (never harvested) and sizes without models are dropped.
    """
    from .bank import weights_array

    kh_all = batch.column("kh").to_numpy()
    kw_all = batch.column("kw").to_numpy()
    pieces, order = [], []
    for kh, kw in sorted(set(zip(kh_all.tolist(), kw_all.tolist()))):
        if (kh, kw) not in models:
            continue
        idx = np.flatnonzero((kh_all == kh) & (kw_all == kw))
        # One kernel size in the batch (the usual case): no copy of the weights.
        sub = batch if len(idx) == batch.num_rows else batch.take(pa.array(idx))
        k = weights_array(sub.column("weights"), kh, kw)
        cols = [sub.select(_CARRY).to_pandas(), models[(kh, kw)]["atlas"].predict(k, details=True)]
        if cfg.fit:
            fitter = models[(kh, kw)].get("fit")
            if fitter is None:  # models built by hand: fit from this size's atlas
                from .fit import KernelFitter

                fitter = KernelFitter((kh, kw), device=cfg.device, seed=cfg.seed)
                fitter = fitter.fit(models[(kh, kw)]["atlas"])
            cols.append(fitter.predict(k))
        if "ae" in models[(kh, kw)]:
            cols.append(models[(kh, kw)]["ae"].predict(k))
        df = pd.concat([c.reset_index(drop=True) for c in cols], axis=1)
        table = pa.Table.from_pandas(df, preserve_index=False)
        pieces.append(table.append_column("weights", sub.column("weights")))
        order.append(idx)
    if not pieces:
        return pa.table({})
    if len(pieces) == 1 and len(order[0]) == batch.num_rows:
        return pieces[0]  # rows already in bank order
    table = pa.concat_tables(pieces)
    return table.take(pa.array(np.argsort(np.concatenate(order), kind="stable")))


def analyse_partition(
    part: Partition, models: dict[tuple[int, int], dict[str, Any]], cfg: AnalysisConfig
) -> Iterator[pa.Table]:
    """Analysed tables of one partition, ``cfg.batch_size`` rows at a time."""
    from .bank import open_parquet

    pf = open_parquet(part.path)
    for batch in pf.iter_batches(batch_size=cfg.batch_size, row_groups=[part.row_group]):
        if batch.num_rows:
            table = analyse_record_batch(batch, models, cfg)
            if table.num_rows:
                yield table


def run_engine(
    parts: Sequence[Partition], models: dict[tuple[int, int], dict[str, Any]], cfg: AnalysisConfig
) -> Iterator[pa.Table]:
    """Analysed tables of all partitions, in partition order, on the configured engine."""
    if cfg.engine == "dask":
        from .engine import run_dask

        return run_dask(parts, models, cfg, scheduler=cfg.scheduler)
    return run_local(parts, models, cfg)


def run_local(
    parts: Sequence[Partition], models: dict[tuple[int, int], dict[str, Any]], cfg: AnalysisConfig
) -> Iterator[pa.Table]:
    """The single-process engine: partitions in order, batch by batch."""
    for part in parts:
        yield from analyse_partition(part, models, cfg)


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
    """
    from dataclasses import replace

    from .harvest.api import source_paths
    from .outputs import replacing
    from .report.summary import coverage_tables

    cfg = replace(config or AnalysisConfig(), **overrides)
    cfg.validate()
    sources = list(sources)
    if not sources:
        raise KernelAtlasError("no sources given: name at least one (see `kernelatlas sources`)")
    inputs = [p for s in sources for p in source_paths(s)]
    with replacing(out, kind="analysis", inputs=inputs, force=force, keep=("bank",)) as stage:
        summary, merged, harvested = _analyze_into(stage.path, sources, cfg)
        stage.publish()
    return AnalysisResult(stage.out, summary, coverage_tables(merged), harvested)


def _fill_bank(bank: Any, sources: list[Any], cfg: AnalysisConfig) -> dict[str, str]:
    """Harvest ``sources`` into ``bank`` and link the given bank folders into it; keep only
    those sources. Returns {source key: status} (``harvest_to_bank``'s, or ``"bank"``)."""
    from .harvest import harvest_to_bank
    from .harvest.api import is_bank_dir, link_bank

    status: dict[str, str] = {}
    for src in sources:
        if is_bank_dir(src):
            status.update(link_bank(src, bank, fold_bn=cfg.fold_bn))
    models = [s for s in sources if not is_bank_dir(s)]
    if models:
        if cfg.engine == "dask":
            from .engine import harvest_dask

            counts = harvest_dask(models, bank, fold_bn=cfg.fold_bn, progress=not cfg.quiet,
                                  scheduler=cfg.scheduler, n_workers=cfg.n_workers)  # fmt: skip
        else:
            counts = harvest_to_bank(models, bank, fold_bn=cfg.fold_bn, progress=not cfg.quiet)
        status.update(zip(counts["source"], counts["status"]))
    bank.keep_only(status)  # a reused bank may hold sources this run was not asked about
    return status


def _analyze_into(
    staging: Path, sources: list[Any], cfg: AnalysisConfig
) -> tuple[dict[str, Any], dict[str, pd.DataFrame], pd.DataFrame]:
    """The analysis, written into ``staging``: (summary, merged counts, harvest table)."""
    from .atlas import Atlas
    from .bank import KernelBank

    bank = KernelBank(staging / "bank")
    status = _fill_bank(bank, sources, cfg)
    shapes = [s for s in bank.shapes() if s != (1, 1)]
    skipped = _skipped_sizes(bank, shapes)  # sizes the atlas cannot name: counted, listed
    shapes = [s for s in shapes if unsupported_reason(*s) is None]
    if not shapes:
        why = "; ".join(sorted({r["reason"] for r in skipped}))
        raise KernelAtlasError(
            "the sources yielded no depthwise kernels kernelatlas can name"
            + (f" ({why})" if why else "")
            + ": nothing to analyse"
        )

    kinds = cfg.baseline_kinds()
    twins = _harvest_init(list(status)) if "init" in kinds else {}
    thresholds: list[dict[str, Any]] = []
    baselines: list[pd.DataFrame] = []
    ae_by_size: list[dict[str, Any]] = []
    spectra: dict[str, Any] = {}
    counts = []
    total = int(bank.counts().query("not (kh == 1 and kw == 1)")["kernels"].sum())
    total -= sum(r["kernels"] for r in skipped)
    writer = None
    tmp_kernels = staging / "kernels.parquet.tmp"
    all_models: dict[tuple[int, int], dict[str, Any]] = {}
    bar = _progress(total, cfg.quiet, "analyse")
    try:
        for kh, kw in shapes:
            bar.set_description(f"null references {kh}x{kw}")
            refs = _null_references(bank, kh, kw, twins, kinds, cfg)
            null = calibration_null(cfg.null, refs, cfg.n_null, seed=cfg.seed)
            bar.set_description(f"calibrate {kh}x{kw}", len(null), "kernel", counts="score")
            if cfg.null == "init" and len(null) < 100:
                raise KernelAtlasError(
                    f"--null init needs at least 200 freshly initialised {kh}x{kw} kernels of "
                    "the same architecture (half to calibrate, half held out); none is known "
                    "for these sources: use --null gaussian or analyse timm:NAME sources"
                )
            atlas = Atlas(
                kernel_size=(kh, kw), null_fpr=cfg.null_fpr, n_null=cfg.n_null, seed=cfg.seed
            ).fit(null=null)
            bar.set_description(f"baselines {kh}x{kw}", counts="score")
            rows, pooled = measure_baselines(
                atlas.predict, refs, kinds, cfg.n_null, seed=cfg.seed, calibrated=cfg.null
            )
            baselines.append(rows.assign(kh=kh, kw=kw))
            held = {"heldout_surrogates": pooled["surrogates"], "heldout_classified": pooled["classified"]}  # fmt: skip
            for fam, thr in atlas.thresholds_.items():
                thresholds.append(
                    {"kh": kh, "kw": kw, "method": "atlas", "family": fam, "threshold": float(thr),
                     "null_kind": cfg.null, "null_fpr": cfg.null_fpr, "null_rate": float(atlas.null_rate_),
                     "calibration_surrogates": int(atlas.n_null_), **held}
                )  # fmt: skip
            init_k = np.concatenate(
                [r.init for r in refs.values() if r.init is not None] or [np.zeros((0, kh, kw))]
            ).astype(np.float32)
            models: dict[str, Any] = {"atlas": atlas}
            if cfg.fit:
                from .fit import KernelFitter

                models["fit"] = KernelFitter((kh, kw), device=cfg.device, seed=cfg.seed).fit(atlas)
            all_models[(kh, kw)] = models
            if cfg.method in ("autoencoder", "both"):
                bar.set_description(*_ae_stage(kh, kw, cfg), counts="ae_epoch")
                ae, ae_info = _autoencoder_for(bank, kh, kw, cfg)
                models["ae"] = ae
                ae_null = float(
                    ae.null_coverage(gaussian_null(cfg.n_null, kh, kw, seed=cfg.seed + 7919))
                )
                ae_by_size.append(
                    {"kh": kh, "kw": kw, "threshold": float(ae.threshold_), "threshold_rule": str(ae.threshold_rule_),
                     "null_coverage": ae_null, **ae_info,
                     "init_coverage": float(ae.null_coverage(init_k)) if len(init_k) else None}
                )  # fmt: skip
                spec = ae.spectrum()
                spectra[f"{kh}x{kw}"] = {
                    "spectrum": spec.to_dict(orient="list"),
                    "decoded": ae.inverse_transform(spec["z"].to_numpy()).tolist(),
                }
        bar.set_description("classify and fit" if cfg.fit else "classify", total, "kernel",
                            counts="fit" if cfg.fit else None)  # fmt: skip
        for table in run_engine(bank_partitions(bank), all_models, cfg):
            counted = _COUNTED + [c for c in _AE_COUNTED if c in table.column_names]
            counts.append(partial_counts(table.select(counted).to_pandas()))
            if len(counts) >= _FOLD_EVERY:  # exact; keeps the driver's memory bounded
                counts = [merge_counts(counts)]
            if writer is None:
                meta = {b"kernelatlas_version": __version__.encode()}
                writer = pq.ParquetWriter(tmp_kernels, table.schema.with_metadata(meta))
            writer.write_table(table.cast(writer.schema))
            bar.update(table.num_rows)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    os.replace(tmp_kernels, staging / "kernels.parquet")

    base = _baseline_frame(bank, baselines)
    config_doc = {**asdict(cfg), "sources": [str(s) for s in sources]}
    if twins and cfg.fold_bn:
        config_doc["notes"] = [INIT_FOLD_NOTE]
    from .report.spectra import spectra_docs

    autoencoder = (
        {"by_size": ae_by_size, "spectra_sizes": sorted(spectra), "spectra": spectra_docs(spectra)}
        if ae_by_size
        else None
    )
    merged = merge_counts(counts)
    summary = build_summary(
        merged, config=config_doc, thresholds=thresholds, baselines=base, autoencoder=autoencoder,
        null=cfg.null,
        skipped=skipped,
    )  # fmt: skip
    from .report import write_report

    write_report(staging, summary, spectra=spectra, figures=cfg.figures, progress=bar.progress)
    harvested = bank.counts()
    harvested["status"] = harvested["source"].map(status)
    return summary, merged, harvested


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
    note = None
    if cfg.ae == "reference":
        note = (
            f"no reference autoencoder for {kh}x{kw} ({why_no_reference((kh, kw))}): trained"
            f" on this run's {len(train):,} kernels, so these autoencoder figures depend on"
            " what else is in the run"
        )
    info = {"autoencoder": "run", "trained_on": int(len(train)), "reference": None, "note": note}
    return ae, info


def _null_references(
    bank: Any, kh: int, kw: int, twins: dict[str, Any], kinds: Sequence[str], cfg: AnalysisConfig
) -> dict[str, Any]:
    """The null references of one kernel size, per bank source (one streamed pass)."""
    from .bank import weights_array

    counts = bank.counts().query("kh == @kh and kw == @kw")
    expected = counts.groupby("source")["kernels"].sum().to_dict()
    builder = ReferenceBuilder(
        kh, kw, kinds=kinds, expected=expected, sample_size=2 * cfg.n_null, seed=cfg.seed
    )
    if any(get_null(k).reference not in ("none", "init") for k in kinds):
        for batch in bank.iter_batches(kh=kh, kw=kw, columns=["source", "layer_index", "weights"]):
            k = weights_array(batch["weights"], kh, kw)
            src = batch["source"].to_numpy(object)
            layer = batch["layer_index"].to_numpy()
            for s in pd.unique(src):  # sources, not kernels
                sel = src == s
                builder.add(s, layer[sel], k[sel])
    for key, twin in twins.items():  # keyed by the bank's source key
        if key in expected:
            builder.set_init(key, _layer_kernels(twin, kh, kw))
    return builder.build()


def _baseline_frame(bank: Any, baselines: list[pd.DataFrame]) -> pd.DataFrame:
    """Baseline counts, one row per (source, model, kh, kw, kind)."""
    rows = pd.concat(baselines, ignore_index=True).rename(columns={"model": "source"})
    models = bank.counts()[MODEL_KEYS].drop_duplicates()
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
