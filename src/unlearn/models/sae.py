"""A small sparse autoencoder (SAE) over one layer's residual stream: ReLU encoder, L1 penalty, unit-norm
decoder rows (Bricken et al. 2023; the SAEs of Farrell et al. 2024 are of this kind, trained far longer).

The activations are first scaled by one constant so that their mean squared norm is the width ``d`` (each
coordinate about unit variance): the L1 coefficient then means the same on any model. ``f = ReLU((s·x − b_dec)
W_enc + b_enc)``, ``x̂ = (f W_dec + b_dec) / s``; every decoder row is renormalised to unit length after each
optimiser step, so a feature's activation is the length of what it writes (in scaled units).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


class SparseAutoencoder(nn.Module):
    """``n_features`` ReLU features over ``d``-wide inputs, with the input scale ``scale`` built in."""

    def __init__(self, d: int, n_features: int, scale: float = 1.0, generator: torch.Generator | None = None):
        super().__init__()
        w = torch.randn(n_features, d, generator=generator)
        w = w / w.norm(dim=1, keepdim=True)
        self.w_dec = nn.Parameter(w)  # [n, d], unit rows
        self.w_enc = nn.Parameter(w.T.clone())  # [d, n], the transposed decoder to start with
        self.b_enc = nn.Parameter(torch.zeros(n_features))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.register_buffer("scale", torch.tensor(float(scale)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x * self.scale - self.b_dec) @ self.w_enc + self.b_enc)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return (f @ self.w_dec + self.b_dec) / self.scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode(x)
        return self.decode(f), f

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.w_dec.div_(self.w_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))


@dataclass
class SAETraining:
    """What training an SAE reports: the loss at the end and its quality on held-out activations."""

    sae: SparseAutoencoder
    final_loss: float
    quality: dict


def fit_scale(x: torch.Tensor) -> float:
    """The constant that makes the mean squared norm of ``x`` [n, d] equal to d."""
    return math.sqrt(x.shape[1] / float(x.double().square().sum(1).mean().clamp_min(1e-12)))


def train_sae(
    x: torch.Tensor,
    n_features: int,
    *,
    l1: float,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    held_out: torch.Tensor | None = None,
    bf16: bool = False,
    progress=None,
) -> SAETraining:
    """Train an SAE on the rows of ``x`` [n, d] (float32) with Adam: loss = mean over rows of ‖x̂ − x‖²/d (in
        scaled units) + ``l1`` · mean over rows of Σ f. Batches are drawn with ``seed`` (the same seed → the same SAE
        on the same machine); ``held_out`` rows measure its quality (default: ``x``). ``bf16``: the two matrix products
    under bf16 autocast (float32 weights and loss; about 3× faster where the CPU has bf16 matrix instructions)."""
    gen = torch.Generator().manual_seed(seed)
    sae = SparseAutoencoder(x.shape[1], n_features, fit_scale(x), gen).to(x.device)
    with torch.no_grad():
        sae.b_dec.copy_((x * sae.scale).mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999))
    loss_value = float("nan")
    for _ in range(steps):
        rows = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=gen)
        batch = x[rows]
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            x_hat, f = sae(batch)
        x_hat, f = x_hat.float(), f.float()
        mse = ((x_hat - batch) * sae.scale).square().sum(1).mean() / x.shape[1]
        loss = mse + l1 * f.sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sae.normalise_decoder()
        loss_value = float(loss.detach())
        if progress:
            progress(1)
    sae.requires_grad_(False).eval()
    return SAETraining(sae, loss_value, reconstruction_quality(sae, held_out if held_out is not None else x))


@torch.no_grad()
def reconstruction_quality(sae: SparseAutoencoder, x: torch.Tensor, batch: int = 4096) -> dict:
    """``fve``: fraction of the variance of ``x`` the reconstruction explains (1 − ‖x − x̂‖² / ‖x − mean‖²);
    ``l0``: mean number of features active per row; ``dead``: features active on no row."""
    err = total = active = 0.0
    fired = torch.zeros(sae.w_dec.shape[0], dtype=torch.bool, device=x.device)
    mean = x.double().mean(0)
    for i in range(0, x.shape[0], batch):
        rows = x[i : i + batch]
        x_hat, f = sae(rows)
        err += float((x_hat - rows).double().square().sum())
        total += float((rows.double() - mean).square().sum())
        on = f > 0
        active += float(on.sum())
        fired |= on.any(0)
    return {
        "fve": round(1 - err / max(total, 1e-12), 4),
        "l0": round(active / max(x.shape[0], 1), 2),
        "dead": int((~fired).sum()),
        "rows": int(x.shape[0]),
    }
