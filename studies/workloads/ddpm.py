"""`ddpm-digits`, `ddpm-cifar10`: a DDPM (epsilon prediction) with a small U-Net (the Anon paper's
diffusion task). The U-Net and the noise schedule are diffusers' `UNet2DModel` and
`DDPMScheduler` (the kept library; the `workloads` extra).

Data: digits (8x8, the `digits` workloads' fixed split: train on its training part, validate on
its validation part) or CIFAR-10 (`data_dir` in CIFAR's format: train on the training set,
validate on the first `val_images` test images), scaled to [-1, 1].

Training: uniform timesteps, Gaussian noise, MSE between the predicted and the true noise;
warm-up + cosine learning rate; gradient clipping. Metric `val_denoise_loss`: the same MSE on
the validation images at fixed timesteps (evenly spread over the schedule) with fixed noise, so
it is deterministic and cheap. With `fid_samples` > 0 the final model also samples that many
images (`sample_steps` DDPM steps) and the final metrics hold their `fid` (digits: the digits
classifier's features; CIFAR: Inception, weights from `fid_weights` / `$HVADAM_FID_WEIGHTS`).
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
from studies.workloads._steps import (
    autocast,
    report_steps,
    step_options,
    step_schedule,
    total_steps,
    use_bf16,
)


def build_unet(dataset: str, width: int, attention: bool) -> nn.Module:
    try:
        from diffusers import UNet2DModel
    except ImportError as exc:
        raise OptionError(
            f"the ddpm workloads need diffusers (the 'workloads' extra): {exc}"
        ) from None
    mults: tuple[int, ...]
    if dataset == "digits":
        channels, size, mults = 1, 8, (1, 2)
    else:
        channels, size, mults = 3, 32, (1, 2, 2, 2)
    down = ["DownBlock2D"] * len(mults)
    up = ["UpBlock2D"] * len(mults)
    if attention:  # self-attention at the second-lowest resolution, as in DDPM's CIFAR model
        down[1], up[-2] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(width * m for m in mults),
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        layers_per_block=2 if dataset == "cifar10" else 1,
        norm_num_groups=min(32, width),
    )


def load_images(
    dataset: str, data_dir: str | None, val_images: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) float images in [-1, 1]."""
    from studies.workloads.images import cifar_images, digits_images, to_unit

    if dataset == "digits":
        d = digits_images()
        return d["train"], d["val"][:val_images]
    c = cifar_images(data_dir or os.environ.get("HVADAM_DATA_DIR", "data"))
    return to_unit(c["train"]), to_unit(c["test"][:val_images])


