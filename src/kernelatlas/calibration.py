"""Calibrated atlases, cached in the user cache so that a second analysis starts at once.

Calibrating an :class:`~kernelatlas.atlas.Atlas` scores ``n_null`` null kernels and picks
one threshold per family (:meth:`Atlas.fit`); the analysis then measures the atlas's rate
on a held-out null. Both depend only on the *calibration key*:

- the kernel size, the null kind, ``null_fpr``, ``n_null``, ``seed``, the kernelatlas
  version, and the atlas's families;
- the sha256 of the code that the thresholds come from (:func:`code_digest`: the atlas
  package, the nulls, the normalisation and the module of every registered family, a
  user's plugin included), so that a development install or a changed plugin of the same
  version never meets thresholds computed by other code;
- for a null built from data (``init``: fresh-init kernels; any kind whose kernels come
  from the analysed models) the sha256 of the null kernels and of the held-out kernels,
  so that other data never meets a stale entry. A caller that cannot name its data passes
  ``cache=False``.

An entry is one small JSON file under ``<cache>/calibrations/`` (``<cache>`` is the weight
cache: ``$KERNELATLAS_CACHE`` or ``~/.cache/kernelatlas``; ``$KERNELATLAS_CALIBRATIONS``
names another folder), written to a temporary name and renamed. Reading one, every field is checked (its key equals the wanted key, the
families match a freshly built atlas, thresholds and rates are finite numbers in range);
an entry that fails any check is ignored and rewritten, never trusted. An entry of another
kernelatlas version has another file name: a new version recalibrates.

Examples
--------
>>> from kernelatlas.calibration import calibrate
>>> cal = calibrate(7, 7, null_kind="gaussian", null_fpr=0.01, n_null=2000)  # doctest: +SKIP
>>> cal.cached, round(cal.seconds, 2), cal.atlas.thresholds_  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__

if TYPE_CHECKING:
    from .atlas import Atlas

__all__ = [
    "Calibration",
    "calibrate",
    "calibration_dir",
    "calibration_key",
    "code_digest",
    "HELDOUT_SEED_OFFSET",
]

#: The held-out Gaussian null is drawn with ``seed + HELDOUT_SEED_OFFSET`` (the calibration
#: null with ``seed``), so the two never share kernels.
HELDOUT_SEED_OFFSET = 7919
_FORMAT = 1  # layout of an entry file
_LEARNED = ("thresholds_", "null_rate_", "family_null_rates_", "null_kind_", "n_null_")


@dataclass(frozen=True)
class Calibration:
    """A calibrated atlas and where it came from.

    Attributes
    ----------
    atlas : the fitted :class:`~kernelatlas.atlas.Atlas`.
    heldout_rate : fraction of the held-out null the atlas classifies.
    cached : True when read from the cache (no null kernel was scored).
    seconds : time to calibrate or to load the entry.
    path : the cache entry (None when caching was off).
    """

    atlas: Atlas
    heldout_rate: float
    cached: bool
    seconds: float
    path: Path | None


def calibration_dir() -> Path:
    """``$KERNELATLAS_CALIBRATIONS``, default ``<cache>/calibrations`` (``<cache>``: the
    weight cache, :func:`kernelatlas.harvest.cache.cache_dir`)."""
    from .harvest.cache import cache_dir

    env = os.environ.get("KERNELATLAS_CALIBRATIONS")
    return Path(env).expanduser() if env else cache_dir() / "calibrations"


def _digest(*arrays: np.ndarray | None) -> str | None:
    if all(a is None for a in arrays):
        return None
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none\0")
            continue
        a = np.ascontiguousarray(a, dtype=np.float32)
        h.update(f"{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _code_files(extra: tuple[str, ...] = ()) -> list[str]:
    """The source files thresholds depend on: the atlas package, the nulls, the
    normalisation, the taxonomy, and the module of every registered family; ``extra``:
    more of kernelatlas's modules, by path inside the package."""
    import inspect

    from .atlas import registry
    from .codehash import package_files

    files = package_files("atlas", "null.py", "normalize.py", "taxonomy.py", *extra)
    for fam in registry.families():
        try:
            src = inspect.getsourcefile(type(fam))
        except (TypeError, OSError):  # its module is gone from sys.modules, or compiled
            src = None
        files.append(src or f"<{type(fam).__module__}.{type(fam).__qualname__}>")
    return files


