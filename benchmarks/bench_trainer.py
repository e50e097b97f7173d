"""Trainer overhead: trainforge's fit vs a hand-written PyTorch loop vs PyTorch Lightning.

Same model (built by trainforge's registry, same seed, same initial weights), same data (the digits
split trainforge makes), same optimizer (Adam, lr 1e-3), epochs, batch size and thread count. Only the
fit is timed. trainforge runs with its default callbacks (checkpoint to a temp dir, MLflow logging to a
SQLite store in a temp dir; early stopping is disabled with ``patience=0`` so every contender runs all
epochs; the progress bar is off, as with ``--quiet``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from common import Check, Section, Stats, interleave, log, paired_ratios

TARGETS = {"mlp": 1.10, "cnn": 1.05}


EVENTS = ("on_fit_start", "on_epoch_end", "on_fit_end", "on_exception")


def timed(callback: Any) -> Any:
    """Make ``callback`` add up the seconds spent in its events (``callback.bench_seconds``).

    The events are wrapped on the instance, so the object keeps its class (callbacks that look for
    each other with ``isinstance`` still find it); the wrapper costs well under a microsecond.
    """
    callback.bench_seconds = 0.0
    for event in EVENTS:
        method = getattr(callback, event)

        def call(*args: Any, _method: Any = method) -> Any:
            started = time.perf_counter()
            try:
                return _method(*args)
            finally:
                callback.bench_seconds += time.perf_counter() - started

        setattr(callback, event, call)
    return callback


def _setup(model_name: str, epochs: int, batch_size: int, seed: int) -> dict[str, Any]:
    from trainforge.run.api import build_config
    from trainforge.training import data as data_mod

    cfg = build_config(model__name=model_name, dataset__name="digits", trainer__epochs=epochs,
                       trainer__batch_size=batch_size, trainer__seed=seed, trainer__patience=0,
                       trainer__device="cpu")
    bundle = data_mod.load(cfg["dataset"], cfg["trainer"])
    return {"cfg": cfg, "bundle": bundle}


def _fresh(cfg: dict[str, Any], meta: Any) -> tuple[Any, Any]:
    """A model with the seeded initial weights and a fresh optimizer (built through the registry)."""
    from trainforge.run.api import seed_everything
    from trainforge.training.modeling import build_model, build_optimizer

    seed_everything(int(cfg["trainer"]["seed"]))
    model = build_model(cfg["model"], meta)
    return model, build_optimizer(cfg["optimizer"], model.parameters())


def trainforge_fit(env: dict[str, Any], store: Path) -> dict[str, float]:
    """trainforge's Trainer with the default callbacks; returns fit seconds and per-part costs."""
    import mlflow

    from trainforge import manager
    from trainforge.contracts import TrainContext
    from trainforge.training.tasks import get_task
    from trainforge.training.trainer import Trainer

    cfg, bundle = env["cfg"], env["bundle"]
    model, optimizer = _fresh(cfg, bundle.meta)
    task = get_task(bundle.meta.task, meta=bundle.meta)
    with tempfile.TemporaryDirectory(dir=store) as workdir:
        run = mlflow.start_run(experiment_id=env["experiment_id"])
        ctx = TrainContext(config=cfg, meta=bundle.meta, task=task, workdir=Path(workdir),
                           run_id=run.info.run_id, quiet=True)
        callbacks = {}
        for entry in sorted(manager.entries("callback"), key=lambda e: (e.spec.order, e.spec.name)):
            cb = entry.spec.build(ctx)
            if cb is not None:
                callbacks[entry.spec.name] = timed(cb)
        val_seconds = [0.0]

        class TimedTrainer(Trainer):
            def evaluate(self, split: Any) -> dict[str, float]:
                started = time.perf_counter()
                try:
                    return super().evaluate(split)
                finally:
                    val_seconds[0] += time.perf_counter() - started

        trainer = TimedTrainer(model, optimizer, task, cfg["trainer"], output_dim=bundle.meta.output_dim,
                               callbacks=list(callbacks.values()))
        started = time.perf_counter()
        trainer.fit(bundle)
        seconds = time.perf_counter() - started
        # The last epochs' log_batch runs in a background thread while train() evaluates the test split and
        # logs artifacts (MLflowLogger.wait joins it before the run ends). Nothing overlaps it here: its
        # remaining time is measured and reported apart, not counted in the fit.
        started = time.perf_counter()
        for cb in callbacks.values():
            if hasattr(cb, "wait"):
                cb.wait()
        tail = time.perf_counter() - started
        mlflow.end_run()
    epochs = len(trainer.history)
    assert epochs == int(cfg["trainer"]["epochs"]), "trainforge stopped early: the comparison is unfair"
    out = {"fit": seconds, "mlflow_tail": tail, "val_per_epoch": val_seconds[0] / epochs, "val_accuracy": trainer.history[-1]["val_accuracy"]}
    for name, cb in callbacks.items():
        out[f"{name}_per_epoch"] = cb.bench_seconds / epochs
    return out


