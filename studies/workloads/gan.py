"""`gan-digits`, `gan-cifar10`: a DCGAN-style generator and discriminator, both trained with the
campaign's optimizer and hyperparameters (the AdaBelief GAN protocol: one optimizer class, two
instances). Metric: FID of `fid_samples` images generated from fixed latent vectors against the
validation images, after every `report_every` steps (lower is better).

- Digits (8x8): FID on a small digits classifier's features, trained deterministically on the
  training split at first use (see `studies.workloads.images`): a digits-specific FID, not
  comparable to Inception FID.
- CIFAR-10 (32x32): Inception FID through torch-fidelity, the weights read from `fid_weights`
  (or `$HVADAM_FID_WEIGHTS`); real statistics from the first `fid_real` test images.

Losses: the non-saturating logistic GAN loss (BCE with logits); `spectral_norm` wraps the
discriminator's layers. A non-finite loss or FID raises `Diverged` (the trial is pruned).
"""

from __future__ import annotations

import math
import os
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from studies.workloads._base import (
    MakeOptimizer,
    OnEpoch,
    Option,
    OptionError,
    RunResult,
    Stopwatch,
    Workload,
    check_finite,
    current_lr,
    epoch_metrics,
    report,
    resolve_device,
    seed_everything,
)
from studies.workloads._schedule import lr_schedule
from studies.workloads._steps import autocast, report_steps, step_options, total_steps, use_bf16