def code_digest(extra: tuple[str, ...] = ()) -> str:
    """sha256 of the sources in :func:`_code_files` (:func:`kernelatlas.codehash.files_digest`);
    ``extra`` adds kernelatlas modules (paths inside the package) that a cached result
    depends on."""
    from .codehash import files_digest

    return files_digest(_code_files(tuple(extra)))


def calibration_key(
    kh: int,
    kw: int,
    *,
    null_kind: str,
    null_fpr: float,
    n_null: int,
    seed: int,
    null: np.ndarray | None = None,
    heldout: np.ndarray | None = None,
    families: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """The fields a calibration depends on (``null``/``heldout``: data-built kernels, hashed)."""
    return {
        "format": _FORMAT,
        "kernelatlas_version": __version__,
        "kh": int(kh),
        "kw": int(kw),
        "null_kind": str(null_kind),
        "null_fpr": float(null_fpr),
        "n_null": int(n_null),
        "seed": int(seed),
        "families": None if families is None else [str(f) for f in families],
        "data_sha256": _digest(null, heldout),
        "code_sha256": code_digest(),
    }


def _entry_path(key: dict[str, Any]) -> Path:
    blob = json.dumps(key, sort_keys=True).encode()
    name = f"{key['kh']}x{key['kw']}-{key['null_kind']}-{hashlib.sha256(blob).hexdigest()[:24]}"
    return calibration_dir() / f"{name}.json"


def _fresh_atlas(kh: int, kw: int, null_fpr: float, n_null: int, seed: int, **atlas_kw: Any):
    from .atlas import Atlas

    return Atlas(kernel_size=(kh, kw), null_fpr=null_fpr, n_null=n_null, seed=seed, **atlas_kw)


def _rate(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and 0.0 <= x <= 1.0 else None


def _restore(
    path: Path, key: dict[str, Any], atlas_kw: dict[str, Any]
) -> tuple[Atlas, float] | None:
    """The atlas and held-out rate of entry ``path`` when every field checks, else None."""
    from .atomic import read_json

    try:  # a FIFO, device or deeply nested file planted in the cache is not an entry
        doc = read_json(path, 16 * 2**20)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("key") != key:
        return None
    state, heldout = doc.get("state"), _rate(doc.get("heldout_rate"))
    if not isinstance(state, dict) or heldout is None or set(state) != set(_LEARNED):
        return None
    thresholds, rates = state["thresholds_"], state["family_null_rates_"]
    if not (isinstance(thresholds, dict) and isinstance(rates, dict)):
        return None
    if not all(
        isinstance(v, int | float) and math.isfinite(v) and -1 <= v <= 1
        for v in thresholds.values()
    ):
        return None
    if any(_rate(v) is None for v in rates.values()) or _rate(state["null_rate_"]) is None:
        return None
    n = state["n_null_"]
    if not (isinstance(n, int) and 1 <= n <= key["n_null"] * 4 + 1_000_000):
        return None
    # the template bank is rebuilt (tens of ms); the tiny fit only sets the atlas up, its
    # thresholds are then replaced by the cached ones (checked against its families)
    from .null import gaussian_null

    atlas = _fresh_atlas(
        key["kh"], key["kw"], key["null_fpr"], key["n_null"], key["seed"], **atlas_kw
    )
    atlas.fit(null=gaussian_null(64, key["kh"], key["kw"], seed=key["seed"]))
    if set(thresholds) != set(atlas.thresholds_) or set(rates) != set(atlas.thresholds_):
        return None  # another family set than this version builds
    order = list(atlas.thresholds_)
    atlas.thresholds_ = {f: float(thresholds[f]) for f in order}
    atlas.family_null_rates_ = {f: float(rates[f]) for f in order}
    atlas.null_rate_ = float(state["null_rate_"])
    atlas.null_kind_ = str(state["null_kind_"])
    atlas.n_null_ = int(n)
    return atlas, heldout


def _write(path: Path, key: dict[str, Any], atlas: Atlas, heldout: float) -> None:
    doc = {
        "key": key,
        "state": {
            "thresholds_": {f: float(t) for f, t in atlas.thresholds_.items()},
            "null_rate_": float(atlas.null_rate_),
            "family_null_rates_": {f: float(r) for f, r in atlas.family_null_rates_.items()},
            "null_kind_": str(atlas.null_kind_),
            "n_null_": int(atlas.n_null_),
        },
        "heldout_rate": float(heldout),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            tmp.write_text(json.dumps(doc, indent=1) + "\n")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:  # a read-only or full cache costs a recalibration, nothing else
        where = str(path.parent)
        if where not in _UNWRITABLE:  # said once per cache folder and process
            _UNWRITABLE.add(where)
            warnings.warn(
                f"calibration cache {where} cannot be written "
                f"({exc.strerror or type(exc).__name__}): every analysis will calibrate again; "
                "set KERNELATLAS_CALIBRATIONS to a folder you can write",
                stacklevel=2,
            )


#: Cache folders a calibration could not be written to in this process (warned once each).
_UNWRITABLE: set[str] = set()


def calibrate(
    kh: int,
    kw: int,
    *,
    null_kind: str = "gaussian",
    null_fpr: float,
    n_null: int,
    seed: int = 0,
    null: np.ndarray | None = None,
    heldout: np.ndarray | None = None,
    cache: bool = True,
    refresh: bool = False,
    **atlas_kw: Any,
) -> Calibration:
    """A calibrated :class:`~kernelatlas.atlas.Atlas` for ``kh x kw`` kernels, from the cache
    when an entry with the same key is there.

    Parameters
    ----------
    null_kind : the kind recorded for the null (``gaussian``, ``init``...).
    null : null kernels [M, kh, kw] built from data; None: ``n_null`` iid Gaussian kernels
        drawn with ``seed``.
    heldout : kernels the calibrated atlas is checked on; None: ``n_null`` Gaussian kernels
        drawn with ``seed + HELDOUT_SEED_OFFSET``.
    cache : read and write the user cache (False: always calibrate, write nothing).
    refresh : calibrate even when an entry is there, and rewrite it.
    atlas_kw : other :class:`Atlas` parameters that do not change thresholds (``batch_size``,
        ``device``).
    """
    from .atlas import Atlas  # noqa: F401  (imported before the clock starts)
    from .null import gaussian_null

    t0 = time.perf_counter()
    key = calibration_key(
        kh, kw, null_kind=null_kind, null_fpr=null_fpr, n_null=n_null, seed=seed,
        null=null, heldout=heldout, families=atlas_kw.get("families"),
    )  # fmt: skip
    path = _entry_path(key) if cache else None
    if path is not None and not refresh:
        got = _restore(path, key, atlas_kw)
        if got is not None:
            return Calibration(got[0], got[1], True, time.perf_counter() - t0, path)
    atlas = _fresh_atlas(kh, kw, null_fpr, n_null, seed, **atlas_kw).fit(null=null)
    if heldout is None:
        heldout = gaussian_null(n_null, kh, kw, seed=seed + HELDOUT_SEED_OFFSET)
    rate = float(atlas.predict(heldout)["classified"].mean()) if len(heldout) else float("nan")
    if path is not None and math.isfinite(rate):
        _write(path, key, atlas, rate)
    return Calibration(atlas, rate, False, time.perf_counter() - t0, path)
