"""The plain-script baseline of ``trainforge tune``: a hand-written Optuna study of the same work.

What ``benchmarks/bench_tune.py`` runs ``trainforge tune`` on: digits, the MLP 64-128-128-10 (ReLU,
dropout 0.1), Adam with ``lr`` log-uniform on [3e-4, 1e-2] (the adam plugin's range) and weight decay 0,
batch 64, ``--epochs`` epochs per trial, TPE seeded with ``--seed``, trial 0 enqueued at the default
lr 1e-3 (as ``tune`` enqueues train's defaults), no pruning. The split is tune's: a seeded stratified 20 %
test split drawn first, then 20 % of all rows for validation (same rows as trainforge's, same
``train_test_split`` calls), standardization fitted on the training rows. A trial's value is its best
validation accuracy over the epochs. An in-memory Optuna storage; nothing tracked, saved or exported.

    python benchmarks/plain_tune.py --n-trials 30 --epochs 20
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
    args = parser.parse_args(argv)

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

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", *LR_RANGE, log=True)
        torch.manual_seed(0)
        layers, width = [], x.shape[1]
        for size in args.hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(0.1)]
            width = size
        model = nn.Sequential(*layers, nn.Linear(width, int(y.max()) + 1))
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        loss_fn = nn.CrossEntropyLoss()
        loader = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True)
        best = 0.0
        for _ in range(args.epochs):
            model.train()
            for xb, yb in loader:
                optimizer.zero_grad()
                loss_fn(model(xb), yb).backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                best = max(best, float((model(x_val).argmax(1) == y_val).float().mean()))
        return best

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=args.seed))
    study.enqueue_trial({"lr": 1e-3})
    study.optimize(objective, n_trials=args.n_trials)
    print(f"trials {len(study.trials)}: best val_accuracy {study.best_value:.4f} lr {study.best_params['lr']:.2e}")


if __name__ == "__main__":
    main()
