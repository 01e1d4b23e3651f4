"""Beats → images: spectrograms, scalograms and line drawings, written as class folders of
PNGs or rendered on the fly when a training batch is read (`RenderedBeatImages`).

Each renderer turns a batch of beats [n, length] into uint8 level images [n, size, size] with
array operations over the whole batch (scipy's STFT, PyWavelets' CWT, a broadcast line
raster); `level_image` makes the PIL image that is written to PNG or handed to the transforms
on the fly, so both paths give the same pixels.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from scipy import signal as sps
from torch.utils.data import Dataset

from ecg_experiments.errors import ConfigError, DataError
from ecg_experiments.io import atomic_path
from ecg_experiments.progress import StageProgress

log = logging.getLogger(__name__)

RENDER_VERSION = 1
CHUNK = 512  # beats per batch: bounds memory at 227x227x3


class Renderer(Protocol):
    """Turns beats [n, length] sampled at `rate` Hz into uint8 level images [n, size, size]
    shown through the colour map `cmap` (a PNG palette; "gray" for plain grey levels)."""

    name: str
    cmap: str

    def render(self, beats: np.ndarray, rate: float, size: int) -> np.ndarray: ...


def _quantise(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] → uint8 levels 0..255."""
    return (np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def palette(cmap: str) -> bytes | None:
    """The 256-colour PNG palette of a matplotlib colour map; None for plain grey levels."""
    if cmap in ("gray", "grey"):
        return None
    import matplotlib

    try:
        colours = matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256), bytes=True)[:, :3]
    except KeyError as err:
        raise ConfigError(f"render.cmap={cmap!r}: not a matplotlib colour map") from err
    return np.ascontiguousarray(colours, dtype=np.uint8).tobytes()


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a batch of 2-D maps [n, h, w] to [n, size, size]."""
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    out = torch.nn.functional.interpolate(tensor, size=(size, size), mode="bilinear",
                                          align_corners=False)
    return out.squeeze(1).numpy()


def _to_unit(maps: np.ndarray, floor_db: float | None) -> np.ndarray:
    """Scale each map to [0, 1]; with `floor_db`, log scale clipped that far below its peak."""
    if floor_db is not None:
        maps = 10.0 * np.log10(np.maximum(maps, 1e-12))
        peak = maps.max(axis=(1, 2), keepdims=True)
        maps = np.clip((maps - (peak - floor_db)) / floor_db, 0.0, 1.0)
        return maps
    low = maps.min(axis=(1, 2), keepdims=True)
    span = np.maximum(maps.max(axis=(1, 2), keepdims=True) - low, 1e-12)
    return (maps - low) / span


@dataclass
class SpectrogramRenderer:
    """STFT power (Hann window) on a log scale, low frequencies at the bottom, colour-mapped."""

    window_s: float = 0.256
    overlap: float = 0.9
    dynamic_range_db: float = 60.0
    cmap: str = "viridis"
    name: str = "spectrogram"

    def render(self, beats: np.ndarray, rate: float, size: int) -> np.ndarray:
        nperseg = max(4, min(int(round(self.window_s * rate)), beats.shape[-1]))
        noverlap = min(int(round(self.overlap * nperseg)), nperseg - 1)
        _, _, power = sps.spectrogram(beats, fs=rate, window="hann", nperseg=nperseg,
                                      noverlap=noverlap, axis=-1, mode="psd")
        maps = _to_unit(power[:, ::-1, :], self.dynamic_range_db)
        return _quantise(_resize(maps, size))


@dataclass
class ScalogramRenderer:
    """Continuous wavelet transform magnitude (PyWavelets), scales log-spaced over a band."""

    wavelet: str = "morl"
    min_hz: float = 1.0
    max_hz: float = 40.0
    n_scales: int = 48
    cmap: str = "viridis"
    name: str = "scalogram"

    def render(self, beats: np.ndarray, rate: float, size: int) -> np.ndarray:
        import pywt

        top = min(self.max_hz, rate / 2)
        if not 0 < self.min_hz < top:
            raise ConfigError(
                f"render.min_hz={self.min_hz}, max_hz={self.max_hz}: expected "
                f"0 < min_hz < max_hz <= {rate / 2:g} (Nyquist at {rate:g} Hz)"
            )
        freqs = np.geomspace(top, self.min_hz, self.n_scales)  # high frequencies on top
        scales = pywt.frequency2scale(self.wavelet, freqs / rate)
        coefs, _ = pywt.cwt(beats, scales, self.wavelet, axis=-1, method="fft")
        maps = np.abs(np.moveaxis(coefs, 0, 1))  # [n, scales, time]
        return _quantise(_resize(_to_unit(maps, None), size))


@dataclass
class WaveformRenderer:
    """The beat drawn as a dark line on white, like the public MIT-BIH beat-image sets;
    trailing zero padding is left out, so the beat spans the width."""

    line_width: int = 2
    margin: float = 0.05
    cmap: str = "gray"
    name: str = "waveform"

    def render(self, beats: np.ndarray, rate: float, size: int) -> np.ndarray:
        length = beats.shape[1]
        # each beat up to its last non-zero sample (the Kaggle recipe zero-pads the end),
        # resampled to one value per pixel column by linear interpolation
        nonzero = beats[:, ::-1] != 0
        last = np.where(nonzero.any(axis=1), length - 1 - np.argmax(nonzero, axis=1), length - 1)
        position = np.linspace(0.0, 1.0, size)[None, :] * np.maximum(last, 1)[:, None]
        left = np.minimum(position.astype(np.int64), length - 2)
        frac = position - left
        values = (np.take_along_axis(beats, left, axis=1) * (1 - frac)
                  + np.take_along_axis(beats, left + 1, axis=1) * frac)
        low = values.min(axis=1, keepdims=True)
        span = np.maximum(values.max(axis=1, keepdims=True) - low, 1e-12)
        pad = self.margin * (size - 1)
        rows = (1 - (values - low) / span) * (size - 1 - 2 * pad) + pad  # [n, size]
        # each column covers the rows between its value and the next one's, so steep
        # slopes stay connected; the half line width widens it
        following = np.concatenate([rows[:, 1:], rows[:, -1:]], axis=1)
        half = max(self.line_width, 1) / 2
        top = np.minimum(rows, following) - half
        bottom = np.maximum(rows, following) + half
        grid = np.arange(size, dtype=np.float64)[None, :, None]
        ink = (grid >= top[:, None, :] - 0.5) & (grid <= bottom[:, None, :] - 0.5)
        return np.where(ink, 0, 255).astype(np.uint8)


def level_image(levels: np.ndarray, colours: bytes | None) -> Image.Image:
    """A uint8 level image [size, size] as PIL: grey ("L"), or with `colours` a palette image
    ("P": one byte per pixel, shown in colour), as written to PNG."""
    if colours is None:
        return Image.fromarray(levels, mode="L")
    picture = Image.frombuffer("P", levels.shape[::-1], np.ascontiguousarray(levels).tobytes(),
                               "raw", "P", 0, 1)
    picture.putpalette(colours)
    return picture


def _write_png(path: Path, image: np.ndarray, colours: bytes | None) -> None:
    level_image(image, colours).save(path, format="PNG", compress_level=1)


def write_images(
    renderer: Renderer,
    beats: np.ndarray,
    rate: float,
    size: int,
    paths: Sequence[Path],
    workers: int = 4,
    progress: bool = True,
) -> None:
    """Render `beats` in batches and write one PNG per beat to `paths` (folders must exist),
    with a progress bar on a terminal or progress lines in a log.

    PNG encoding runs in a thread pool (zlib releases the GIL).
    """
    colours = palette(renderer.cmap)
    with (ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
          StageProgress(f"rendering {renderer.name} {size}x{size}", len(beats), "images",
                        terminal=None if progress else False) as counter):
        for start in range(0, len(beats), CHUNK):
            images = renderer.render(beats[start:start + CHUNK].astype(np.float64), rate, size)
            list(pool.map(_write_png, paths[start:start + CHUNK], images,
                          [colours] * len(images)))
            counter.advance(len(images))


@dataclass
class BeatRows:
    """The beats a RenderedBeats draws: signals [n, length] at `rate` Hz, labels, file names
    (`<database>-<record>_<R-peak sample>.png`)."""

    signals: np.ndarray
    labels: np.ndarray
    names: list[str]
    rate: float


def is_rendered_folder(folder: Path) -> bool:
    """Whether `folder` is one RenderedBeats wrote (its manifest names the beats it drew):
    its file names then say which beat of which record each image shows."""
    manifest = Path(folder) / "manifest.json"
    try:
        return "beats_manifest_sha256" in json.loads(manifest.read_text())
    except (OSError, ValueError, TypeError):
        return False


class RenderedBeatImages(Dataset):
    """(image tensor, label) pairs, each image rendered from its beat when read (in the
    DataLoader's workers): the renderer and `level_image` of the PNG path, so the transforms
    see the pixels a PNG of the same beat decodes to (`load_image`)."""

    def __init__(self, signals: np.ndarray, labels: np.ndarray, renderer: Renderer, rate: float,
                 size: int, transform: Any, channels: int = 3) -> None:
        self.signals = signals
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.renderer = renderer
        self.rate = float(rate)
        self.size = int(size)
        self.transform = transform
        self.channels = int(channels)
        self.colours = palette(renderer.cmap)

    def __len__(self) -> int:
        return len(self.signals)

    def image(self, index: int) -> Image.Image:
        """The beat's image as `load_image` returns the PNG's: RGB, or grey for 1 channel."""
        levels = self.renderer.render(self.signals[index:index + 1].astype(np.float64),
                                      self.rate, self.size)[0]
        return level_image(levels, self.colours).convert("RGB" if self.channels == 3 else "L")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.image(index)), self.labels[index]


@dataclass
class RenderedBeats:
    """Class folders of beat images rendered from the MIT-BIH beat table, made when missing.

    `beats` is the MIT-BIH data module whose preparation (recipe, records, lead) supplies
    the beats. At most `max_per_class` beats per class are drawn (seeded). Files are named
    `<database>-<record>_<R-peak sample>.png` so that record-grouped splits can read the
    record back.
    The folder `<out_dir>/<renderer>-<size>px-<key>` holds `<class>/*.png` and manifest.json;
    it is written under a temporary name and renamed, so it is complete or absent.
    """

    beats: object  # PhysionetDataModule (not imported here to keep this module light)
    renderer: Renderer
    out_dir: str
    image_size: int = 64
    max_per_class: int | None = None
    seed: int = 42
    workers: int = 4
    # render each image when a batch is read instead of writing PNG folders (no disk, no
    # pre-render step; the same pixels): the image DataModule asks `rows()` for the beats
    on_the_fly: bool = False

    def config(self) -> dict:
        return {
            "version": RENDER_VERSION,
            "renderer": {"type": type(self.renderer).__name__, **asdict(self.renderer)},
            "image_size": int(self.image_size),
            "max_per_class": self.max_per_class,
            "seed": int(self.seed),
        }

    def _check(self) -> None:
        palette(self.renderer.cmap)  # a bad colour map fails before any work
        if getattr(self.beats, "channels", None):  # chosen: one lead per image
            raise ConfigError(f"data.source.beats.channels={self.beats.channels}: the image "
                              "renderers draw one lead per beat; set it to null (data.leads "
                              "picks the lead), or train a 1D model on several leads")
        if int(self.image_size) < 8:
            raise ConfigError(f"data.image_size={self.image_size}: expected at least 8 pixels")
        if self.max_per_class is not None and int(self.max_per_class) < 1:
            raise ConfigError(f"data.max_per_class={self.max_per_class}: expected >= 1 or null")

    def rows(self) -> BeatRows:
        """The beats to draw (prepared when missing): signals, labels and file names."""
        self._check()
        self.beats.prepare_data()
        table = self.beats.beat_table()
        chosen = self._choose(table.beats.labels)
        # <database>-<record>_<sample>.png: the record id without its "/"
        names = [f"{str(r).replace('/', '-')}_{s:07d}.png" for r, s in
                 zip(table.records[chosen], table.beats.samples[chosen], strict=True)]
        return BeatRows(np.ascontiguousarray(table.beats.signals[chosen], dtype=np.float32),
                        table.beats.labels[chosen].astype(np.int64), names,
                        float(self.beats.recipe.rate))

    def ensure(self) -> Path:
        """Render the images unless an up-to-date folder exists; return the folder."""
        self._check()
        self.beats.prepare_data()
        prepared = [Path(p) for p in self.beats.prepared_paths.values()]  # one per database
        manifest = {
            **self.config(),
            "beats": prepared[0].name if len(prepared) == 1 else [p.name for p in prepared],
            "beats_manifest_sha256": hashlib.sha256(b"".join(
                (p / "manifest.json").read_bytes() for p in prepared)).hexdigest(),
        }
        key = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:10]
        target = Path(self.out_dir) / f"{self.renderer.name}-{self.image_size}px-{key}"
        if (target / "manifest.json").is_file():
            log.info("rendered images are up to date in %s: nothing to do", target)
            return target
        rows = self.rows()
        class_names = list(self.beats.class_names)
        with atomic_path(target) as tmp:
            for name in class_names:
                (tmp / name).mkdir(parents=True)
            paths = [tmp / class_names[label] / name
                     for label, name in zip(rows.labels, rows.names, strict=True)]
            write_images(self.renderer, rows.signals, rows.rate, int(self.image_size), paths,
                         self.workers)
            counts = np.bincount(rows.labels, minlength=len(class_names))
            manifest["images"] = dict(zip(class_names, map(int, counts), strict=True))
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        log.info("rendered %d %s images (%s) into %s", len(rows.labels), self.renderer.name,
                 ", ".join(f"{c} {n:,}" for c, n in manifest["images"].items()), target)
        return target

    def _choose(self, labels: np.ndarray) -> np.ndarray:
        """Row indices to render: every beat, or at most `max_per_class` per class (seeded)."""
        if self.max_per_class is None:
            return np.arange(len(labels))
        rng = np.random.default_rng(self.seed)
        picked = []
        for label in np.unique(labels):
            rows = np.flatnonzero(labels == label)
            take = min(len(rows), int(self.max_per_class))
            picked.append(np.sort(rng.choice(rows, size=take, replace=False)))
        if not picked:
            raise DataError(f"{self.beats.prepared_path}: the beat table is empty")
        return np.concatenate(picked)
