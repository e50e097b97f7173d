"""Model plugin: ``example-resmlp``, a residual multi-layer perceptron for vectors."""

from __future__ import annotations

import trainforge


def build_resmlp(input_shape, output_dim, width=64, blocks=2, dropout=0.0):
    """``(N, D)`` float32 -> ``(N, output_dim)``: Linear(D, width), ``blocks`` pre-norm residual blocks
    ``x + Linear(GELU(Linear(LayerNorm(x))))`` (as in the MLP of a transformer block), then a Linear head.

    Raises ``ValueError`` (reported as a ConfigError) for a non-positive width or block count.
    """
    from torch import nn

    if int(width) < 1 or int(blocks) < 0:
        raise ValueError("width must be >= 1 and blocks >= 0")

    class Block(nn.Module):
        def __init__(self, w: int) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, 2 * w), nn.GELU(), nn.Dropout(float(dropout)),
                                      nn.Linear(2 * w, w))

        def forward(self, x):
            return x + self.body(x)

    w = int(width)
    return nn.Sequential(nn.Linear(int(input_shape[0]), w), *[Block(w) for _ in range(int(blocks))],
                         nn.LayerNorm(w), nn.Linear(w, output_dim))


def resmlp_space(trial):
    return {"width": trial.suggest_categorical("width", [32, 64, 128]),
            "blocks": trial.suggest_int("blocks", 1, 4),
            "dropout": trial.suggest_float("dropout", 0.0, 0.3)}


@trainforge.hookimpl
def register_models(register):
    register(trainforge.ModelSpec(
        name="example-resmlp",
        description="Residual MLP (pre-norm blocks with skip connections) for vectors",
        build=build_resmlp,
        input="vector",
        tasks={"classification", "regression"},
        defaults={"width": 64, "blocks": 2, "dropout": 0.0},
        param_help={"width": "units of every block", "blocks": "number of residual blocks",
                    "dropout": "dropout inside each block"},
        search_space=resmlp_space,
    ))
