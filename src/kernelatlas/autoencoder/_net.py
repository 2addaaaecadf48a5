"""The network: a small MLP autoencoder with a one-dimensional sigmoid latent.

Architecture (documented in docs/autoencoder.md)::

    encoder: d -> hidden -> hidden -> 1 -> sigmoid          (d = kh * kw)
    decoder: 1 -> hidden -> hidden -> d -> subtract mean    (zero-mean output)

with GELU activations. The paper's loss is the cosine distance ``1 - cos(x, x_hat)``
between a centred unit kernel and its reconstruction, so the reconstruction's scale is
free; the decoder's output is centred so that it lives in the same zero-mean subspace as
the (centred) inputs. At the default ``hidden=128`` a 7x7 network has ~46k parameters
(~0.3 MFLOP per kernel per training step): an epoch over a million kernels takes about
45 s on one CPU thread (docs/autoencoder.md) and far less on a GPU.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["AENet", "cosine_distance"]


class AENet(nn.Module):
    """MLP autoencoder on flattened kernels ``[B, d]`` with a scalar latent in (0, 1)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, 1),
        )
        self.decoder = nn.Sequential(
            nn.Linear(1, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, dim),
        )

    def encode_logit(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid latent ``[B]`` of flattened unit kernels ``[B, d]``."""
        return self.encoder(x).squeeze(-1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent ``[B]`` in (0, 1) of flattened unit kernels ``[B, d]``."""
        return torch.sigmoid(self.encode_logit(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Zero-mean (not yet unit-norm) reconstructions ``[B, d]`` of latents ``[B]``."""
        y = self.decoder(z.unsqueeze(-1))
        return y - y.mean(dim=-1, keepdim=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return z, self.decode(z)


def cosine_distance(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Row-wise ``1 - cos(x, y)`` of ``[B, d]`` tensors (the paper's loss), in [0, 2]."""
    num = (x * y).sum(-1)
    den = torch.sqrt((x * x).sum(-1) * (y * y).sum(-1)).clamp_min(eps)
    return 1.0 - num / den