def raw_fit(env: dict[str, Any]) -> dict[str, float]:
    """A hand-written loop: index-batched in-memory tensors, validation loss and accuracy every epoch."""
    import torch
    from torch.nn import functional as F  # noqa: N812

    cfg, bundle = env["cfg"], env["bundle"]
    model, optimizer = _fresh(cfg, bundle.meta)
    tx, ty, vx, vy = bundle.train.x, bundle.train.y, bundle.val.x, bundle.val.y
    epochs, bs = int(cfg["trainer"]["epochs"]), int(cfg["trainer"]["batch_size"])
    generator = torch.Generator().manual_seed(int(cfg["trainer"]["seed"]))
    val_seconds = 0.0
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(tx), generator=generator)
        for start in range(0, len(tx), bs):
            idx = order[start:start + bs]
            loss = F.cross_entropy(model(tx[idx]), ty[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        v0 = time.perf_counter()
        model.eval()
        with torch.inference_mode():
            out = model(vx)
            val_loss = F.cross_entropy(out, vy).item()  # noqa: F841 - what a real loop would log
            val_acc = (out.argmax(1) == vy).double().mean().item()
        val_seconds += time.perf_counter() - v0
    seconds = time.perf_counter() - started
    return {"fit": seconds, "val_per_epoch": val_seconds / epochs, "val_accuracy": val_acc}


def lightning_fit(env: dict[str, Any]) -> dict[str, float]:
    """PyTorch Lightning with its idiomatic DataLoader(TensorDataset), no logger/checkpoint/progress bar."""
    import lightning as L  # noqa: N812
    import torch
    from torch.nn import functional as F  # noqa: N812
    from torch.utils.data import DataLoader, TensorDataset

    from trainforge.training.modeling import build_optimizer

    cfg, bundle = env["cfg"], env["bundle"]
    model, _ = _fresh(cfg, bundle.meta)

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch: Any, _: int) -> Any:
            x, y = batch
            loss = F.cross_entropy(self.model(x), y)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch: Any, _: int) -> None:
            x, y = batch
            out = self.model(x)
            self.log("val_loss", F.cross_entropy(out, y))
            self.log("val_accuracy", (out.argmax(1) == y).float().mean())

        def configure_optimizers(self) -> Any:
            return build_optimizer(cfg["optimizer"], self.parameters())

    bs, seed = int(cfg["trainer"]["batch_size"]), int(cfg["trainer"]["seed"])
    train = DataLoader(TensorDataset(bundle.train.x, bundle.train.y), batch_size=bs, shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    val = DataLoader(TensorDataset(bundle.val.x, bundle.val.y), batch_size=int(cfg["trainer"]["eval_batch_size"]))
    trainer = L.Trainer(max_epochs=int(cfg["trainer"]["epochs"]), accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    started = time.perf_counter()
    trainer.fit(Module(), train, val)
    seconds = time.perf_counter() - started
    return {"fit": seconds, "val_accuracy": float(trainer.callback_metrics["val_accuracy"])}


def _lightning_available() -> tuple[bool, str]:
    import logging
    import warnings

    try:
        import lightning  # noqa: F401
    except ImportError as exc:
        return False, f"lightning is not importable ({exc}); install the bench extra"
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    return True, ""


def _short(env: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The same set-up (same split, same tensors) with fewer epochs."""
    cfg = {**env["cfg"], "trainer": {**env["cfg"]["trainer"], "epochs": epochs}}
    return {**env, "cfg": cfg}


def run(repeats: int = 5, epochs: int = 30, short: int = 10, batch_size: int = 64, seed: int = 0,
        threads: int | None = None, models: tuple[str, ...] = ("mlp", "cnn"),
        mlp_repeats: int | None = None) -> Section:
    """Fits of ``epochs`` and of ``short`` epochs per contender; the difference is the per-epoch marginal cost.

    ``mlp_repeats``: rounds for the MLP (its fits are short and noisier; default ``repeats``).
    """
    import os

    import mlflow
    import torch

    from trainforge.tracking import store as tracking

    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    section = Section("Trainer overhead: trainforge vs a raw PyTorch loop vs Lightning")
    has_lightning, why = _lightning_available()
    section.add(
        f"Digits (1257 training rows), batch {batch_size}, Adam lr 1e-3, seed {seed}, "
        f"`torch.set_num_threads({threads})`, CPU. Only the fit is timed. Every contender runs a {epochs}-epoch "
        f"and a {short}-epoch fit in each of {repeats} interleaved rounds ({mlp_repeats or repeats} for the MLP) (after one warm-up fit each): the "
        f"{epochs}-epoch fit gives the total time, and (T{epochs} − T{short}) / {epochs - short} the **per-epoch "
        "marginal cost** (what each further epoch costs; fixed costs such as the first checkpoint or MLflow's "
        "first write cancel). Ratios are per round (paired); cells are median (min–max).",
        "",
        "trainforge = `Trainer.fit` with its default callbacks: checkpoint of the best epoch, MLflow logging to "
        "a SQLite store in a temp dir (buffered, written with one `log_batch` every 10 s inside the fit and "
        "once more in a background thread when the fit ends: see the per-epoch table), early stopping off (`patience=0`, so every contender runs all epochs), "
        "no progress bar. The raw loop gathers in-memory tensors by index and computes validation loss and "
        "accuracy every epoch. Same seed and data order: raw loop and trainforge end with the same "
        "validation accuracy.",
        "",
    )
    if not has_lightning:
        section.add(f"PyTorch Lightning skipped: {why}.", "")
    rows, part_rows = [], []
    previous_uri = mlflow.get_tracking_uri()
    with tempfile.TemporaryDirectory(prefix="trainforge-bench-") as tmp:
        store = Path(tmp)
        experiment_id = tracking.setup(f"sqlite:///{store / 'mlflow.db'}", "bench")
        for name in models:
            rounds = (mlp_repeats or repeats) if name == "mlp" else repeats
            log(f"[trainer] {name}: {rounds} rounds x {2 + has_lightning} contenders x ({epochs} + {short} epochs)")
            env = {**_setup(name, epochs, batch_size, seed), "experiment_id": experiment_id}
            quick = _short(env, short)
            fits = {"raw": raw_fit, "trainforge": lambda e: trainforge_fit(e, store)}
            if has_lightning:
                fits["lightning"] = lightning_fit
            for fn in fits.values():  # warm-up: imports, allocator, MLflow's first writes
                fn(quick)
            contenders = {}
            for key, fn in fits.items():
                contenders[key] = lambda fn=fn, env=env: fn(env)
                contenders[f"{key}@{short}"] = lambda fn=fn, quick=quick: fn(quick)
            res = interleave(contenders, rounds, warmup=0, measure=lambda value, _s: value)
            fit = {k: [r["fit"] for r in v] for k, v in res.items()}
            marginal = {k: [(a - b) / (epochs - short) for a, b in zip(fit[k], fit[f"{k}@{short}"], strict=True)]
                        for k in fits}
            total_ratio = paired_ratios(fit["trainforge"], fit["raw"])
            marginal_ratio = paired_ratios(marginal["trainforge"], marginal["raw"])
            row = [name.upper(), Stats.of(fit["raw"]).fmt(), Stats.of(fit["trainforge"]).fmt(),
                   f"**{total_ratio.fmt()}**", f"**{marginal_ratio.fmt()}**"]
            if has_lightning:
                row += [Stats.of(fit["lightning"]).fmt(), paired_ratios(fit["lightning"], fit["raw"]).fmt(),
                        paired_ratios(marginal["lightning"], marginal["raw"]).fmt()]
            rows.append(row)
            tf = res["trainforge"]
            part_rows.append([
                name.upper(),
                Stats.of(marginal["raw"]).fmt(scale=1e3), Stats.of(marginal["trainforge"]).fmt(scale=1e3),
                Stats.of([r["val_per_epoch"] for r in res["raw"]]).fmt(scale=1e3),
                Stats.of([r["val_per_epoch"] for r in tf]).fmt(scale=1e3),
                Stats.of([r.get("mlflow_per_epoch", 0.0) for r in tf]).fmt(scale=1e3),
                Stats.of([r.get("checkpoint_per_epoch", 0.0) for r in tf]).fmt(scale=1e3),
                Stats.of([r["mlflow_tail"] for r in tf]).fmt(scale=1e3),
                f"{Stats.of([r['val_accuracy'] for r in res['raw']]).median:.3f} / "
                f"{Stats.of([r['val_accuracy'] for r in tf]).median:.3f}",
            ])
            section.checks.append(Check(f"trainforge/raw per-epoch marginal cost, {name.upper()}",
                                        marginal_ratio.median, TARGETS[name],
                                        note=f"min {marginal_ratio.min:.3f}, max {marginal_ratio.max:.3f}"))
            section.checks.append(Check(f"trainforge/raw total {epochs}-epoch fit time, {name.upper()}",
                                        total_ratio.median, TARGETS[name],
                                        note=f"min {total_ratio.min:.3f}, max {total_ratio.max:.3f}"))
        mlflow.set_tracking_uri(previous_uri)  # off the temp store before it is deleted
    header = ["model", f"raw loop {epochs} ep, s", f"trainforge {epochs} ep, s", "trainforge / raw (total)",
              "trainforge / raw (per-epoch marginal)"]
    if has_lightning:
        header += [f"Lightning {epochs} ep, s", "Lightning / raw (total)", "Lightning / raw (marginal)"]
    section.table(header, rows)
    section.add(f"Per-epoch costs in ms (median (min–max) over rounds). Marginal epoch: (T{epochs} − T{short}) / "
                f"{epochs - short}. Validation is timed inside the {epochs}-epoch fit (trainforge: "
                "`Trainer.evaluate`, which also computes macro precision/recall/F1; raw: its validation block). "
                "MLflow logging and checkpoint are the time spent in those callbacks' events inside the fit "
                "(the checkpoint written at the end included), divided by the epochs. The final `log_batch` "
                "(the epochs since the last 10-s write) runs in a background thread that `trainforge.train` "
                "overlaps with test evaluation and artifact logging and joins before the run ends; the last "
                "column is how long it still ran after the fit returned here, in ms per fit (not per epoch).", "")
    section.table(["model", "raw marginal epoch", "trainforge marginal epoch", "validation (raw)",
                   "validation (trainforge)", "MLflow logging", "checkpoint", "final MLflow write after the fit (ms)",
                   "final val acc raw / trainforge"],
                  part_rows)
    return section


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    print(run(repeats=3).markdown())
