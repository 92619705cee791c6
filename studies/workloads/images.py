"""Images for the generative workloads (ddpm-*, gan-*) and their Fréchet distances.

Data: digits (scikit-learn's bundled 8x8 digits, the `digits` workloads' fixed split) or CIFAR-10
(`data_dir` in CIFAR's on-disk format, as the `cifar` workloads read it), scaled to [-1, 1].

FID: `frechet_distance` between two feature sets, computed exactly through the singular values
of the cross-product of the centred features (tr sqrt(S1 S2) = nuclear norm of Xc Yc^T /
sqrt((n1-1)(n2-1))), which is cheap when there are fewer samples than feature dimensions; the
tests check it against torch-fidelity's `fid_statistics_to_metric`.

- Digits FID: features of a small digits classifier (`digits-mlp`'s network, its hidden layer)
  trained deterministically on the digits training split at first use and cached per process.
  A digits-specific number, not comparable to Inception FID.
- CIFAR FID: Inception-v3 pool features (2048) from torch-fidelity's `FeatureExtractorInceptionV3`
  with the weights read from a local file (`fid_weights` option, else `$HVADAM_FID_WEIGHTS`);
  nothing is downloaded. The file is torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`
  (the TF-FID port).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from studies.workloads._base import DataNotFoundError, OptionError

__all__ = [
    "FID_WEIGHTS_ENV",
    "DigitsFeatures",
    "InceptionFeatures",
    "cifar_images",
    "digits_images",
    "feature_extractor",
    "frechet_distance",
]

FID_WEIGHTS_ENV = "HVADAM_FID_WEIGHTS"


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to the rows of `a` and `b` (float64)."""
    a, b = a.double().cpu(), b.double().cpu()
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Fréchet distance needs at least 2 samples on each side")
    mu_a, mu_b = a.mean(0), b.mean(0)
    xa, xb = a - mu_a, b - mu_b
    na, nb = len(a) - 1, len(b) - 1
    trace_a = float((xa * xa).sum()) / na
    trace_b = float((xb * xb).sum()) / nb
    cross = float(torch.linalg.svdvals(xa @ xb.T).sum()) / float(np.sqrt(na * nb))
    return float(((mu_a - mu_b) ** 2).sum()) + trace_a + trace_b - 2 * cross


# ---- data ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def digits_images(split_seed: int = 0) -> dict[str, torch.Tensor]:
    """The digits split ({"train", "val", "test"}) as float32 N x 1 x 8 x 8 in [-1, 1]."""
    from studies.workloads.digits import load_digits, stratified_split

    x, y = load_digits()
    parts = stratified_split(y, (0.2, 0.2), split_seed)
    images = torch.from_numpy(x / 8.0 - 1.0).float().view(-1, 1, 8, 8)
    return {name: images[idx] for name, idx in zip(("train", "val", "test"), parts, strict=True)}


def cifar_images(data_dir: str) -> dict[str, torch.Tensor]:
    """CIFAR-10 as uint8 N x 3 x 32 x 32 ({"train", "test"}; `to_unit` scales to [-1, 1])."""
    from studies.workloads.cifar import load_cifar

    arrays = load_cifar(data_dir, "cifar10")
    return {"train": arrays.train_x, "test": arrays.test_x}


