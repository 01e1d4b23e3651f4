"""Image files: finding, decoding and checking them, their transforms (torchvision v2) and
training augmentation, and a Dataset of (image, label) pairs."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ecg_experiments.errors import DataError
from ecg_experiments.io import readable_file

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
# what PIL raises for a file that is not a readable image (truncated, wrong format, ...)
UNREADABLE = (OSError, UnidentifiedImageError, SyntaxError, ValueError)


@dataclass
class ImageAugment:
    """Train-time augmentation (torchvision transforms v2); 0 or None turns a step off.

    rotation: random rotation up to ± degrees (the seed studies' augmentation);
    resized_crop_scale: [min, max] area of a random resized crop;
    translate / scale: a small random affine (fraction of the size / [min, max] zoom);
    brightness / contrast: colour jitter strengths.
    """

    rotation: float = 10.0
    resized_crop_scale: Sequence[float] | None = None
    translate: float = 0.0
    scale: Sequence[float] | None = None
    brightness: float = 0.0
    contrast: float = 0.0

    def transforms(self, size: int) -> list[v2.Transform]:
        steps: list[v2.Transform] = []
        if self.resized_crop_scale:
            steps.append(v2.RandomResizedCrop(size, scale=tuple(self.resized_crop_scale),
                                              antialias=True))
        if self.rotation:
            steps.append(v2.RandomRotation(self.rotation,
                                            interpolation=v2.InterpolationMode.BILINEAR))
        if self.translate or self.scale:
            steps.append(v2.RandomAffine(0, translate=(self.translate,) * 2 if self.translate
                                         else None, scale=tuple(self.scale) if self.scale
                                         else None))
        if self.brightness or self.contrast:
            steps.append(v2.ColorJitter(brightness=self.brightness, contrast=self.contrast))
        return steps


def image_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    augment: ImageAugment | None = None,
) -> v2.Compose:
    """PIL image → normalised float tensor [C, size, size]; with `augment` for training."""
    steps: list[v2.Transform] = [v2.ToImage(), v2.Resize((image_size, image_size),
                                                          antialias=True)]
    if augment is not None:
        steps += augment.transforms(image_size)
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def load_image(path: Path, channels: int) -> Image.Image:
    """Decode an image file to RGB (channels=3) or grey (channels=1); DataError if corrupt."""
    what = f"a {', '.join(IMAGE_EXTENSIONS)} file"
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I", "F"):  # 16-bit or float grey: scale to 8 bits
                values = np.asarray(image, dtype=np.float64)
                span = max(float(values.max() - values.min()), 1e-12)
                image = Image.fromarray(((values - values.min()) / span * 255).astype(np.uint8))
            return image.convert("RGB" if channels == 3 else "L")
    except UNREADABLE as err:
        if isinstance(err, OSError) and err.errno is not None:  # missing, a folder, no access
            readable_file(path, what)
        raise DataError(f"{path}: not a readable image ({err}); expected {what}") from err


class ImageFiles(Dataset):
    """(image tensor, label) pairs from a list of files."""

    def __init__(self, paths: Sequence[Path], labels: np.ndarray, transform: v2.Compose,
                 channels: int = 3) -> None:
        self.paths = list(paths)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.transform = transform
        self.channels = channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = load_image(self.paths[index], self.channels)
        return self.transform(image), self.labels[index]


def check_image_file(path: Path) -> tuple[str, str | None]:
    """(SHA-256 of the bytes, None) or (hash, error) when the image does not decode."""
    try:
        data = path.read_bytes()
    except OSError as err:
        return "", f"cannot be read: {err.strerror or err}"
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as image:  # the bytes already read, decoded once
            image.load()
    except UNREADABLE as err:
        return digest, str(err) or type(err).__name__
    return digest, None


def image_files(folder: Path) -> list[Path]:
    """Every png/jpg/bmp file under `folder` (recursively), sorted."""
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
