"""Agreement between the autoencoder's names and the atlas classifier's, per kernel.

Agreement is measured only among kernels that at least one method *classifies*, i.e. gives
a pattern family (:data:`kernelatlas.taxonomy.PATTERN_FAMILIES`): two methods that both
leave a kernel unnamed say nothing about each other, and on an untrained model that is
almost every kernel. For the autoencoder a kernel is named when it is classified (distance
below ``threshold_``) and its latent segment has a family; one classified into an unnamed
segment counts as unnamed here. Degenerate kernels are left out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import KernelAtlasError
from ..taxonomy import DEGENERATE, PATTERN_FAMILIES

__all__ = ["AGREEMENT_KEYS", "agreement", "agreement_masks"]

AGREEMENT_KEYS: tuple[str, ...] = (
    "n",
    "n_either_classified",
    "agreement",
    "n_both_classified",
    "agreement_both_classified",
)


def agreement_masks(ae_family: np.ndarray, family: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks [N] from per-kernel AE and atlas families (one definition, used by
    :func:`agreement` and the summary's exact counts).

    ``valid``: neither degenerate; ``either`` / ``both``: valid and named by at least one /
    by both; ``same``: the same family.
    """
    fa = np.asarray(ae_family, dtype=object)
    fb = np.asarray(family, dtype=object)
    valid = (fa != DEGENERATE) & (fb != DEGENERATE)
    named_a = np.isin(fa, PATTERN_FAMILIES)
    named_b = np.isin(fb, PATTERN_FAMILIES)
    return {
        "valid": valid,
        "either": valid & (named_a | named_b),
        "both": valid & named_a & named_b,
        "same": fa == fb,
    }


def agreement(ae: pd.DataFrame, atlas: pd.DataFrame) -> dict[str, float | int]:
    """How often ``ae_family`` (:meth:`KernelAutoencoder.predict`) equals the atlas ``family``,
    among kernels that at least one of them classifies.

    Parameters
    ----------
    ae : DataFrame with ``ae_family``, one row per kernel.
    atlas : DataFrame with ``family`` (``Atlas.predict``), same rows.

    Returns
    -------
    dict with ``n`` (non-degenerate kernels), ``n_either_classified`` and ``agreement``
    (the fraction of the kernels at least one method names with the same family on both
    sides), ``n_both_classified`` and ``agreement_both_classified`` (the same among kernels
    both methods name). Fractions are NaN when their kernel count is 0.
    """
    if len(ae) != len(atlas):
        raise KernelAtlasError(
            f"agreement needs one row per kernel on both sides, got {len(ae)} and {len(atlas)}"
        )
    m = agreement_masks(ae["ae_family"].to_numpy(object), atlas["family"].to_numpy(object))
    ne, nb = int(m["either"].sum()), int(m["both"].sum())
    return {
        "n": int(m["valid"].sum()),
        "n_either_classified": ne,
        "agreement": float(m["same"][m["either"]].mean()) if ne else float("nan"),
        "n_both_classified": nb,
        "agreement_both_classified": float(m["same"][m["both"]].mean()) if nb else float("nan"),
    }
