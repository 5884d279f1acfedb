"""Batch-wise tensor ops on the training device: normalisation and CIFAR augmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from service.contract.model_card import InputSpec


class Normalizer:
    """(x * scale - mean) / std on tensors: the formula of the service's ``normalize_uint8``."""

    def __init__(self, spec: InputSpec, device: torch.device) -> None:
        self.scale = torch.tensor(spec.scale, dtype=torch.float32, device=device)
        self.mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.inv_std = (1.0 / torch.tensor(spec.std, dtype=torch.float32, device=device)).view(
            1, -1, 1, 1
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, C] -> float32 [N, C, H, W]."""
        x = images.permute(0, 3, 1, 2).to(torch.float32) * self.scale
        return ((x - self.mean) * self.inv_std).contiguous()


def random_crop_flip(
    images: torch.Tensor, generator: torch.Generator, *, padding: int = 4, flip: bool = True
) -> torch.Tensor:
    """Zero-pad by ``padding``, crop back at a random offset per image, flip half horizontally.

    Works on a whole uint8 [N, H, W, C] batch on its device; ``generator`` (on the same device)
    makes it reproducible.
    """
    n, h, w, _ = images.shape
    device = images.device
    out = images
    if padding > 0:
        padded = F.pad(images, (0, 0, padding, padding, padding, padding))
        offsets = torch.randint(
            0, 2 * padding + 1, (2, n), generator=generator, device=generator.device
        ).to(device)
        rows = offsets[0][:, None] + torch.arange(h, device=device)[None, :]
        cols = offsets[1][:, None] + torch.arange(w, device=device)[None, :]
        batch = torch.arange(n, device=device)[:, None, None]
        out = padded[batch, rows[:, :, None], cols[:, None, :]]
    if flip:
        mask = torch.rand(n, generator=generator, device=generator.device).to(device) < 0.5
        out = torch.where(mask[:, None, None, None], out.flip(2), out)
    return out
