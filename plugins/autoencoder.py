"""Built-in ``autoencoder`` (reconstruction task): dense for vectors, convolutional for ``(C, H, W)`` images.

Its encoder exports alone (``trainforge export RUN_ID --part encoder``): raw features in, the latent code
``(N, latent_dim)`` out, for dimensionality reduction. torch is imported inside the builder.
"""

from __future__ import annotations

import trainforge


def build_autoencoder(input_shape, output_dim, kind="auto", latent_dim=8, hidden_sizes=(128, 64),
                      filters=(16, 32)):
    """Encoder -> latent ``(N, latent_dim)`` -> decoder, trained to reproduce its standardized input.

    - ``kind="dense"``: flatten, Linear+ReLU through ``hidden_sizes``, Linear to the latent; the decoder
      mirrors it and returns ``(N, prod(input_shape))`` (reshaped to the input shape by trainforge).
    - ``kind="conv"`` (``(C, H, W)`` only): conv3x3(filters[0]) -> conv3x3 stride 2 (filters[1]) ->
      Linear to the latent; the decoder mirrors it with a stride-2 transposed convolution.
    - ``kind="auto"``: conv for images, dense otherwise.

    Raises ``ValueError`` (a ConfigError for users) for an unknown kind or conv on non-images.
    """
    import math

    import torch
    from torch import nn

    shape = tuple(int(d) for d in input_shape)
    kind = ("conv" if len(shape) == 3 else "dense") if kind == "auto" else kind
    latent = int(latent_dim)
    if kind not in ("dense", "conv"):
        raise ValueError(f"kind must be auto, dense or conv, got {kind!r}")
    if kind == "conv" and len(shape) != 3:
        raise ValueError(f"kind=conv needs (C, H, W) images, got samples of shape {shape}")

    if kind == "dense":
        sizes = [int(s) for s in ([hidden_sizes] if isinstance(hidden_sizes, int) else hidden_sizes)]
        widths = [math.prod(shape), *sizes]
        enc, dec = [nn.Flatten()], []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            enc += [nn.Linear(a, b), nn.ReLU()]
        enc.append(nn.Linear(widths[-1], latent))
        rev = [latent, *reversed(widths[1:])]
        for a, b in zip(rev[:-1], rev[1:], strict=True):
            dec += [nn.Linear(a, b), nn.ReLU()]
        dec.append(nn.Linear(rev[-1], widths[0]))
        encoder, decoder = nn.Sequential(*enc), nn.Sequential(*dec)
    else:
        c, h, w = shape
        f1, f2 = (int(f) for f in filters)
        h2, w2 = (h + 1) // 2, (w + 1) // 2
        encoder = nn.Sequential(
            nn.Conv2d(c, f1, 3, padding=1), nn.ReLU(), nn.Conv2d(f1, f2, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(f2 * h2 * w2, latent))

        class Crop(nn.Module):  # a stride-2 transposed conv gives 2*ceil(H/2): crop odd sizes back
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x[:, :, :h, :w]

        decoder = nn.Sequential(
            nn.Linear(latent, f2 * h2 * w2), nn.ReLU(), nn.Unflatten(1, (f2, h2, w2)),
            nn.ConvTranspose2d(f2, f1, 4, stride=2, padding=1), nn.ReLU(), Crop(), nn.Conv2d(f1, c, 3, padding=1))

    class Autoencoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder, self.decoder = encoder, decoder

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.decoder(self.encoder(x))

        def export_parts(self) -> dict:
            return {"encoder": (self.encoder, "latent")}

    return Autoencoder()


def space(trial):
    return {"latent_dim": trial.suggest_categorical("latent_dim", [4, 8, 16, 32]),
            "hidden_sizes": [trial.suggest_categorical("width", [64, 128, 256]), 64]}


@trainforge.hookimpl
def register_models(register):
    register(trainforge.ModelSpec(
        name="autoencoder",
        description="Autoencoder (dense or convolutional) for reconstruction; --part encoder exports the encoder",
        build=build_autoencoder,
        tasks={"reconstruction"},
        defaults={"kind": "auto", "latent_dim": 8, "hidden_sizes": [128, 64], "filters": [16, 32]},
        param_help={"kind": "auto (conv for images), dense or conv", "latent_dim": "size of the code",
                    "hidden_sizes": "dense layers between input and code", "filters": "conv channels (2 layers)"},
        search_space=space,
    ))
