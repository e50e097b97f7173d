"""Task metrics, accumulated batch by batch on tensors, agree with scikit-learn's reference formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from trainforge.training.tasks import Classification, Regression, metric_mode


def _accumulate(task, outputs: torch.Tensor, target: torch.Tensor, output_dim: int, batch: int) -> dict:
    state = task.new_state(output_dim, torch.device("cpu"))
    for start in range(0, len(target), batch):  # several uneven batches, like an epoch
        task.update(state, outputs[start : start + batch], target[start : start + batch])
    return task.compute(state)


@pytest.mark.parametrize("seed, k, n, batch, missing", [
    (0, 3, 150, 64, None),
    (1, 10, 997, 100, None),
    (2, 5, 203, 17, 4),  # class 4 never occurs in the targets (precision/recall 0 by zero_division=0)
    (3, 2, 31, 31, None),
])
def test_classification_metrics_match_sklearn(seed, k, n, batch, missing):
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, (n,), generator=gen)
    if missing is not None:
        target[target == missing] = 0
    logits = torch.randn(n, k, generator=gen)
    # make the predictions better than chance so every metric is away from 0 and 1
    logits[torch.arange(n), target] += torch.rand(n, generator=gen) * 2
    got = _accumulate(Classification(), logits, target, k, batch)

    y, pred = target.numpy(), logits.argmax(1).numpy()
    precision, recall, f1, _ = skm.precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    expected = {
        "accuracy": skm.accuracy_score(y, pred),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "loss": skm.log_loss(y, torch.softmax(logits.double(), 1).numpy(), labels=list(range(k))),
    }
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    assert 0.0 < got["accuracy"] < 1.0


def test_classification_label_never_predicted_nor_true_is_ignored():
    """sklearn averages over labels present in y_true or y_pred; an absent class must not drag the mean."""
    target = torch.tensor([0, 0, 1, 1, 1, 0])
    logits = torch.zeros(6, 4)
    logits[torch.arange(6), torch.tensor([0, 1, 1, 1, 0, 0])] = 3.0  # classes 2 and 3 appear nowhere
    got = _accumulate(Classification(), logits, target, 4, 4)
    y, pred = target.numpy(), logits.argmax(1).numpy()
    p, r, f, _ = skm.precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, r, f), abs=1e-12)


@pytest.mark.parametrize("seed, n, t, batch, scale", [
    (0, 300, 1, 64, 1.0),
    (1, 101, 3, 10, 100.0),  # several targets: uniform average, as sklearn's default multioutput
    (2, 7, 1, 3, 1e-3),
])
def test_regression_metrics_match_sklearn(seed, n, t, batch, scale):
    gen = torch.Generator().manual_seed(seed)
    target = (torch.randn(n, t, generator=gen) * scale + 5 * scale).float()
    outputs = (target + torch.randn(n, t, generator=gen) * scale * 0.5).float()
    task = Regression(target_std=target.std(0).numpy())
    got = _accumulate(task, outputs, target, t, batch)
    y, p = target.double().numpy(), outputs.double().numpy()
    assert got["mse"] == pytest.approx(skm.mean_squared_error(y, p), rel=1e-6)
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, p), rel=1e-6)
    assert got["r2"] == pytest.approx(skm.r2_score(y, p), rel=1e-6, abs=1e-9)
    # the loss is the MSE in units of the training targets' std (scale-free), not the raw MSE
    expected_loss = float((((outputs - target) / target.std(0)) ** 2).mean())
    assert got["loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_regression_loss_is_plain_mse_without_target_std():
    gen = torch.Generator().manual_seed(5)
    target, outputs = torch.randn(40, 1, generator=gen), torch.randn(40, 1, generator=gen)
    loss = Regression().loss(outputs, target)
    assert float(loss) == pytest.approx(skm.mean_squared_error(target.numpy(), outputs.numpy()), rel=1e-6)


def test_heads_and_metric_modes():
    logits = torch.randn(5, 3)
    out_logits, probs = Classification().head(logits)
    assert torch.equal(out_logits, logits)
    np.testing.assert_allclose(probs.sum(1).numpy(), 1.0, rtol=1e-6)
    assert Classification().onnx_outputs == ("logits", "probabilities")
    assert Regression().onnx_outputs == ("prediction",)
    assert metric_mode("val_accuracy", Classification()) == "max"
    assert metric_mode("val_loss", Classification()) == "min"
    assert metric_mode("val_r2", Regression()) == "max"
    assert metric_mode("val_mse", Regression()) == "min"
