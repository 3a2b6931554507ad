"""Image transforms written on tensors (torchvision is not available): all take a torch.Generator so
augmented runs are repeatable and resumable."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """[B, C, H, W]: a random H x W crop of the zero-padded image, then a horizontal flip with p = 1/2."""
    B, _, H, W = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (B,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (B,), generator=generator)
    flip = torch.rand(B, generator=generator) < 0.5
    rows = (dy[:, None] + torch.arange(H)).to(x.device)  # [B, H]
    cols = dx[:, None] + torch.arange(W)
    cols = torch.where(flip[:, None], cols.flip(1), cols).to(x.device)  # a flip reads the columns reversed
    batch = torch.arange(B, device=x.device)[:, None, None]
    # Contiguous NCHW: backward through the CIFAR ResNet on this channels-last view corrupted memory
    # ("double free") in torch 2.13's CPU kernels.
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def mnist_to_rgb32(images: torch.Tensor) -> torch.Tensor:
    """[N, 28, 28] digits -> [N, 32, 32, 3]: a 2-pixel zero border, the grey value in all three channels."""
    return F.pad(images, (2, 2, 2, 2)).unsqueeze(3).expand(-1, -1, -1, 3).contiguous()


def normalize(images_uint8_nhwc: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float [N, C, H, W], scaled to [0, 1] then standardised per channel."""
    x = images_uint8_nhwc.permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
