"""Agreement between the autoencoder's names and the atlas classifier's, per kernel."""

from __future__ import annotations

import pandas as pd

from ..errors import KernelAtlasError
from ..taxonomy import DEGENERATE

__all__ = ["AGREEMENT_KEYS", "agreement"]

AGREEMENT_KEYS: tuple[str, ...] = (
    "n",
    "agreement",
    "n_both_classified",
    "agreement_both_classified",
)


def agreement(ae: pd.DataFrame, atlas: pd.DataFrame) -> dict[str, float | int]:
    """How often ``ae_family`` (:meth:`KernelAutoencoder.predict`) equals the atlas ``family``.

    Parameters
    ----------
    ae : DataFrame with ``ae_family`` and ``ae_classified``, one row per kernel.
    atlas : DataFrame with ``family`` and ``classified`` (``Atlas.predict``), same rows.

    Returns
    -------
    dict with ``n`` (non-degenerate kernels), ``agreement`` (fraction of them with the same
    family, ``unclassified`` included), ``n_both_classified`` and
    ``agreement_both_classified`` (the same fraction among kernels both methods classify;
    NaN when there are none). Degenerate kernels are left out.
    """
    if len(ae) != len(atlas):
        raise KernelAtlasError(
            f"agreement needs one row per kernel on both sides, got {len(ae)} and {len(atlas)}"
        )
    fa = ae["ae_family"].to_numpy(object)
    fb = atlas["family"].to_numpy(object)
    ok = (fa != DEGENERATE) & (fb != DEGENERATE)
    same = fa == fb
    both = ok & ae["ae_classified"].to_numpy(bool) & atlas["classified"].to_numpy(bool)
    n, nb = int(ok.sum()), int(both.sum())
    return {
        "n": n,
        "agreement": float(same[ok].mean()) if n else float("nan"),
        "n_both_classified": nb,
        "agreement_both_classified": float(same[both].mean()) if nb else float("nan"),
    }
