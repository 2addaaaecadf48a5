"""Shared fixtures.

- ``tiny_dscnn``: a small seeded DS-CNN (nn.Module, eval mode, RGB input) whose batch norms
  carry non-trivial statistics. Depthwise layers, in order: ``3`` 3x3 (BN follows), ``9``
  5x5 stride 2 multiplier 2 (BN follows), ``12`` 1x5 (no BN), ``13`` 1x1 (skipped),
  ``14`` 3x3 dilation 2 (BN follows). Treat it as read-only.
- ``shipped``: ``shipped(name) -> Path`` of a registered source's cached weight file
  (fetched into ``$KERNELATLAS_CACHE`` if missing; ``make weights`` fills the cache).
- ``efficientnet_lite0_path``, ``mobilenet_v2_path``, ``pp_lcnet_path``: those paths.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn


def build_tiny_dscnn(seed: int = 0) -> nn.Sequential:
    """The model behind the ``tiny_dscnn`` fixture (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),  # 0 stem
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),  # 3 dw 3x3
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 1, bias=False),  # 6 pw
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 5, stride=2, padding=2, groups=16, bias=False),  # 9 dw 5x5, x2
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, (1, 5), padding=(0, 2), groups=32),  # 12 dw 1x5, no BN
        nn.Conv2d(32, 32, 1, groups=32),  # 13 dw 1x1: skipped
        nn.Conv2d(32, 32, 3, padding=2, dilation=2, groups=32, bias=False),  # 14 dw 3x3 dil 2
        nn.BatchNorm2d(32),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_dscnn() -> nn.Sequential:
    return build_tiny_dscnn()


@pytest.fixture(scope="session")
def shipped() -> Callable[[str], Path]:
    from kernelatlas.harvest.cache import fetch

    def get(name: str) -> Path:
        return fetch(name)

    return get


@pytest.fixture(scope="session")
def efficientnet_lite0_path(shipped: Callable[[str], Path]) -> Path:
    return shipped("efficientnet_lite0")


@pytest.fixture(scope="session")
def mobilenet_v2_path(shipped: Callable[[str], Path]) -> Path:
    return shipped("mobilenet_v2")


@pytest.fixture(scope="session")
def pp_lcnet_path(shipped: Callable[[str], Path]) -> Path:
    return shipped("pp_lcnet_orientation")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small networks train faster on one torch thread (and the machine has two cores)."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def small_bank(tmp_path_factory):
    """pp_lcnet_orientation (3x3 and 5x5 mixed) in row groups of 300 rows: 9 partitions."""
    from kernelatlas.bank import KernelBank
    from kernelatlas.harvest import harvest

    bank = KernelBank(tmp_path_factory.mktemp("bank") / "bank", row_group_size=300)
    bank.add(harvest("pp_lcnet_orientation"))
    return bank


@pytest.fixture(scope="module")
def models(small_bank):
    """An atlas per kernel size of ``small_bank`` (calibrated on 2,000 kernels, uncached)."""
    from kernelatlas.calibration import calibrate
    from kernelatlas.partitions import SizeModels

    return {
        s: SizeModels(calibrate(*s, null_fpr=0.01, n_null=2000, cache=False).atlas)
        for s in small_bank.shapes()
    }
