"""The plain-script baseline of a whole ``trainforge train`` process: what a hand-written script costs.

Same data, split, model, optimizer and epochs as ``trainforge train --model mlp`` with its defaults:
scikit-learn's bundled dataset, a seeded stratified split (70/10/20 unless told), standardization fitted
on the training split, an MLP (Linear -> ReLU -> Dropout 0.1 per hidden layer), Adam (lr 1e-3), batch 64,
a ``torch.utils.data.DataLoader`` loop with a validation pass per epoch, test accuracy at the end; with
``--export``, ``torch.onnx.export(dynamo=True)`` (dynamic batch) and one onnxruntime check against torch.
No tracking, plots, checkpoint or early stopping.

    python benchmarks/plain_train.py --dataset iris --epochs 5 --export
    python benchmarks/plain_train.py --dataset digits --hidden 256 256 --val 0.2 --test 0.2 --epochs 45
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("iris", "digits"), default="iris")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--val", type=float, default=0.1)
    parser.add_argument("--test", type=float, default=0.2)
    parser.add_argument("--export", action="store_true", help="torch.onnx.export (dynamo) + one onnxruntime check")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from sklearn import datasets
    from sklearn.model_selection import train_test_split
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    bunch = datasets.load_iris() if args.dataset == "iris" else datasets.load_digits()
    x, y = bunch.data.astype(np.float32), bunch.target.astype(np.int64)
    idx = np.arange(len(x))
    rest, test = train_test_split(idx, test_size=args.test, random_state=0, stratify=y)
    train, val = train_test_split(rest, test_size=args.val / (1 - args.test), random_state=0, stratify=y[rest])
    mean, std = x[train].mean(0), x[train].std(0) + 1e-8
    x = (x - mean) / std
    tensors = {k: (torch.from_numpy(x[i]), torch.from_numpy(y[i])) for k, i in
               (("train", train), ("val", val), ("test", test))}

    layers, width = [], x.shape[1]
    for size in args.hidden:
        layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(0.1)]
        width = size
    model = nn.Sequential(*layers, nn.Linear(width, int(y.max()) + 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    loader = DataLoader(TensorDataset(*tensors["train"]), batch_size=64, shuffle=True)

    def evaluate(split: str) -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            xs, ys = tensors[split]
            out = model(xs)
            return float(loss_fn(out, ys)), float((out.argmax(1) == ys).float().mean())

    for _ in range(args.epochs):
        model.train()
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
        val_loss, val_acc = evaluate("val")
    test_loss, test_acc = evaluate("test")
    print(f"epochs {args.epochs}: val_loss {val_loss:.4f} val_acc {val_acc:.4f} test_acc {test_acc:.4f}")

    if args.export:
        import onnxruntime as ort

        model.eval()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            sample = tensors["test"][0][:2]
            torch.onnx.export(model, (sample,), str(path), input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = session.run(None, {"input": tensors["test"][0].numpy()})[0]
            with torch.no_grad():
                diff = float(np.abs(model(tensors["test"][0]).numpy() - got).max())
        print(f"onnx max abs diff {diff:.2e}")


if __name__ == "__main__":
    main()