class DDPM(Workload):
    """Denoising diffusion (epsilon prediction) with diffusers' U-Net and DDPM schedule."""

    metric = "val_denoise_loss"
    direction = "minimize"
    unit = "step"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "dataset": Option("digits", "str", "data set", choices=("digits", "cifar10")),
        "data_dir": Option(None, "str", "cifar10: directory holding cifar-10-batches-py/ (null: $HVADAM_DATA_DIR, else ./data)", nullable=True),
        "width": Option(None, "int", "channels of the first U-Net level (null: 32 digits, 128 cifar10)", low=4, nullable=True),
        "attention": Option(None, "bool", "self-attention blocks (null: off for digits, on for cifar10)", nullable=True),
        "timesteps": Option(1000, "int", "diffusion steps of the noise schedule", low=2),
        "batch_size": Option(64, "int", "images per step", low=1),
        **step_options(steps=2000, report_every=200, warmup=100),
        "clip": Option(1.0, "float", "gradient-norm clipping (0: none)", low=0.0),
        "val_images": Option(256, "int", "validation images for val_denoise_loss", low=1),
        "val_timesteps": Option(8, "int", "fixed timesteps per validation image (evenly spread)", low=1),
        "fid_samples": Option(0, "int", "images sampled by the final model for its FID (0: no FID)", low=0),
        "sample_steps": Option(50, "int", "denoising steps when sampling for FID", low=1),
        "fid_weights": Option(None, "str", "cifar10 FID: Inception weights file (null: $HVADAM_FID_WEIGHTS)", nullable=True),
    }  # fmt: skip

    def _configure(self) -> None:
        o = self.options
        digits = o["dataset"] == "digits"
        if o["width"] is None:
            o["width"] = 32 if digits else 128
        if o["attention"] is None:
            o["attention"] = not digits
        if o["fid_samples"] == 1:
            raise OptionError("option 'fid_samples' must be 0 (no FID) or at least 2")
        if o["sample_steps"] > o["timesteps"]:
            raise OptionError(
                f"option 'sample_steps' = {o['sample_steps']} exceeds 'timesteps' = {o['timesteps']}"
            )
        self.max_epochs = report_steps(o)

    def prepare(self) -> None:
        o = self.options
        load_images(o["dataset"], o["data_dir"], o["val_images"])

    def run(
        self,
        make_optimizer: MakeOptimizer,
        *,
        seed: int,
        device: str = "cpu",
        on_epoch: OnEpoch | None = None,
    ) -> RunResult:
        from diffusers import DDPMScheduler

        seed_everything(seed)
        dev = resolve_device(device)
        o = self.options
        train, val = load_images(o["dataset"], o["data_dir"], o["val_images"])
        cuda = dev.type == "cuda"
        memory = torch.channels_last if cuda else torch.contiguous_format
        bf16 = use_bf16(o, dev)
        train = train.to(dev)
        scheduler = DDPMScheduler(num_train_timesteps=o["timesteps"])

        # Fixed validation noise and timesteps: the same for every run.
        fixed = torch.Generator().manual_seed(1234)
        k = o["val_timesteps"]
        val_x = val.repeat_interleave(k, 0)
        val_t = (
            torch.arange(len(val_x)) % k * o["timesteps"] // k + o["timesteps"] // (2 * k)
        ).long()
        val_noise = torch.randn(val_x.shape, generator=fixed)
        val_noisy = scheduler.add_noise(val_x, val_noise, val_t)

        model = build_unet(o["dataset"], o["width"], o["attention"])
        model = model.to(dev, memory_format=memory)  # type: ignore[call-overload]
        optimizer = make_optimizer(model.parameters())
        schedule = step_schedule(make_optimizer, optimizer, o)  # searched, else warm-up + cosine
        draws = torch.Generator(device=dev).manual_seed(int(seed))

        def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with autocast(dev, bf16):
                return model(x.contiguous(memory_format=memory), t).sample.float()

        @torch.no_grad()
        def evaluate() -> float:
            model.eval()
            total = 0.0
            for x, t, eps in zip(
                val_noisy.split(256), val_t.split(256), val_noise.split(256), strict=True
            ):
                pred = predict(x.to(dev), t.to(dev))
                total += float(F.mse_loss(pred, eps.to(dev), reduction="sum"))
            model.train()
            return total / val_noise.numel()

        steps, every = total_steps(o), o["report_every"]
        value, best, train_loss = float("nan"), math.inf, float("nan")
        epoch, step = 0, 0
        while step < steps:
            epoch += 1
            chunk = min(every, steps - step)
            total = torch.zeros((), device=dev)
            lr_used = current_lr(optimizer)
            watch = Stopwatch(dev)
            with watch:
                for _ in range(chunk):
                    idx = torch.randint(
                        0, len(train), (o["batch_size"],), device=dev, generator=draws
                    )
                    x0 = train[idx]
                    noise = torch.randn(x0.shape, device=dev, generator=draws)
                    t = torch.randint(0, o["timesteps"], (len(x0),), device=dev, generator=draws)
                    loss = F.mse_loss(predict(scheduler.add_noise(x0, noise, t), t), noise)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if o["clip"] > 0:
                        nn.utils.clip_grad_norm_(model.parameters(), o["clip"])
                    optimizer.step()
                    schedule.step()
                    total += loss.detach()
            step += chunk
            train_loss = float(total) / chunk
            check_finite(train_loss, epoch=epoch, what="training loss")
            value = evaluate()
            check_finite(value, epoch=epoch, what="validation denoising loss")
            best = min(best, value)
            metrics = epoch_metrics(optimizer, train_loss=train_loss, step_time=watch.total / chunk,
                                    val_denoise_loss=value)  # fmt: skip
            metrics["lr"] = lr_used
            metrics["step"] = float(step)
            report(on_epoch, epoch, value, metrics)

        final = {"val_denoise_loss": value, "best_val_denoise_loss": best, "train_loss": train_loss}
        if o["fid_samples"]:
            final["fid"] = self._fid(model, scheduler, predict, val, dev, seed)
        return RunResult(
            value=value,
            metrics=final,
            extras={
                "parameters": sum(p.numel() for p in model.parameters()),
                "amp": "bf16" if bf16 else "off",
                "channels_last": cuda,
                "train_images": len(train),
                "val_images": len(val),
            },
        )

    @torch.no_grad()
    def _fid(self, model: nn.Module, scheduler: Any, predict: Any, real: torch.Tensor,
             dev: torch.device, seed: int) -> float:  # fmt: skip
        from diffusers import DDPMScheduler

        from studies.workloads.images import feature_extractor, frechet_distance

        o = self.options
        model.eval()
        sampler = DDPMScheduler.from_config(scheduler.config)
        sampler.set_timesteps(o["sample_steps"])
        g = torch.Generator(device=dev).manual_seed(int(seed) + 1)
        x = torch.randn((o["fid_samples"], *real.shape[1:]), device=dev, generator=g)
        for t in sampler.timesteps:
            eps = predict(x, t.to(dev).expand(len(x)))
            x = sampler.step(eps, t, x, generator=g).prev_sample
        kind = "digits" if o["dataset"] == "digits" else "inception"
        features = feature_extractor(kind, weights=o["fid_weights"], device=dev)
        fid = frechet_distance(features(x.clamp(-1, 1).cpu()), features(real))
        check_finite(fid, epoch=self.max_epochs, what="FID of the samples")
        return fid