def build_gan(dataset: str, width: int, latent: int, spectral: bool) -> tuple[nn.Module, nn.Module]:
    sn = nn.utils.spectral_norm if spectral else (lambda m: m)
    if dataset == "digits":  # 8x8x1: 2x2 -> 4x4 -> 8x8
        g = nn.Sequential(
            nn.Linear(latent, 2 * width * 4 * 4), nn.Unflatten(1, (2 * width, 4, 4)),
            nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 1, 3, 1, 1), nn.Tanh(),
        )  # fmt: skip
        d = nn.Sequential(
            sn(nn.Conv2d(1, width, 3, 1, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width, 2 * width, 4, 2, 1)), nn.LeakyReLU(0.2),
            nn.Flatten(), sn(nn.Linear(2 * width * 4 * 4, 1)),
        )  # fmt: skip
        return g, d
    # 32x32x3 DCGAN: 4x4 -> 8 -> 16 -> 32
    g = nn.Sequential(
        nn.ConvTranspose2d(latent, 4 * width, 4, 1, 0), nn.BatchNorm2d(4 * width), nn.ReLU(),
        nn.ConvTranspose2d(4 * width, 2 * width, 4, 2, 1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.ConvTranspose2d(width, 3, 4, 2, 1), nn.Tanh(),
    )  # fmt: skip
    d = nn.Sequential(
        sn(nn.Conv2d(3, width, 4, 2, 1)), nn.LeakyReLU(0.2),
        sn(nn.Conv2d(width, 2 * width, 4, 2, 1)), nn.LeakyReLU(0.2),
        sn(nn.Conv2d(2 * width, 4 * width, 4, 2, 1)), nn.LeakyReLU(0.2),
        nn.Flatten(), sn(nn.Linear(4 * width * 4 * 4, 1)),
    )  # fmt: skip
    return g, d


def _init(module: nn.Module) -> None:
    # DCGAN's initialisation: N(0, 0.02) weights, BatchNorm scales N(1, 0.02).
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class GAN(Workload):
    """DCGAN on digits or CIFAR-10, both networks optimized with the campaign's optimizer."""

    metric = "fid"
    direction = "minimize"
    unit = "step"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "dataset": Option("digits", "str", "data set", choices=("digits", "cifar10")),
        "data_dir": Option(None, "str", "cifar10: directory holding cifar-10-batches-py/ (null: $HVADAM_DATA_DIR, else ./data)", nullable=True),
        "width": Option(None, "int", "channels of the widest-resolution layer (null: 32 digits, 64 cifar10)", low=2, nullable=True),
        "latent": Option(None, "int", "latent dimensions (null: 32 digits, 100 cifar10)", low=1, nullable=True),
        "spectral_norm": Option(False, "bool", "spectral normalisation of the discriminator"),
        "batch_size": Option(64, "int", "images per step", low=2),
        **step_options(steps=2000, report_every=200, warmup=0),
        "fid_samples": Option(None, "int", "generated images per FID (null: 360 digits, 10000 cifar10)", low=2, nullable=True),
        "fid_real": Option(None, "int", "real (validation) images for the FID (null: all 360 digits, 10000 cifar10)", low=2, nullable=True),
        "fid_weights": Option(None, "str", "cifar10: Inception weights file (null: $HVADAM_FID_WEIGHTS)", nullable=True),
    }  # fmt: skip

    def _configure(self) -> None:
        o = self.options
        digits = o["dataset"] == "digits"
        defaults = {"width": (32, 64), "latent": (32, 100), "fid_samples": (360, 10000),
                    "fid_real": (360, 10000)}  # fmt: skip
        for key, (small, large) in defaults.items():
            if o[key] is None:
                o[key] = small if digits else large
        self.max_epochs = report_steps(o)

    def _data(self) -> tuple[torch.Tensor, torch.Tensor]:
        from studies.workloads.images import cifar_images, digits_images, to_unit

        o = self.options
        if o["dataset"] == "digits":
            d = digits_images()
            return d["train"], d["val"][: o["fid_real"]]
        c = cifar_images(o["data_dir"] or os.environ.get("HVADAM_DATA_DIR", "data"))
        return to_unit(c["train"]), to_unit(c["test"][: o["fid_real"]])

    def prepare(self) -> None:
        from studies.workloads.images import DigitsFeatures, resolve_fid_weights

        self._data()
        if self.options["dataset"] == "digits":
            DigitsFeatures()
        else:
            resolve_fid_weights(self.options["fid_weights"])

    def run(
        self,
        make_optimizer: MakeOptimizer,
        *,
        seed: int,
        device: str = "cpu",
        on_epoch: OnEpoch | None = None,
    ) -> RunResult:
        from studies.workloads.images import feature_extractor, frechet_distance

        seed_everything(seed)
        dev = resolve_device(device)
        o = self.options
        train, real = self._data()
        kind = "digits" if o["dataset"] == "digits" else "inception"
        features = feature_extractor(
            kind, weights=o["fid_weights"], device=dev
        )  # checks the file first
        real_features = _real_features(features, real, kind, o)
        train = train.to(dev)
        bf16 = use_bf16(o, dev)
        memory = torch.channels_last if dev.type == "cuda" else torch.contiguous_format

        gen, disc = build_gan(o["dataset"], o["width"], o["latent"], o["spectral_norm"])
        _init(gen)
        _init(disc)
        gen = gen.to(dev, memory_format=memory)  # type: ignore[call-overload]
        disc = disc.to(dev, memory_format=memory)  # type: ignore[call-overload]
        opt_g, opt_d = make_optimizer(gen.parameters()), make_optimizer(disc.parameters())
        # A searched schedule drives both optimizers (without one the learning rate is constant).
        sched_g = lr_schedule(make_optimizer, opt_g, o["steps"])
        sched_d = lr_schedule(make_optimizer, opt_d, o["steps"])
        z_shape = (o["latent"],) if o["dataset"] == "digits" else (o["latent"], 1, 1)
        fixed_z = torch.randn(
            (o["fid_samples"], *z_shape), generator=torch.Generator().manual_seed(1234)
        ).to(dev)
        draws = torch.Generator(device=dev).manual_seed(int(seed))

        @torch.no_grad()
        def fid() -> float:
            gen.eval()
            fake = torch.cat([gen(z).float().cpu() for z in fixed_z.split(500)])
            gen.train()
            if not torch.isfinite(fake).all():
                return float("nan")
            return frechet_distance(features(fake), real_features)

        steps, every, bs = total_steps(o), o["report_every"], o["batch_size"]
        value, best = float("nan"), math.inf
        loss_d_mean = loss_g_mean = float("nan")
        epoch, step = 0, 0
        while step < steps:
            epoch += 1
            chunk = min(every, steps - step)
            sums = torch.zeros(2, device=dev)
            lr_used = current_lr(opt_g)
            watch = Stopwatch(dev)
            with watch:
                for _ in range(chunk):
                    x = train[torch.randint(0, len(train), (bs,), device=dev, generator=draws)]
                    z = torch.randn((bs, *z_shape), device=dev, generator=draws)
                    with autocast(dev, bf16):
                        fake = gen(z)
                        logits_real = disc(x).float()
                        logits_fake = disc(fake.detach()).float()
                    loss_d = F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean()
                    opt_d.zero_grad(set_to_none=True)
                    loss_d.backward()
                    opt_d.step()
                    sched_d.step()
                    with autocast(dev, bf16):
                        loss_g = F.softplus(-disc(fake).float()).mean()
                    opt_g.zero_grad(set_to_none=True)
                    loss_g.backward()
                    opt_g.step()
                    sched_g.step()
                    sums += torch.stack([loss_d.detach(), loss_g.detach()])
            step += chunk
            loss_d_mean, loss_g_mean = (float(v) / chunk for v in sums)
            check_finite(loss_d_mean, epoch=epoch, what="discriminator loss")
            check_finite(loss_g_mean, epoch=epoch, what="generator loss")
            value = fid()
            check_finite(value, epoch=epoch, what="FID")
            best = min(best, value)
            metrics = epoch_metrics(opt_g, train_loss=loss_g_mean, step_time=watch.total / chunk,
                                    fid=value, d_loss=loss_d_mean, g_loss=loss_g_mean)  # fmt: skip
            metrics["lr"] = lr_used
            metrics["step"] = float(step)
            report(on_epoch, epoch, value, metrics)

        return RunResult(
            value=value,
            metrics={"fid": value, "best_fid": best, "d_loss": loss_d_mean, "g_loss": loss_g_mean},
            extras={
                "fid_features": "digits classifier" if kind == "digits" else "inception-v3",
                "fid_samples": o["fid_samples"],
                "fid_real": len(real),
                "generator_parameters": sum(p.numel() for p in gen.parameters()),
                "discriminator_parameters": sum(p.numel() for p in disc.parameters()),
                "amp": "bf16" if bf16 else "off",
            },
        )


_REAL_CACHE: dict[tuple[Any, ...], torch.Tensor] = {}


def _real_features(features: Any, real: torch.Tensor, kind: str, o: dict[str, Any]) -> torch.Tensor:
    """The validation images' features (computed once per process for a data set and weights)."""
    key = (kind, o["dataset"], o["data_dir"], o["fid_weights"], len(real), float(real.sum()))
    if key not in _REAL_CACHE:
        _REAL_CACHE[key] = features(real)
    if len(real) < 2:
        raise OptionError("the FID needs at least 2 real images")
    return _REAL_CACHE[key]
