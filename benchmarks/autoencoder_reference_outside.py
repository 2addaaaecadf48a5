"""The reference autoencoders on models outside their training bank (any harvestable files).

Usage::

    .venv/bin/python benchmarks/autoencoder_reference_outside.py FILE...

prints per file and size (with a shipped reference): the reference AE's coverage, its
Gaussian null, and the atlas's coverage; a model the references never saw tests whether
they generalise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import torch

    from kernelatlas.atlas import Atlas
    from kernelatlas.autoencoder import load_reference, reference_sizes
    from kernelatlas.harvest import harvest
    from kernelatlas.null import gaussian_null

    torch.set_num_threads(1)
    print("| file | size | kernels | reference AE classified | AE null | atlas classified |")
    print("|---|---|---|---|---|---|")
    for path in argv if argv is not None else sys.argv[1:]:
        res = harvest(path)
        by: dict[tuple[int, int], list[np.ndarray]] = {}
        for layer in res.layers:
            by.setdefault(tuple(layer.weights.shape[1:]), []).append(layer.weights)
        for size in sorted(set(by) & set(reference_sizes())):
            k = np.concatenate(by[size])
            ae = load_reference(size, device="cpu")
            null = ae.null_coverage(gaussian_null(20_000, *size, seed=7919))
            atlas = Atlas(kernel_size=size).fit().coverage(k)
            print(
                f"| {Path(path).name} | {size[0]}x{size[1]} | {len(k):,} | "
                f"{ae.coverage(k):.1%} | {null:.1%} | {atlas:.1%} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
