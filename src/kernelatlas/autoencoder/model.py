"""``KernelAutoencoder``: the paper's per-size 1-D cosine autoencoder as an estimator."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import __version__
from ..errors import FormatError, KernelAtlasError
from ..estimator import BaseEstimator, Device, Interval, KernelSize, NotFittedError
from ..normalize import as_kernel_array, normalize
from ..null import DEFAULT_NULL_SIZE, calibrate_threshold, gaussian_null, null_rate
from ..progress import Progress, advance
from ..taxonomy import DEFAULT_NULL_FPR, DEGENERATE, PAPER_AE_THRESHOLDS, UNCLASSIFIED
from ._net import AENet, cosine_distance
from .spectrum import (
    SEGMENT_COLUMNS,
    SPECTRUM_COLUMNS,
    assign_segments,
    grid_counts,
    name_patterns,
    segment_label,
    segment_spectrum,
)

__all__ = [
    "KernelAutoencoder",
    "PREDICT_COLUMNS",
    "resolve_device",
    "parse_kernel_size",
    "FEW_STEPS",
    "optimiser_steps",
]

PREDICT_COLUMNS: tuple[str, ...] = ("ae_latent", "ae_distance", "ae_classified", "ae_family")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "kernelatlas.autoencoder/1"
_INFER_BATCH = 65_536
#: Fewer optimiser steps than this get a warning (``autoencoder train``) or a note
#: (``analyze``): docs/autoencoder.md measures the class defaults (20 epochs at batch 4096,
#: ~240 steps on the pooled banks) as far too short for the curve to reach every family;
#: the shipped references took about 55,000.
FEW_STEPS = 1000


def optimiser_steps(n_kernels: int, batch_size: int, epochs: int) -> int:
    """Optimiser steps of a training on ``n_kernels`` (one per batch, per epoch)."""
    return math.ceil(int(n_kernels) / max(1, int(batch_size))) * int(epochs)


def parse_kernel_size(kernel_size: object) -> tuple[int, int]:
    """``7`` or ``(kh, kw)`` -> ``(kh, kw)``; raises on anything else."""
    if isinstance(kernel_size, (int, np.integer)) and not isinstance(kernel_size, bool):
        kh = kw = int(kernel_size)
    elif (
        isinstance(kernel_size, (tuple, list))
        and len(kernel_size) == 2
        and all(isinstance(v, (int, np.integer)) for v in kernel_size)
    ):
        kh, kw = (int(v) for v in kernel_size)
    else:
        raise KernelAtlasError(f"kernel_size must be an int or (kh, kw), got {kernel_size!r}")
    if kh < 1 or kw < 1 or kh * kw < 2:
        raise KernelAtlasError(
            f"kernel_size {kh}x{kw} has fewer than 2 weights: a 1x1 kernel has no pattern to learn"
        )
    return kh, kw


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when available, else CPU; refuse a CUDA device that is not there."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise KernelAtlasError(f"unknown device {device!r} ({exc}): use 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise KernelAtlasError(
            f"device {device!r} asked for, but torch sees no CUDA GPU: use device='cpu'"
        )
    return dev


class KernelAutoencoder(BaseEstimator):
    """One-dimensional cosine autoencoder for one kernel size (Babaiee et al., ICLR 2024).

    Kernels are centred and scaled to unit norm (:func:`kernelatlas.normalize.normalize`;
    degenerate kernels are dropped from training and get NaN latents). An MLP encoder maps
    a kernel to a latent ``z`` in (0, 1) (sigmoid); an MLP decoder maps ``z`` back to a
    zero-mean pattern; the loss is the cosine distance ``1 - cos`` between a kernel and its
    reconstruction. A kernel is *classified* when that distance is below the paper's
    threshold (7x7: 0.3, 5x5: 0.2, :data:`kernelatlas.taxonomy.PAPER_AE_THRESHOLDS`); for
    other sizes the threshold is calibrated so that a fraction ``null_fpr`` of iid Gaussian
    kernels pass (:func:`kernelatlas.null.calibrate_threshold`); ``threshold_rule_`` says
    which rule was used. After fitting, the decoded latent line is named by the atlas
    (``spectrum_``) and cut into contiguous named segments (``segments_``).

    Parameters
    ----------
    kernel_size : int or (kh, kw)
    hidden : width of the two hidden layers of encoder and decoder.
    epochs : passes over the training kernels.
    batch_size : kernels per optimisation step.
    lr : peak Adam learning rate (cosine-annealed to 1% over training).
    device : ``"cpu"``, ``"cuda"``, ... or ``None`` (CUDA when available).
    seed : seeds the initialisation, the shuffling and the null draws; the same seed gives
        the same latent on the same device.
    progress : show the training's progress on stderr (a tqdm bar on a terminal, plain
        lines otherwise).
    n_grid : points of the latent grid decoded and named for the spectrum.
    min_segment : segments shorter than this many grid points merge into a neighbour.
    null_fpr : false-positive rate on the Gaussian null for null-calibrated thresholds.
    null_size : number of null kernels drawn for calibration and for ``null_coverage_``.

    Attributes
    ----------
    threshold_ : float; ``threshold_rule_`` : ``'paper'`` or ``'null'``.
    null_coverage_ : fraction of a fresh Gaussian null draw classified (under threshold_).
    spectrum_ : DataFrame (``z, family, orientation, polarity, scale, score, classified,
        label``), the decoded grid named by the atlas.
    segments_ : DataFrame, contiguous named segments of the latent line
        (:data:`kernelatlas.autoencoder.spectrum.SEGMENT_COLUMNS`).
    loss_history_ : list of the mean training loss per epoch.
    n_train_, n_degenerate_ : kernels trained on, and dropped as degenerate.
    latent_counts_ : int64 [n_grid], training kernels per cell of the latent grid (the
        segments' ``mass``; kept so that :meth:`rename_spectrum` can re-name the line).

    Examples
    --------
    >>> import numpy as np
    >>> from kernelatlas.autoencoder import KernelAutoencoder
    >>> k = np.random.default_rng(0).standard_normal((256, 3, 3)).astype(np.float32)
    >>> ae = KernelAutoencoder(3, hidden=16, epochs=1, name_spectrum=False).fit(k)
    >>> ae.transform(k).shape
    (256,)
    """

    _parameter_constraints = {
        "kernel_size": [KernelSize()],
        "hidden": [Interval(int, 1, None)],
        "epochs": [Interval(int, 1, None)],
        "batch_size": [Interval(int, 1, None)],
        "lr": [Interval(float, 0.0, None, closed="neither")],
        "device": [None, Device()],
        "seed": [int],
        "progress": ["boolean"],
        "n_grid": [Interval(int, 2, None)],
        "min_segment": [Interval(int, 1, None)],
        "null_fpr": [Interval(float, 0.0, 1.0, closed="left")],
        "null_size": [Interval(int, 1, None)],
        "name_spectrum": ["boolean"],
        "latent_noise": [Interval(float, 0.0, None)],
        "search": ["boolean"],
    }

    def __init__(
        self,
        kernel_size: int | tuple[int, int] = 7,
        *,
        hidden: int = 128,
        epochs: int = 20,
        batch_size: int = 4096,
        lr: float = 1e-2,
        device: str | torch.device | None = None,
        seed: int = 0,
        progress: bool = False,
        n_grid: int = 512,
        min_segment: int = 3,
        null_fpr: float = DEFAULT_NULL_FPR,
        null_size: int = DEFAULT_NULL_SIZE,
        name_spectrum: bool = True,
        latent_noise: float = 0.0,
        search: bool = True,
    ) -> None:
        self.kernel_size = kernel_size
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.device = device
        self.seed = seed
        self.progress = progress
        self.n_grid = n_grid
        self.min_segment = min_segment
        self.null_fpr = null_fpr
        self.null_size = null_size
        self.name_spectrum = name_spectrum
        self.latent_noise = latent_noise
        self.search = search

    def _validate_params(self) -> None:
        self._shape = parse_kernel_size(self.kernel_size)
        for name in ("hidden", "epochs", "batch_size", "n_grid", "min_segment", "null_size"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise KernelAtlasError(f"{name} must be a positive integer, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise KernelAtlasError(f"lr must be a positive number, got {self.lr!r}")
        if not 0.0 <= float(self.null_fpr) < 1.0:
            raise KernelAtlasError(f"null_fpr must be in [0, 1), got {self.null_fpr!r}")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
            raise KernelAtlasError(f"seed must be an integer, got {self.seed!r}")
        self._device = resolve_device(self.device)

    def _check_fitted(self) -> None:
        if not hasattr(self, "net_"):
            raise NotFittedError(
                "this KernelAutoencoder is not fitted: call fit(kernels) or KernelAutoencoder.load(dir)"
            )

    def _unit(self, kernels: object) -> tuple[np.ndarray, np.ndarray]:
        """Validated, normalised kernels [N, d] and the degenerate mask [N]."""
        arr = as_kernel_array(kernels)
        kh, kw = self._shape
        if arr.shape[1:] != (kh, kw):
            raise KernelAtlasError(
                f"this autoencoder is for {kh}x{kw} kernels, got {arr.shape[1]}x{arr.shape[2]}:"
                " select kernels of that size or train one with kernel_size="
                f"{arr.shape[1] if arr.shape[1] == arr.shape[2] else tuple(arr.shape[1:])}"
            )
        nz = normalize(arr)
        return nz.unit.reshape(arr.shape[0], kh * kw), nz.degenerate

    # ------------------------------------------------------------------ training
    def fit(self, kernels: object) -> KernelAutoencoder:
        """Train on kernels ``[N, kh, kw]`` (any scale; normalised here); returns ``self``."""
        self._validate_params()
        unit, degenerate = self._unit(kernels)
        x_np = unit[~degenerate]
        n = x_np.shape[0]
        if n < 2:
            raise KernelAtlasError(
                f"need at least 2 non-degenerate kernels to train, got {n}: pass more kernels"
            )
        kh, kw = self._shape
        dev = self._device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.seed))
            net = AENet(kh * kw, int(self.hidden))
        net = net.to(dev)
        gen = torch.Generator().manual_seed(int(self.seed))
        x = torch.from_numpy(x_np).to(dev)
        bs = min(int(self.batch_size), n)
        steps_per_epoch = math.ceil(n / bs)
        total = steps_per_epoch * int(self.epochs)
        opt = torch.optim.Adam(net.parameters(), lr=float(self.lr))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total))
        )
        # Progress: a tqdm bar on a terminal, plain lines in a log (no carriage returns).
        desc = f"autoencoder {kh}x{kw}"
        shown = Progress().stage(desc, total=total, unit="step") if self.progress else None
        history: list[float] = []
        net.train()
        noise = float(self.latent_noise)
        ngen = torch.Generator().manual_seed(int(self.seed) + 1)
        search = bool(self.search)
        # Search grid inside (0, 1): the sigmoid reaches neither end.
        zgrid = torch.linspace(0.005, 0.995, int(self.n_grid), device=dev)
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        with shown if shown is not None else contextlib.nullcontext() as stage:
            for epoch in range(int(self.epochs)):
                perm = torch.randperm(n, generator=gen).to(dev)
                run = torch.zeros((), device=dev)
                for i in range(steps_per_epoch):
                    xb = x[perm[i * bs : (i + 1) * bs]]
                    frac = 1.0 - (epoch * steps_per_epoch + i) / total
                    logit = net.encode_logit(xb)
                    zb = torch.sigmoid(logit)
                    loss = cosine_distance(xb, net.decode(zb)).mean()
                    rec_loss = loss.detach()
                    if search:
                        # Global projection onto the decoded curve (principal-curve step): the
                        # decoder learns from each kernel's best grid point, and the encoder
                        # is pulled towards it, so clusters the curve has not reached yet are
                        # not stuck behind others on the line.
                        with torch.no_grad():
                            g = net.decode(zgrid)
                            g = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                            zs = zgrid[(xb @ g.T).argmax(1)]
                        if noise > 0:
                            eps = torch.randn(zs.shape, generator=ngen).to(dev)
                            zs_n = zs + noise * frac * eps
                        else:
                            zs_n = zs
                        loss = loss + cosine_distance(xb, net.decode(zs_n)).mean()
                        # Cross-entropy on the logit: no vanishing gradient where saturated.
                        loss = loss + bce(logit, zs)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    run += rec_loss * xb.shape[0]
                    if stage is not None:
                        stage.update(1)
                history.append(float(run.item()) / n)
                advance(1, "ae_epoch")
                if stage is not None:
                    stage.set_description(f"{desc} (loss {history[-1]:.4f})")
        net.eval()
        self.net_ = net
        self.loss_history_ = history
        self.n_train_ = int(n)
        self.n_degenerate_ = int(degenerate.sum())
        self.n_features_in_ = kh * kw
        self._calibrate()
        train_z, _ = self._encode_distance(x_np)
        self.latent_counts_ = grid_counts(train_z, int(self.n_grid))
        self._name()
        return self

    def calibrate(self, null_fpr: float | None = None) -> KernelAutoencoder:
        """Set ``threshold_`` again (and ``null_coverage_``), e.g. at another ``null_fpr``.

        Sizes with a paper threshold keep it; others are calibrated on a fresh Gaussian
        null draw of ``null_size`` kernels (seeded by ``seed``), at ``null_fpr`` (default:
        the parameter). The network is unchanged. Returns ``self``.
        """
        self._check_fitted()
        if null_fpr is not None:
            if not 0.0 <= float(null_fpr) < 1.0:
                raise KernelAtlasError(f"null_fpr must be in [0, 1), got {null_fpr!r}")
            self.null_fpr = float(null_fpr)
        self._calibrate()
        return self

    def rename_spectrum(self) -> KernelAutoencoder:
        """Name the decoded latent line again with the atlas in force (``spectrum_``,
        ``segments_``); segment masses come from ``latent_counts_``. Returns ``self``.

        The decoded curve is the network's; its names are the atlas's, so an autoencoder
        saved under another atlas version is named in today's vocabulary after this.
        """
        self._check_fitted()
        self._name()
        return self

    def _calibrate(self) -> None:
        kh, kw = self._shape
        if kh == kw and kh in PAPER_AE_THRESHOLDS:
            self.threshold_ = float(PAPER_AE_THRESHOLDS[kh])
            self.threshold_rule_ = "paper"
        else:
            null = gaussian_null(int(self.null_size), kh, kw, seed=int(self.seed))
            self.threshold_ = calibrate_threshold(
                self.reconstruction_distance(null), float(self.null_fpr), higher_is_better=False
            )
            self.threshold_rule_ = "null"
        # Reported beside every coverage: an independent null draw, so it is not circular.
        fresh = gaussian_null(int(self.null_size), kh, kw, seed=int(self.seed) + 1)
        self.null_coverage_ = self.null_coverage(fresh)

    def _name(self) -> None:
        if not self.name_spectrum:
            self.spectrum_ = None
            self.segments_ = None
            return
        self.spectrum_ = self.spectrum(int(self.n_grid))
        counts = getattr(self, "latent_counts_", None)
        self.segments_ = segment_spectrum(
            self.spectrum_, min_run=int(self.min_segment), counts=counts
        )

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def _encode_distance(self, unit_flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Latent and reconstruction distance of normalised flattened kernels, in batches."""
        n = unit_flat.shape[0]
        z = np.empty(n, dtype=np.float32)
        d = np.empty(n, dtype=np.float32)
        dev = next(self.net_.parameters()).device
        for s in range(0, n, _INFER_BATCH):
            xb = torch.from_numpy(np.ascontiguousarray(unit_flat[s : s + _INFER_BATCH])).to(dev)
            zb, rec = self.net_(xb)
            z[s : s + xb.shape[0]] = zb.float().cpu().numpy()
            d[s : s + xb.shape[0]] = cosine_distance(xb, rec).float().cpu().numpy()
        return z, d

    def _latent_and_distance(self, kernels: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self._check_fitted()
        unit, degenerate = self._unit(kernels)
        z = np.full(unit.shape[0], np.nan, dtype=np.float32)
        d = np.full(unit.shape[0], np.nan, dtype=np.float32)
        ok = ~degenerate
        if ok.any():
            z[ok], d[ok] = self._encode_distance(unit[ok])
        return z, d, degenerate

    def transform(self, kernels: object) -> np.ndarray:
        """Latent coordinate [N] in [0, 1] of each kernel (NaN for degenerate kernels)."""
        return self._latent_and_distance(kernels)[0]

    @torch.no_grad()
    def inverse_transform(self, z: object) -> np.ndarray:
        """Decoded unit kernels ``[M, kh, kw]`` (zero-mean, unit L2 norm) of latents ``[M]``."""
        self._check_fitted()
        zz = np.asarray(z, dtype=np.float32).reshape(-1)
        if not np.isfinite(zz).all() or (zz < 0).any() or (zz > 1).any():
            raise KernelAtlasError("latents must be finite and in [0, 1]: clip them or drop NaNs")
        kh, kw = self._shape
        dev = next(self.net_.parameters()).device
        out = np.empty((zz.size, kh * kw), dtype=np.float32)
        for s in range(0, zz.size, _INFER_BATCH):
            rec = self.net_.decode(torch.from_numpy(zz[s : s + _INFER_BATCH]).to(dev))
            rec = rec / rec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            out[s : s + rec.shape[0]] = rec.float().cpu().numpy()
        return out.reshape(zz.size, kh, kw)

    def reconstruction_distance(self, kernels: object) -> np.ndarray:
        """Cosine distance ``1 - cos`` [N] between each unit kernel and its reconstruction."""
        return self._latent_and_distance(kernels)[1]

    def null_coverage(self, null_kernels: object) -> float:
        """Fraction of (non-degenerate) null kernels classified under ``threshold_``.

        Pass iid Gaussian kernels (:func:`kernelatlas.null.gaussian_null`) or freshly
        initialised kernels of the same architecture; NaN when none is usable.
        """
        self._check_fitted()
        d = self.reconstruction_distance(null_kernels)
        return null_rate(d, self.threshold_, higher_is_better=False)

    def spectrum(self, n: int = 512) -> pd.DataFrame:
        """Decode ``n`` evenly spaced latents on [0, 1] and name each pattern with the atlas.

        Returns a DataFrame with columns ``z, family, orientation, polarity, scale, score,
        classified, label`` (``label`` is the segment name, e.g. ``center+``).
        """
        self._check_fitted()
        if not isinstance(n, (int, np.integer)) or n < 2:
            raise KernelAtlasError(f"the spectrum needs n >= 2 grid points, got {n!r}")
        z = np.linspace(0.0, 1.0, int(n), dtype=np.float64)
        names = name_patterns(self.inverse_transform(z.astype(np.float32)))
        out = pd.DataFrame(
            {
                "z": z,
                "family": names["family"].to_numpy(object).astype(str),
                "orientation": names["orientation"].to_numpy(np.float64),
                "polarity": names["polarity"].to_numpy(np.float64),
                "scale": names["scale"].to_numpy(np.float64),
                "score": names["score"].to_numpy(np.float64),
                "classified": names["classified"].to_numpy(bool),
            }
        )
        out["label"] = segment_label(out["family"].to_numpy(), out["polarity"].to_numpy())
        out["label"] = out["label"].astype(str)
        return out[list(SPECTRUM_COLUMNS)]

    def segment_of(self, kernels: object) -> np.ndarray:
        """Index into ``segments_`` [N] of each kernel's latent (-1 for degenerate)."""
        self._check_fitted()
        if self.segments_ is None:
            raise KernelAtlasError("no segments: fit with name_spectrum=True to name the latent")
        return assign_segments(self.transform(kernels), self.segments_)

    def predict(self, kernels: object) -> pd.DataFrame:
        """Per-kernel autoencoder columns, in this order:

        ``ae_latent`` (float32, NaN if degenerate), ``ae_distance`` (float32, cosine
        distance to the reconstruction), ``ae_classified`` (bool, distance < threshold_),
        ``ae_family`` (the family of the kernel's latent segment if classified, else
        ``unclassified``; ``degenerate`` for degenerate kernels).
        """
        self._check_fitted()
        if self.segments_ is None:
            raise KernelAtlasError("no segments: fit with name_spectrum=True to name the latent")
        z, d, degenerate = self._latent_and_distance(kernels)
        classified = np.isfinite(d) & (d < self.threshold_)
        seg = assign_segments(z, self.segments_)
        seg_family = self.segments_["family"].to_numpy(object)
        family = np.where(classified, seg_family[np.maximum(seg, 0)], UNCLASSIFIED)
        family = np.where(degenerate, DEGENERATE, family).astype(object)
        return pd.DataFrame(
            {"ae_latent": z, "ae_distance": d, "ae_classified": classified, "ae_family": family},
            columns=list(PREDICT_COLUMNS),
        )

    def coverage(self, kernels: object) -> float:
        """Fraction of non-degenerate kernels classified under ``threshold_``."""
        d = self.reconstruction_distance(kernels)
        return null_rate(d, self.threshold_, higher_is_better=False)

    # ------------------------------------------------------------------ persistence
    def _config(self) -> dict[str, Any]:
        params = self.get_params()
        params["kernel_size"] = list(self._shape)
        params["device"] = None if self.device is None else str(self.device)

        def _records(df: pd.DataFrame | None) -> dict[str, list] | None:
            if df is None:
                return None
            return {c: df[c].tolist() for c in df.columns}

        return {
            "format": FORMAT,
            "kernelatlas_version": __version__,
            "params": params,
            "fitted": {
                "threshold": self.threshold_,
                "threshold_rule": self.threshold_rule_,
                "null_coverage": self.null_coverage_,
                "loss_history": self.loss_history_,
                "n_train": self.n_train_,
                "n_degenerate": self.n_degenerate_,
                "latent_counts": None
                if getattr(self, "latent_counts_", None) is None
                else [int(c) for c in self.latent_counts_],
                "spectrum": _records(self.spectrum_),
                "segments": _records(self.segments_),
            },
        }

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``directory`` (created).

        Each file is written to a temporary name and renamed into place; an older config is
        removed first and the new one goes last, so a directory with a config always has
        matching weights (a save killed midway leaves no config, never an older one beside
        the new weights).
        """
        self._check_fitted()
        from safetensors.torch import save_file

        out = Path(directory)
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.net_.state_dict().items()}
        fd, tmp = tempfile.mkstemp(dir=out, prefix=".tmp-", suffix=".safetensors")
        os.close(fd)
        try:
            save_file(state, tmp, metadata={"format": FORMAT})
            (out / CONFIG_FILE).unlink(missing_ok=True)
            os.replace(tmp, out / WEIGHTS_FILE)
            fd, tmp = tempfile.mkstemp(dir=out, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump(self._config(), f, indent=1, allow_nan=True)
            os.replace(tmp, out / CONFIG_FILE)
        except BaseException:
            if created:  # a folder this save made (all of it its own) and could not fill
                shutil.rmtree(out, ignore_errors=True)
            raise
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return out

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], *, device: str | torch.device | None = None
    ) -> KernelAutoencoder:
        """Load an autoencoder written by :meth:`save` (``device=None``: CUDA if present)."""
        from safetensors.torch import load_file

        src = Path(directory)
        cfg_path, w_path = src / CONFIG_FILE, src / WEIGHTS_FILE
        if not cfg_path.is_file() or not w_path.is_file():
            raise FormatError(
                f"{src} is not a saved autoencoder (needs {CONFIG_FILE} and {WEIGHTS_FILE}):"
                " pass the directory given to save() or `kernelatlas autoencoder train --out`"
            )
        try:
            cfg = json.loads(cfg_path.read_text())
            if cfg.get("format") != FORMAT:
                raise ValueError(f"format {cfg.get('format')!r}, expected {FORMAT!r}")
            params = dict(cfg["params"])
            fitted = cfg["fitted"]
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise FormatError(f"{cfg_path} is not a valid autoencoder config ({exc})") from None
        params["kernel_size"] = tuple(params["kernel_size"])
        params["device"] = device
        ae = cls(**params)
        ae._validate_params()
        kh, kw = ae._shape
        net = AENet(kh * kw, int(ae.hidden))
        try:
            net.load_state_dict(load_file(str(w_path)))
        except Exception as exc:  # safetensors header/shape errors
            raise FormatError(f"{w_path} does not match its config ({exc})") from None
        ae.net_ = net.to(ae._device).eval()
        ae.threshold_ = float(fitted["threshold"])
        ae.threshold_rule_ = str(fitted["threshold_rule"])
        ae.null_coverage_ = float(fitted["null_coverage"])
        ae.loss_history_ = [float(v) for v in fitted["loss_history"]]
        ae.n_train_ = int(fitted["n_train"])
        ae.n_degenerate_ = int(fitted["n_degenerate"])
        ae.n_features_in_ = kh * kw
        counts = fitted.get("latent_counts")
        ae.latent_counts_ = None if counts is None else np.asarray(counts, dtype=np.int64)
        sp, sg = fitted.get("spectrum"), fitted.get("segments")
        ae.spectrum_ = None if sp is None else pd.DataFrame(sp)[list(SPECTRUM_COLUMNS)]
        ae.segments_ = None if sg is None else pd.DataFrame(sg)[list(SEGMENT_COLUMNS)]
        return ae
