"""The autoencoder's decoded spectrum, compact enough for summary.json.

``spectrum_doc`` turns an autoencoder's named spectrum (:meth:`KernelAutoencoder.spectrum`,
one row per latent grid point) and its decoded patterns into runs of one atlas name along the
latent (``segments``) and 16 decoded patterns evenly spaced along it, so the report can be
drawn again from summary.json alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["spectrum_doc", "spectra_docs", "N_DECODED"]

N_DECODED = 16


def spectrum_doc(spectrum: pd.DataFrame, decoded: Any, kh: int, kw: int) -> dict[str, Any]:
    """``{kh, kw, segments: [{start, end, family, label}], decoded_z, decoded}``.

    ``spectrum`` has columns ``z`` (sorted) and ``family`` (and ``label``); ``decoded`` holds
    the decoded pattern [len(spectrum), kh, kw] at each ``z``.
    """
    z = spectrum["z"].to_numpy(dtype=np.float64)
    fam = spectrum["family"].astype(str).to_numpy()
    lab = (spectrum["label"] if "label" in spectrum else spectrum["family"]).astype(str).to_numpy()
    dec = np.asarray(decoded, dtype=np.float64).reshape(len(z), -1)
    half = (np.diff(z) / 2) if len(z) > 1 else np.zeros(0)
    lo = np.concatenate([[z[0] - (half[0] if len(half) else 0.5)], z[1:] - half]) if len(z) else z
    hi = (
        np.concatenate([z[:-1] + half, [z[-1] + (half[-1] if len(half) else 0.5)]]) if len(z) else z
    )
    change = np.flatnonzero((fam[1:] != fam[:-1]) | (lab[1:] != lab[:-1])) + 1
    starts = np.concatenate([[0], change]).astype(int) if len(z) else np.zeros(0, int)
    ends = np.concatenate([change, [len(z)]]).astype(int) if len(z) else np.zeros(0, int)
    segments = [
        {"start": round(float(max(lo[a], 0.0)), 5), "end": round(float(min(hi[b - 1], 1.0)), 5),
         "family": str(fam[a]), "label": str(lab[a])}
        for a, b in zip(starts, ends)
    ]  # fmt: skip
    idx = np.linspace(0, len(z) - 1, min(len(z), N_DECODED)).astype(int) if len(z) else []
    return {
        "kh": int(kh),
        "kw": int(kw),
        "segments": segments,
        "decoded_z": [round(float(z[i]), 5) for i in idx],
        "decoded": [[round(float(v), 5) for v in dec[i]] for i in idx],
    }


def spectra_docs(spectra: dict[str, Any] | None) -> dict[str, Any]:
    """:func:`spectrum_doc` of every size of the pipeline's ``spectra`` (``"KxK" ->
    {"spectrum": columns, "decoded": patterns}``), keyed the same way."""
    out = {}
    for key, spec in sorted((spectra or {}).items()):
        kh, kw = (int(v) for v in key.split("x"))
        out[key] = spectrum_doc(pd.DataFrame(spec["spectrum"]), spec["decoded"], kh, kw)
    return out
