"""Layers the built-in models share (imported by their builders, so ``trainforge plugins`` stays torch-free)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


def random_translation(x: torch.Tensor, translate: float) -> torch.Tensor:
    """Shift each image of ``x`` ``(N, C, H, W)`` (float) by its own random offset; same shape and dtype.

    Offsets are drawn uniformly from ``[-translate * W, translate * W]`` pixels horizontally and
    ``[-translate * H, translate * H]`` vertically (the ``translate`` of torchvision's ``RandomAffine``, the
    ``height_factor``/``width_factor`` of Keras' ``RandomTranslation`` layer), resampled bilinearly; pixels
    shifted in from outside repeat the border. Draws from torch's global RNG (seeded by the trainer).
    """
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    # affine_grid works in [-1, 1] coordinates: a shift of t * size pixels is 2 * t there
    theta[:, :, 2] = (torch.rand(n, 2, dtype=x.dtype, device=x.device) * 2 - 1) * (2 * translate)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class TranslatedSequential(nn.Sequential):
    """``nn.Sequential(*layers)`` whose input images are shifted by :func:`random_translation` while
    training, like a Keras preprocessing layer: in eval mode, and so in evaluation and in the exported ONNX
    graph, it is the plain ``Sequential``.

    The shift holds no parameters or buffers and is not a child module, so the state-dict keys are those of
    ``nn.Sequential(*layers)``: checkpoints load into either. Raises ``ValueError`` unless
    ``0 <= translate < 0.5``; 0 disables the shift.
    """

    def __init__(self, translate: float, *layers: nn.Module) -> None:
        super().__init__(*layers)
        if not 0.0 <= float(translate) < 0.5:
            raise ValueError(f"translate must be in [0, 0.5), got {translate}")
        self.translate = float(translate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.translate > 0.0:
            x = random_translation(x, self.translate)
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"translate={self.translate}"
