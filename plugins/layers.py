"""Layers the built-in models share (imported by their builders, so ``trainforge plugins`` stays torch-free)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


class RandomTranslation(nn.Module):
    """Shift each image of a training batch by its own random offset; the identity in eval mode.

    Input and output ``(N, C, H, W)`` float. Offsets are drawn uniformly from ``[-translate * W,
    translate * W]`` pixels horizontally and ``[-translate * H, translate * H]`` vertically (the
    ``translate`` of torchvision's ``RandomAffine``, the ``height_factor``/``width_factor`` of Keras'
    ``RandomTranslation`` layer), resampled bilinearly; pixels shifted in from outside repeat the border.
    Like Keras' preprocessing layers it is active only while training, so evaluation, checkpoints and the
    exported ONNX graph see the images unchanged. Draws from torch's global RNG (seeded by the trainer).

    Raises ``ValueError`` unless ``0 <= translate < 0.5``.
    """

    def __init__(self, translate: float) -> None:
        super().__init__()
        if not 0.0 <= float(translate) < 0.5:
            raise ValueError(f"translate must be in [0, 0.5), got {translate}")
        self.translate = float(translate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.translate == 0.0:
            return x
        n = x.shape[0]
        theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        # affine_grid works in [-1, 1] coordinates: a shift of t * size pixels is 2 * t there
        theta[:, :, 2] = (torch.rand(n, 2, dtype=x.dtype, device=x.device) * 2 - 1) * (2 * self.translate)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def extra_repr(self) -> str:
        return f"translate={self.translate}"
