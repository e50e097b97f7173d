"""The plain-script baseline of ``trainforge tune``: a hand-written Optuna study of the same work.

What ``benchmarks/bench_tune.py`` runs ``trainforge tune`` on: digits, the MLP 64-128-128-10 (ReLU,
dropout 0.1), Adam with ``lr`` log-uniform on [3e-4, 1e-2] (the adam plugin's range) and weight decay 0,
batch 64, ``--epochs`` epochs per trial, TPE seeded with ``--seed``, trial 0 enqueued at the default
lr 1e-3 (as ``tune`` enqueues train's defaults), no pruning. The split is tune's: a seeded stratified 20 %
test split drawn first, then 20 % of all rows for validation (same rows as trainforge's, same
``train_test_split`` calls), standardization fitted on the training rows. A trial's value is its best
validation accuracy over the epochs. An in-memory Optuna storage; nothing tracked, saved or exported.

``--mlflow`` adds what a user wiring Optuna and MLflow together by hand would write for the same study, in
MLflow's documented calls, as the second baseline of ``bench_tune.py --mlflow``: a parent run on a new
``sqlite:///mlruns/mlflow.db`` store, a nested child run per trial with its params, its per-epoch
``train_loss``, ``val_loss`` and ``val_accuracy``, and its best ``state_dict`` uploaded as an artifact; the
study's best value and params on the parent. ``--export`` (with ``--mlflow``) then exports the best
trial's model with ``torch.onnx.export`` (dynamo, dynamic batch), checks it against torch with
onnxruntime, and logs it with ``mlflow.onnx.log_model`` into the parent run, registered.

    python benchmarks/plain_tune.py --n-trials 30 --epochs 20
    python benchmarks/plain_tune.py --n-trials 30 --epochs 20 --mlflow --export
"""

from __future__ import annotations

import argparse

LR_RANGE = (3e-4, 1e-2)  # plugins/optimizers.py: adam_space


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    parser.add_argument("--val", type=float, default=0.2)
    parser.add_argument("--test", type=float, default=0.2)
    parser.add_argument("--mlflow", action="store_true", help="track the study in MLflow, as by hand")
    parser.add_argument("--export", action="store_true", help="with --mlflow: export, log and register the best")
    args = parser.parse_args(argv)
    if args.export and not args.mlflow:
        parser.error("--export needs --mlflow")

    import numpy as np
    import optuna
    import torch
    from sklearn import datasets
    from sklearn.model_selection import train_test_split
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    bunch = datasets.load_digits()
    x, y = bunch.data.astype(np.float32), bunch.target.astype(np.int64)
    idx = np.arange(len(x))
    rest, _test = train_test_split(idx, test_size=args.test, random_state=0, stratify=y)
    train, val = train_test_split(rest, test_size=args.val / (1 - args.test), random_state=0, stratify=y[rest])
    mean, std = x[train].mean(0), x[train].std(0) + 1e-8
    x = (x - mean) / std
    x_train, y_train = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    x_val, y_val = torch.from_numpy(x[val]), torch.from_numpy(y[val])

    tracked = _Tracking() if args.mlflow else None
    best_state: dict[str, object] = {}

    def build() -> nn.Module:
        torch.manual_seed(0)
        layers, width = [], x.shape[1]
        for size in args.hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(0.1)]
            width = size
        return nn.Sequential(*layers, nn.Linear(width, int(y.max()) + 1))

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", *LR_RANGE, log=True)
        child = tracked.start_trial(trial.number, {"lr": lr}) if tracked else None
        model = build()
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        loss_fn = nn.CrossEntropyLoss()
        loader = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True)
        best, state = 0.0, None
        for epoch in range(args.epochs):
            model.train()
            total = 0.0
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = loss_fn(model(xb), yb)
                loss.backward()
                optimizer.step()
                if child is not None:  # the untracked baseline stays exactly what it was
                    total += float(loss) * len(xb)
            model.eval()
            with torch.no_grad():
                logits = model(x_val)
                accuracy = float((logits.argmax(1) == y_val).float().mean())
            if accuracy > best and child is not None:
                state = {k: v.clone() for k, v in model.state_dict().items()}
            best = max(best, accuracy)
            if child is not None:
                tracked.epoch(epoch, {"train_loss": total / len(x_train), "val_loss": float(loss_fn(logits, y_val)),
                                      "val_accuracy": accuracy})
        if child is not None:
            tracked.end_trial(state, best)
            if best > best_state.get("value", -1.0):
                best_state.update(value=best, state=state)
        return best

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=args.seed))
    study.enqueue_trial({"lr": 1e-3})
    study.optimize(objective, n_trials=args.n_trials)
    if tracked:
        tracked.end_study(study)
        if args.export:
            model = build()
            model.load_state_dict(best_state["state"])
            tracked.export(model.eval(), x_val[:64])
        tracked.mlflow.end_run()
    print(f"trials {len(study.trials)}: best val_accuracy {study.best_value:.4f} lr {study.best_params['lr']:.2e}")


class _Tracking:
    """MLflow by hand: a parent run, a nested run per trial, per-epoch metrics, the best state as an artifact."""

    def __init__(self) -> None:
        import os

        import mlflow

        os.makedirs("mlruns", exist_ok=True)
        mlflow.set_tracking_uri("sqlite:///mlruns/mlflow.db")
        mlflow.set_experiment("plain-tune")
        self.mlflow, self.parent = mlflow, mlflow.start_run(run_name="study")

    def start_trial(self, number: int, params: dict[str, float]) -> object:
        run = self.mlflow.start_run(run_name=f"trial-{number}", nested=True)
        self.mlflow.log_params(params)
        return run

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.mlflow.log_metrics(metrics, step=epoch)

    def end_trial(self, state: dict | None, best: float) -> None:
        import tempfile
        from pathlib import Path

        import torch

        self.mlflow.log_metric("best_val_accuracy", best)
        if state is not None:
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(state, Path(tmp) / "best.pt")
                self.mlflow.log_artifact(str(Path(tmp) / "best.pt"), artifact_path="checkpoints")
        self.mlflow.end_run()

    def end_study(self, study: object) -> None:
        self.mlflow.log_params({f"best_{k}": v for k, v in study.best_params.items()})
        self.mlflow.log_metric("best_val_accuracy", study.best_value)

    def export(self, model: object, example: object) -> None:
        import tempfile
        from pathlib import Path

        import numpy as np
        import onnx
        import onnxruntime as ort
        import torch

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, external_data=False,
                              verbose=False)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            with torch.no_grad():
                expected = model(example).numpy()
            got = session.run(None, {"input": example.numpy()})[0]
            assert np.abs(got - expected).max() < 1e-4, "ONNX differs from torch"
            self.mlflow.onnx.log_model(onnx.load(str(path)), name="model", registered_model_name="plain-tune")


if __name__ == "__main__":
    main()
