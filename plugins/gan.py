"""Built-in ``gan``: a model that owns its training step (generator + discriminator, two optimizers), and
the ``sample-grid`` callback that logs a grid of generated samples to MLflow after every epoch.

The GAN is the non-saturating GAN of Goodfellow et al. (2014) with MLP networks and one-sided label
smoothing (Salimans et al. 2016). The exported graph is the generator: a latent ``(N, latent_dim)``
float32 in, ``samples`` ``(N, *input_shape)`` in data units out (e.g. ``(N, 1, 8, 8)`` digits).
"""

from __future__ import annotations

import trainforge


def build_gan(input_shape, output_dim, latent_dim=16, hidden=128, label_smoothing=0.1, seed=0):
    """Generator ``z (N, latent_dim) -> (N, *input_shape)`` (standardized data space) and discriminator
    ``(N, *input_shape) -> logit (N, 1)``, both MLPs with LeakyReLU(0.2).

    Steps (see ``training_step``): the discriminator on real (target ``1 - label_smoothing``) and fake
    (target 0) samples, then the generator towards "real" (non-saturating loss). ``example_input(n)`` is a
    latent batch from a generator seeded with ``seed``, the same at every call.
    """
    import math

    import torch
    from torch import nn
    from torch.nn import functional as F  # noqa: N812

    shape, width, z_dim = tuple(int(d) for d in input_shape), int(hidden), int(latent_dim)
    size = math.prod(shape)
    if z_dim < 1 or width < 1 or not 0 <= float(label_smoothing) < 0.5:
        raise ValueError("latent_dim and hidden must be >= 1 and label_smoothing in [0, 0.5)")

    class GAN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.generator = nn.Sequential(
                nn.Linear(z_dim, width), nn.LeakyReLU(0.2), nn.Linear(width, 2 * width), nn.LeakyReLU(0.2),
                nn.Linear(2 * width, size))
            self.discriminator = nn.Sequential(
                nn.Flatten(), nn.Linear(size, 2 * width), nn.LeakyReLU(0.2), nn.Linear(2 * width, width),
                nn.LeakyReLU(0.2), nn.Linear(width, 1))

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.generator(z).reshape(z.shape[0], *shape)

        def example_input(self, n: int) -> torch.Tensor:
            return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(int(seed)))

        def configure_optimizers(self, build):
            return [build(self.generator.parameters()), build(self.discriminator.parameters())]

        def training_step(self, batch, optimizers):
            real, _ = batch
            opt_g, opt_d = optimizers
            z = torch.randn(real.shape[0], z_dim, device=real.device)
            fake = self(z)
            # 1. discriminator: real -> 1 - smoothing, fake -> 0 (the generator is not updated here)
            d_real, d_fake = self.discriminator(real), self.discriminator(fake.detach())
            d_loss = F.binary_cross_entropy_with_logits(d_real, torch.full_like(d_real, 1 - float(label_smoothing))) \
                + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            # 2. generator: make the updated discriminator call the fakes real (non-saturating loss)
            d_gen = self.discriminator(fake)
            g_loss = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            return {"loss": (g_loss + d_loss).detach(), "g_loss": g_loss.detach(), "d_loss": d_loss.detach(),
                    "d_real_acc": (d_real > 0).float().mean(), "d_fake_acc": (d_fake < 0).float().mean()}

        def validation_step(self, batch):
            """``loss``: moment distance between generated and real samples (standardized units): mean over
            features of the squared differences of the per-feature means and standard deviations."""
            real, _ = batch
            fake = self(self.example_input(real.shape[0]).to(real.device))
            real, fake = real.flatten(1), fake.flatten(1)
            dist = ((fake.mean(0) - real.mean(0)) ** 2 + (fake.std(0) - real.std(0)) ** 2).mean()
            return {"loss": dist, "d_real_acc": (self.discriminator(real) > 0).float().mean()}

    return GAN()


def build_sample_grid(ctx):
    """A :class:`SampleGrid` for generation runs that log to MLflow; ``None`` otherwise."""
    if not ctx.run_id or getattr(ctx.task, "name", "") != "generation":
        return None
    from trainforge import Callback

    class SampleGrid(Callback):
        """After every epoch: 20 samples from the fixed ``example_input`` as ``samples/epoch_NNN.png``."""

        def on_epoch_end(self, trainer, epoch, metrics):
            import mlflow
            import torch

            from trainforge import plots

            model = trainer.model
            if not getattr(model, "generative", False):
                return
            with torch.inference_mode():
                images = model(model.example_input(20).to(trainer.device)).float().cpu().numpy()
            folder = ctx.workdir / "samples"
            folder.mkdir(parents=True, exist_ok=True)
            path = plots.image_grid([("generated", images[:10]), ("", images[10:])], folder / f"epoch_{epoch:03d}.png",
                                    f"epoch {epoch}")
            mlflow.log_artifact(str(path), artifact_path="samples", run_id=ctx.run_id)

    return SampleGrid()


@trainforge.hookimpl
def register_models(register):
    register(trainforge.ModelSpec(
        name="gan",
        description="GAN (MLP generator + discriminator, own training step); exports the generator",
        build=build_gan,
        tasks={"generation"},
        defaults={"latent_dim": 16, "hidden": 128, "label_smoothing": 0.1, "seed": 0},
        param_help={"latent_dim": "size of the generator's input code", "hidden": "width of both MLPs",
                    "label_smoothing": "real targets are 1 - this (one-sided smoothing)",
                    "seed": "seed of the fixed latent batch used for export, plots and validation"},
    ))


@trainforge.hookimpl
def register_callbacks(register):
    register(trainforge.CallbackSpec(name="sample-grid", order=60, build=build_sample_grid,
                                     description="Log a grid of generated samples per epoch (generation runs)"))