def to_unit(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# ---- feature extractors --------------------------------------------------------------------------


class DigitsFeatures:
    """The digits FID's features: a small classifier's hidden layer (128 values per image)."""

    def __init__(self, split_seed: int = 0) -> None:
        self.net, self.mean, self.std = _digits_classifier(split_seed)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Features of N x 1 x 8 x 8 images in [-1, 1] (pixels 0..16 as (x + 1) * 8)."""
        pixels = (images.detach().float().cpu().clamp(-1, 1) + 1) * 8.0
        x = (pixels.view(len(images), 64) - self.mean) / self.std
        return self.net[:-1](x)


@functools.lru_cache(maxsize=2)
def _digits_classifier(split_seed: int) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """Train `digits-mlp`'s network (64-128-10) on the training split: fixed seed, order and
    steps, one thread (the same weights on every CPU), well under a second; cached per process.
    Validation accuracy about 0.96."""
    from studies.workloads.digits import build_model, load_digits, stratified_split

    x, y = load_digits()
    train_idx = stratified_split(y, (0.2, 0.2), split_seed)[0]
    mean = torch.from_numpy(x[train_idx].mean(axis=0))
    std = torch.from_numpy(x[train_idx].std(axis=0))
    std[std == 0] = 1.0
    xs = (torch.from_numpy(x[train_idx]) - mean) / std
    ys = torch.from_numpy(y[train_idx])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(0)
            net = build_model("mlp", 128)
            opt = torch.optim.Adam(net.parameters(), lr=1e-3)
            order = torch.Generator().manual_seed(0)
            for _ in range(20):
                for idx in torch.randperm(len(ys), generator=order).split(32):
                    opt.zero_grad()
                    nn.functional.cross_entropy(net(xs[idx]), ys[idx]).backward()
                    opt.step()
    finally:
        torch.set_num_threads(threads)
    net.eval().requires_grad_(False)
    assert isinstance(net, nn.Sequential)  # digits' MLP: features are all but its last layer
    return net, mean, std


class InceptionFeatures:
    """Inception-v3 pool features (2048) through torch-fidelity, weights from a local file."""

    def __init__(self, weights: str | None, device: torch.device) -> None:
        self.net = _inception(resolve_fid_weights(weights)).to(device)
        self.device = device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 100) -> torch.Tensor:
        """Features of N x 3 x H x W images: uint8, or float in [-1, 1]."""
        if images.dtype != torch.uint8:
            images = to_uint8(images)
        out = [self.net(b.to(self.device))[0].float().cpu() for b in images.split(batch_size)]
        return torch.cat(out)


def resolve_fid_weights(weights: str | None) -> str:
    path = weights or os.environ.get(FID_WEIGHTS_ENV)
    if not path:
        raise DataNotFoundError(
            "Inception FID needs the Inception-v3 weights file (torch-fidelity's "
            "weights-inception-2015-12-05-6726825d.pth): set the workload option fid_weights "
            f"or {FID_WEIGHTS_ENV} to its path; nothing is downloaded"
        )
    if not Path(path).expanduser().is_file():
        raise DataNotFoundError(
            f"Inception FID weights file not found: {path} (from "
            f"{'the option fid_weights' if weights else FID_WEIGHTS_ENV})"
        )
    return str(Path(path).expanduser().resolve())


@functools.lru_cache(maxsize=2)
def _inception(path: str) -> nn.Module:
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as exc:
        raise OptionError(
            f"Inception FID needs torch-fidelity (the 'workloads' extra): {exc}"
        ) from None
    try:
        return FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=path
        )
    except Exception as exc:
        raise DataNotFoundError(
            f"Inception FID weights file {path} does not hold Inception-v3 weights: "
            f"{type(exc).__name__}: {str(exc)[:200]}"
        ) from None


def write_standin_inception_weights(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """A randomly initialised Inception-v3 of torch-fidelity's layout, saved where the real
    weights would be (for tests and smoke runs: its FIDs mean nothing)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args: object, **kwargs: object) -> None:
            return None

    path = Path(path)
    empty = path.with_suffix(".empty")
    torch.save({}, empty)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = Skeleton("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    empty.unlink()
    torch.save(net.state_dict(), path)
    return path


def feature_extractor(kind: str, *, weights: str | None, device: torch.device, split_seed: int = 0):
    """`digits` or `inception` features (a callable: images -> N x D float tensor)."""
    if kind == "digits":
        return DigitsFeatures(split_seed)
    return InceptionFeatures(weights, device)
