"""Models that own their training step: the GAN (two optimizers, sample grids per epoch, the generator as
ONNX) and the contract itself on a minimal model."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pandas as pd
import torch
from conftest import mlflow_client

import trainforge
from trainforge import manager
from trainforge.training.trainer import Trainer


class _Watch(trainforge.Callback):
    """Records the trainer's optimizers and each network's parameters before and after the fit."""

    def on_fit_start(self, trainer):
        self.optimizers = list(trainer.optimizers)
        self.before = {name: [p.detach().clone() for p in getattr(trainer.model.net, name).parameters()]
                       for name in ("generator", "discriminator")}
        self.params = {name: {id(p) for p in getattr(trainer.model.net, name).parameters()}
                       for name in ("generator", "discriminator")}

    def on_fit_end(self, trainer):
        self.after = {name: [p.detach().clone() for p in getattr(trainer.model.net, name).parameters()]
                      for name in ("generator", "discriminator")}


def test_gan_trains_logs_sample_grids_and_exports_the_generator(workdir, cli):
    watch = _Watch()
    result = trainforge.train(model__name="gan", dataset__name="digits", optimizer__lr=0.0005, quiet=True,
                              overrides=["trainer.epochs=3", "trainer.patience=0", "model.hidden=64"],
                              callbacks=[watch])
    # two optimizers, one over each network's parameters, and both stepped: every network moved
    assert len(watch.optimizers) == 2
    owned = [{id(p) for group in o.param_groups for p in group["params"]} for o in watch.optimizers]
    assert owned == [watch.params["generator"], watch.params["discriminator"]]
    for name in ("generator", "discriminator"):
        moved = [not torch.equal(a, b) for a, b in zip(watch.before[name], watch.after[name], strict=True)]
        assert all(moved), f"the {name}'s optimizer did not step every parameter"
    client = mlflow_client(workdir)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["trainforge.task"] == "generation"
    samples = sorted(a.path for a in client.list_artifacts(result.run_id, "samples"))
    assert samples == ["samples/epoch_001.png", "samples/epoch_002.png", "samples/epoch_003.png"]
    for key in ("train_g_loss", "train_d_loss", "val_loss"):  # both networks' losses, every epoch
        assert len(client.get_metric_history(result.run_id, key)) == 3
    # two optimizers, one per network, built from the configured optimizer
    gan = result.model.net
    assert all(np.isfinite(h["train_d_loss"]) for h in result.history)

    session = ort.InferenceSession(result.onnx_path, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 16]
    for n in (1, 6):
        (images,) = session.run(["samples"], {"input": np.random.default_rng(n).normal(size=(n, 16)).astype("f4")})
        assert images.shape == (n, 1, 8, 8)
    z = result.model.example_input(5).numpy()
    with torch.inference_mode():
        expected = result.model.cpu().eval()(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(session.run(["samples"], {"input": z})[0], expected, atol=1e-4)
    np.save(workdir / "z.npy", z)
    cli("predict", result.onnx_path, "--input", "z.npy", "--output", "gen.csv")
    generated = pd.read_csv(workdir / "gen.csv").to_numpy()
    assert generated.shape == (5, 64)
    np.testing.assert_allclose(generated, expected.reshape(5, 64), atol=1e-4)
    assert gan.generator is not None and gan.discriminator is not None


class _Counting(torch.nn.Module):
    """A classifier that owns its step: plain SGD done by hand, with a metric of its own."""

    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(d, k)
        self.calls = {"train": 0, "val": 0}

    def forward(self, x):
        return self.linear(x)

    def training_step(self, batch, optimizers):
        x, y = batch
        self.calls["train"] += 1
        (opt,) = optimizers
        loss = torch.nn.functional.cross_entropy(self(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.detach(), "batch_rows": torch.tensor(float(len(x)))}

    def validation_step(self, batch):
        x, y = batch
        self.calls["val"] += 1
        return {"loss": torch.nn.functional.cross_entropy(self(x), y), "acc": (self(x).argmax(1) == y).float().mean()}


def test_any_model_may_own_its_step():
    from trainforge.run.api import build_config, load_data
    from trainforge.training.modeling import TrainforgeModel, build_optimizer
    from trainforge.training.tasks import get_task

    cfg = build_config(dataset__name="iris", trainer__epochs=4, trainer__batch_size=32, trainer__device="cpu")
    bundle = load_data(cfg)
    net = _Counting(4, 3)
    model = TrainforgeModel(net, bundle.meta, flatten=False)
    assert model.has_custom_step and not model.generative
    optimizers = model.configure_optimizers(lambda p: build_optimizer({"name": "sgd", "lr": 0.5}, p))
    trainer = Trainer(model, optimizers, get_task("classification"), cfg["trainer"], output_dim=3).fit(bundle)
    assert net.calls["train"] == 4 * 4  # 105 training rows in batches of 32, 4 epochs
    assert set(trainer.history[-1]) == {"train_loss", "train_batch_rows", "val_loss", "val_acc", "lr"}
    assert trainer.history[-1]["train_loss"] < trainer.history[0]["train_loss"]
    assert trainer.evaluate(bundle.test)["acc"] > 0.6
    assert manager.get("model", "gan").tasks == {"generation"}
