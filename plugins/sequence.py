"""Built-in recurrent models: ``rnn``, ``lstm``, ``gru`` (Elman 1990; Hochreiter & Schmidhuber 1997;
Cho et al. 2014) through ``torch.nn``. torch is imported inside the builders."""

from __future__ import annotations

import trainforge

CELLS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def _builder(cell: str):
    def build(input_shape, output_dim, hidden_size=64, num_layers=1, dropout=0.0, bidirectional=False):
        """``(N, T, F)`` float32 -> ``(N, output_dim)``: a stacked recurrent layer over the ``T`` steps, then a
        Linear head on the last step's output (logits for classification, the ``H`` next values for
        forecasting). ``dropout`` applies between stacked layers (ignored with one layer, as in torch).
        """
        from torch import nn

        steps, features = (int(d) for d in input_shape)
        if int(hidden_size) < 1 or int(num_layers) < 1:
            raise ValueError("hidden_size and num_layers must be >= 1")

        class Recurrent(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.rnn = getattr(nn, cell)(features, int(hidden_size), num_layers=int(num_layers), batch_first=True,
                                             dropout=float(dropout) if int(num_layers) > 1 else 0.0,
                                             bidirectional=bool(bidirectional))
                self.head = nn.Linear(int(hidden_size) * (2 if bidirectional else 1), output_dim)

            def forward(self, x):
                out, _ = self.rnn(x)
                return self.head(out[:, -1])

        return Recurrent()

    build.__name__ = f"build_{cell.lower()}"
    return build


def space(trial):
    return {"hidden_size": trial.suggest_categorical("hidden_size", [16, 32, 64, 128]),
            "num_layers": trial.suggest_int("num_layers", 1, 2),
            "dropout": trial.suggest_float("dropout", 0.0, 0.3)}


@trainforge.hookimpl
def register_models(register):
    for name, cell in CELLS.items():
        register(trainforge.ModelSpec(
            name=name,
            description=f"torch.nn.{cell} over (T, F) sequences + linear head on the last step "
                        "(sequence classification, multi-step forecasting)",
            build=_builder(cell),
            input="sequence",
            tasks={"classification", "regression", "forecasting"},
            defaults={"hidden_size": 64, "num_layers": 1, "dropout": 0.0, "bidirectional": False},
            param_help={"hidden_size": "units of the recurrent state", "num_layers": "stacked recurrent layers",
                        "dropout": "dropout between stacked layers", "bidirectional": "also read the sequence backwards"},
            search_space=space,
        ))
