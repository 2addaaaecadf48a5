"""Configuration of ``bench-train`` / ``bench-init``: what is trained, how long, how sized.

:class:`BenchConfig` holds everything a benchmark depends on (it is stored in the JSON);
:func:`preset` gives the named sizes. Regimes are training-set sizes (``None`` = every
training image of the dataset); a regime at or above a dataset's size is that dataset's
``all`` and is run once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import KernelAtlasError, did_you_mean
from .data import DATASETS
from .loop import LoopConfig
from .models import ARCHS

__all__ = [
    "ArchConfig",
    "BenchConfig",
    "preset",
    "PRESETS",
    "INIT_SCHEMES",
    "TRAIN_SCHEMES",
    "regime_label",
    "parse_regime",
    "REFERENCE_SEED",
]

#: bench-init's schemes: only the kernels at step 0 differ.
INIT_SCHEMES: tuple[str, ...] = (
    "default",
    "dog",
    "atlas",
    "master_key",
    "master_key_frozen",
    "covariance",
)
#: bench-train's CPU grid: the control, the DoG init (the start of the structured kernels),
#: one scheme per lever, and the layer-scale variants with their control (ConvNeXt only).
TRAIN_SCHEMES: tuple[str, ...] = (
    "default",
    "dog",
    "structured",
    "master_key_frozen",
    "atlas_prior",
    "default_ls",
    "dog_ls",
    "master_key_frozen_ls",
)
#: Seed of the extra default run whose kernels are the atlas/covariance reference.
REFERENCE_SEED = 1000


def regime_label(n: int | None) -> str:
    """``None`` -> ``'all'``, 5000 -> ``'5k'``, 1000 -> ``'1k'``, 1500 -> ``'1500'``."""
    if n is None:
        return "all"
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def parse_regime(text: str) -> int | None:
    """Inverse of :func:`regime_label`: ``all``, ``5k``, ``1000``..."""
    t = text.strip().lower()
    if t == "all":
        return None
    try:
        n = int(t[:-1]) * 1000 if t.endswith("k") else int(t)
    except ValueError:
        raise KernelAtlasError(
            f"regime must be 'all', e.g. '5k' or a number, got {text!r}"
        ) from None
    if n < 1:
        raise KernelAtlasError(f"regime must be >= 1 image, got {text!r}")
    return n


@dataclass(frozen=True)
class ArchConfig:
    """How one architecture is sized: input size (batches are resized), width, depth,
    builder options (e.g. ``{"stem_stride": 2}`` for MobileNetV2)."""

    image_size: int = 28
    width: float = 1.0
    depth: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BenchConfig:
    """Everything a benchmark run depends on (stored in the JSON)."""

    name: str = "custom"
    datasets: tuple[str, ...] = DATASETS
    regimes: tuple[int | None, ...] = (None, 5000, 1000)
    archs: tuple[str, ...] = tuple(ARCHS)
    schemes: tuple[str, ...] = TRAIN_SCHEMES
    seeds: int = 5
    arch_configs: dict[str, ArchConfig] = field(
        default_factory=lambda: {
            "convnext": ArchConfig(64, 0.25, 0.34),
            "mobilenetv2": ArchConfig(28, 0.25, 0.34, {"stem_stride": 2}),
        }
    )
    steps: int = 120
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    eval_every: int = 15
    n_test: int | None = 1000
    eval_batch_size: int = 1000
    amp: bool = False
    label_smoothing: float = 0.0
    coverage: bool = True

    def validate(self) -> None:
        from .schemes import list_schemes

        for what, names in (("dataset", self.datasets), ("arch", self.archs),
                            ("scheme", self.schemes)):  # fmt: skip
            twice = sorted({n for n in names if list(names).count(n) > 1})
            if twice:  # run twice with the same seed, the copies counted as more seeds
                raise KernelAtlasError(
                    f"{what} {', '.join(map(repr, twice))} listed more than once: list each once"
                )
        for d in self.datasets:
            if d not in DATASETS:
                raise KernelAtlasError(
                    f"unknown dataset {d!r} (choose from {', '.join(DATASETS)})"
                    f"{did_you_mean(d, DATASETS)}"
                )
        for a in self.archs:
            if a not in ARCHS:
                raise KernelAtlasError(
                    f"unknown arch {a!r} (choose from {', '.join(ARCHS)}){did_you_mean(a, ARCHS)}"
                )
            if a not in self.arch_configs:
                raise KernelAtlasError(f"no ArchConfig for arch {a!r}")
        known = list_schemes()
        for s in self.schemes:
            if s not in known:
                raise KernelAtlasError(
                    f"unknown scheme {s!r} (choose from {', '.join(known)}){did_you_mean(s, known)}"
                )
        if "default" not in self.schemes:
            raise KernelAtlasError("schemes must include 'default': it sets the target accuracy")
        if not self.datasets or not self.archs or not self.regimes:
            raise KernelAtlasError("datasets, archs and regimes must not be empty")
        if self.seeds < 1:
            raise KernelAtlasError("seeds must be >= 1")
        if self.eval_every < 1 or self.steps % self.eval_every:
            raise KernelAtlasError(
                f"eval_every ({self.eval_every}) must be >= 1 and divide steps ({self.steps})"
            )
        self.loop().validate()

    def loop(self, arch: str | None = None) -> LoopConfig:
        """The :class:`LoopConfig` of one architecture's runs."""
        return LoopConfig(
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            warmup_fraction=self.warmup_fraction,
            eval_every=self.eval_every,
            eval_batch_size=self.eval_batch_size,
            image_size=self.arch_configs[arch].image_size if arch else None,
            amp=self.amp,
            label_smoothing=self.label_smoothing,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["arch_configs"] = {k: asdict(v) for k, v in self.arch_configs.items()}
        d["regimes"] = [regime_label(n) for n in self.regimes]
        return d


PRESETS: tuple[str, ...] = ("smoke", "cpu", "gpu")


def preset(name: str) -> BenchConfig:
    """The named sizes.

    - ``smoke``: Fashion-MNIST 5k, both architectures, ``default``/``structured``/
      ``master_key_frozen``, 2 seeds, 100 steps: 45-70 s of CPU (docs/training.md).
    - ``cpu``: the CPU grid of docs/benchmarks/bench-train.md: three datasets, three
      regimes, both architectures (small), the schemes of :data:`TRAIN_SCHEMES`, 5 seeds,
      120 steps of batch 64 (about 45 minutes of CPU).
    - ``gpu``: wider networks, 400 steps of batch 128 and every registered lever, for
      ``benchmarks/gpu_run.sh`` (sharded over concurrent processes on one GPU).
    """
    if name == "smoke":
        return BenchConfig(
            name="smoke",
            datasets=("fashion_mnist",),
            regimes=(5000,),
            schemes=("default", "structured", "master_key_frozen"),
            seeds=2,
            steps=100,
            eval_every=20,
            n_test=500,
            eval_batch_size=500,
        )
    if name == "cpu":
        return BenchConfig(name="cpu")
    if name == "gpu":
        return BenchConfig(
            name="gpu",
            schemes=(
                *TRAIN_SCHEMES,
                "structured_njet",
                "master_key",
                "master_key_ls",
                "default_frozen",
                "atlas",
                "covariance",
            ),
            arch_configs={
                "convnext": ArchConfig(64, 0.5, 0.5),
                "mobilenetv2": ArchConfig(28, 0.5, 0.5),
            },
            steps=400,
            batch_size=128,
            eval_every=20,
            n_test=2000,
            eval_batch_size=2000,
        )
    raise KernelAtlasError(f"unknown preset {name!r}: choose {', '.join(PRESETS)}")
