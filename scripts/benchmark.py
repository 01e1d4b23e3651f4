"""Benchmarks: training-loop overhead, preparation, rendering and image loading.

1. Loop overhead: training samples/s of the framework (cnn1d, 20,000 real MIT-BIH beats,
   batch 128, one epoch, the default callbacks with the progress bar, MLflow logging to a
   temporary SQLite store) against two plain PyTorch loops on the same tensors (a
   DataLoader over a TensorDataset, and batches sliced from the tensors), alternating
   repeats; the median ratio (target >= 0.97). The training batches are timed; the end of
   the epoch (validation, checkpoints, logging) is reported apart.
2. Preparation of all 48 records (kachuee recipe, fresh folder) and spectrogram rendering
   to PNG files (images/s at 64x64 and 227x227); spectrograms into training batches drawn
   on the fly against PNG folders rendered first (time to the first batch, images/s, disk).
3. Image loading: images/s the image DataModule's training loader delivers with its
   configured workers, against the images/s cnn2d (64x64) trains on.
4. Command-line answers that need only the config (target <= 1.5 s, median of 5):
   `train --cfg job`, `train --help`, a mistyped option (`model=alexnett`) and a model/data
   mismatch (`model=alexnet`, refused by our own check).

5. With --transfer, the transfer-learning table instead (scripts/bench_transfer.py: float32,
   bf16, channels-last, frozen layers with and without the feature cache, on-the-fly loader
   rates; the remaining arguments go to it, e.g. `--transfer --epochs 4 --per-class 1000`).

Prints a table with the core count and writes outputs/bench/benchmark.csv.
Usage: python scripts/benchmark.py [--quick | --cli-only | --render-only | --transfer ...]
[--mitdb DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from rich.console import Console
from rich.table import Table

from ecg_experiments.config import PROJECT_ROOT

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_render import default_mitdb, real_beats, time_rendering  # noqa: E402

BENCH = PROJECT_ROOT / "outputs" / "bench"


class _EpochTimer(pl.Callback):
    """Wall time of the training batches of each epoch, and of what follows them (validation,
    checkpointing, logging) until the epoch ends."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.epoch_end: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args) -> None:
        self._last_batch = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.seconds.append(self._last_batch - self._start)
        self.epoch_end.append(time.perf_counter() - self._last_batch)


def framework_rate(x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[float, float]:
    """Training samples/s of one epoch's batches through the framework's own Trainer config,
    and the seconds the end of the epoch takes (validation, checkpoint, MLflow logging)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from ecg_experiments.config import CONFIG_DIR
    from ecg_experiments.data.beats import BeatsDataModuleBase
    from ecg_experiments.models.classifier import ClassifierModule
    from ecg_experiments.models.cnn1d import KachueeCNN1d

    class Arrays(BeatsDataModuleBase):
        def load_splits(self):  # the same tensors as the plain loop; a small val split
            arrays = {"train": (x.numpy(), y.numpy()), "val": (x[:512].numpy(), y[:512].numpy())}
            return arrays, None

    with tempfile.TemporaryDirectory(dir=BENCH) as tmp:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=[
                # the optimizer of the plain loops below, so the overhead compares like for like
                "data=beats_csv", "data.train_file=unused", "optimizer=adam", "scheduler=none",
                f"paths.outputs_dir={tmp}",
                f"paths.run_dir={tmp}/run",
                f"logger.tracking_uri=sqlite:///{tmp}/mlflow.db", "trainer.max_epochs=1",
                "trainer.accelerator=cpu", f"callbacks.model_checkpoint.dirpath={tmp}/ckpt",
            ])
        torch.manual_seed(seed)
        module = ClassifierModule(KachueeCNN1d(5), list("NSVFQ"),
                                  optimizer=instantiate(cfg.optimizer))
        timer = _EpochTimer()
        callbacks = [instantiate(c) for c in cfg.callbacks.values() if c]
        trainer = instantiate(cfg.trainer, callbacks=[*callbacks, timer],
                              logger=instantiate(cfg.logger), num_sanity_val_steps=0)
        trainer.fit(module, datamodule=Arrays(batch_size=128, seed=seed))
        return len(x) / timer.seconds[0], timer.epoch_end[0]


def plain_rate(x: torch.Tensor, y: torch.Tensor, seed: int, loader: str = "dataloader") -> float:
    """Training samples/s of the same model and data in a hand-written PyTorch loop, fed by
    a DataLoader over a TensorDataset (`loader="dataloader"`, the usual plain loop) or by
    indexing the tensors with a shuffled permutation, one slice per batch ("index")."""
    from torch.utils.data import DataLoader, TensorDataset

    from ecg_experiments.models.cnn1d import KachueeCNN1d

    torch.manual_seed(seed)
    net = KachueeCNN1d(5)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    start = time.perf_counter()
    if loader == "dataloader":
        batches = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True)
    else:
        order = torch.randperm(len(x))
        batches = ((x[order[i:i + 128]], y[order[i:i + 128]]) for i in range(0, len(x), 128))
    _train_steps(net, optimizer, batches)
    return len(x) / (time.perf_counter() - start)


def _train_steps(net: torch.nn.Module, optimizer: torch.optim.Optimizer, batches) -> None:
    """Plain PyTorch: forward, cross-entropy, backward, step for every batch."""
    for xb, yb in batches:
        loss = torch.nn.functional.cross_entropy(net(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def loop_overhead(mitdb: str, beats: int, repeats: int) -> list[dict]:
    """Framework against both plain loops after an untimed warm-up of each, alternating
    (framework first, then last) so that this machine's drifts (several % over tens of
    seconds) hit all three alike; median of the per-repeat ratios, with their range."""
    signals, _ = real_beats(mitdb, beats, seed=1)
    x = torch.from_numpy(signals.astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(np.random.default_rng(0).integers(0, 5, len(x)))
    framework, epoch_end = [], []
    plain: dict[str, list[float]] = {"dataloader": [], "index": []}
    warm = slice(0, len(x) // 10)  # untimed: first-call costs (kernels, allocator, imports)
    framework_rate(x[warm], y[warm], 0)
    plain_rate(x[warm], y[warm], 0)
    for r in range(repeats):
        order = ["framework", *plain] if r % 2 == 0 else [*plain, "framework"]
        for loop in order:
            if loop == "framework":
                rate, seconds = framework_rate(x, y, r)
                framework.append(rate)
                epoch_end.append(seconds)
            else:
                plain[loop].append(plain_rate(x, y, r, loop))
    rows = [{"benchmark": f"loop: framework, cnn1d, {beats:,} beats, batch 128",
             "value": statistics.median(framework), "unit": "samples/s"}]
    for loader, label in (("dataloader", "DataLoader(TensorDataset)"),
                          ("index", "batches sliced from the tensors")):
        ratios = [f / p for f, p in zip(framework, plain[loader], strict=True)]
        rows += [
            {"benchmark": f"loop: plain PyTorch, {label}",
             "value": statistics.median(plain[loader]), "unit": "samples/s"},
            {"benchmark": f"loop: framework / plain {loader} (median of {repeats}; "
                          f"range {min(ratios):.2f}-{max(ratios):.2f})",
             "value": statistics.median(ratios), "unit": "ratio"},
        ]
    rows.append({"benchmark": "loop: end of epoch (validation of 512, checkpoints, MLflow)",
                 "value": statistics.median(epoch_end), "unit": "s"})
    return rows


def preparation(mitdb: str) -> list[dict]:
    from ecg_experiments.data.beat_table import prepare_mitbih
    from ecg_experiments.data.segment import KachueeRecipe

    with tempfile.TemporaryDirectory(dir=BENCH) as tmp:
        start = time.perf_counter()
        prepare_mitbih(mitdb, tmp, KachueeRecipe(), missing_lead="first", download=False,
                       progress=False)
        seconds = time.perf_counter() - start
    return [{"benchmark": "prepare 48 records (kachuee)", "value": seconds, "unit": "s"}]


def rendering(mitdb: str, count: int, repeats: int) -> list[dict]:
    beats, rate = real_beats(mitdb, count)
    rows = []
    for size in (64, 227):
        result = time_rendering("spectrogram", beats, rate, size, repeats)
        rows.append({"benchmark": f"render spectrogram PNGs {size}x{size}",
                     "value": result["files_per_s"], "unit": "images/s"})
    return rows


def image_loading(mitdb: str, per_class: int, workers: int) -> list[dict]:
    """Loader images/s (cnn2d's 64x64 beat images) against cnn2d's training images/s."""
    from ecg_experiments.data.image_files import ImageAugment
    from ecg_experiments.data.images import ImageDataModule
    from ecg_experiments.data.mitbih import MitbihDataModule
    from ecg_experiments.data.render import RenderedBeats, WaveformRenderer
    from ecg_experiments.data.segment import KachueeRecipe
    from ecg_experiments.models.backbones import build_backbone

    beats = MitbihDataModule(mitdb, str(PROJECT_ROOT / "outputs" / "data"), KachueeRecipe(),
                             missing_lead="first", download=False)
    source = RenderedBeats(beats=beats, renderer=WaveformRenderer(),
                           out_dir=str(PROJECT_ROOT / "outputs" / "data" / "images"),
                           image_size=64, max_per_class=per_class, seed=0)
    dm = ImageDataModule(source=source, class_names=list("NSVFQ"), image_size=64,
                         mean=[0.5] * 3, std=[0.5] * 3, augment=ImageAugment(),
                         batch_size=64, num_workers=workers, split="stratified")
    dm.setup("fit")
    loader = dm.train_dataloader()
    next(iter(loader))  # workers started
    start, seen = time.perf_counter(), 0
    batches = []
    for xb, yb in loader:
        seen += len(xb)
        batches.append((xb, yb))
    loading = seen / (time.perf_counter() - start)
    net = build_backbone("cnn2d", 5, input_size=64)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    start = time.perf_counter()
    _train_steps(net, optimizer, batches)
    training = seen / (time.perf_counter() - start)
    return [
        {"benchmark": f"image loader, 64x64 PNG + rotation, {workers} workers",
         "value": loading, "unit": "images/s"},
        {"benchmark": "cnn2d training on those batches", "value": training, "unit": "images/s"},
    ]


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def rendered_paths(mitdb: str, per_class: int, workers: int) -> list[dict]:
    """Spectrogram images into training batches, drawn on the fly against PNG folders (a
    fresh folder each time: the render step included), at 64x64 and 227x227 (AlexNet's):
    time to the first batch, images/s over one epoch of the training loader, disk used."""
    from ecg_experiments.data.images import ImageDataModule
    from ecg_experiments.data.mitbih import MitbihDataModule
    from ecg_experiments.data.render import RenderedBeats, SpectrogramRenderer
    from ecg_experiments.data.segment import KachueeRecipe

    beats = MitbihDataModule(mitdb, str(PROJECT_ROOT / "outputs" / "data"), KachueeRecipe(),
                             missing_lead="first", download=False)
    beats.prepare_data()  # the prepared-beats cache is not what is measured
    rows = []
    for size in (64, 227):
        for on_the_fly in (True, False):
            with tempfile.TemporaryDirectory(dir=BENCH) as tmp:
                source = RenderedBeats(beats=beats, renderer=SpectrogramRenderer(), out_dir=tmp,
                                       image_size=size, max_per_class=per_class, seed=0,
                                       on_the_fly=on_the_fly)
                dm = ImageDataModule(source=source, class_names=list("NSVFQ"), image_size=size,
                                     batch_size=64, num_workers=workers, split="stratified")
                start = time.perf_counter()
                dm.setup("fit")
                loader = dm.train_dataloader()
                batches = iter(loader)
                seen = len(next(batches)[0])
                first = time.perf_counter() - start
                for xb, _ in batches:
                    seen += len(xb)
                rate = seen / (time.perf_counter() - start - first)
                disk = _folder_bytes(Path(tmp))
            label = f"spectrogram {size}x{size}, {'on the fly' if on_the_fly else 'PNG files'}"
            rows += [
                {"benchmark": f"{label}: time to first batch (epoch of {seen:,})",
                 "value": first, "unit": "s"},
                {"benchmark": f"{label}: into training batches, {workers} workers",
                 "value": rate, "unit": "images/s"},
                {"benchmark": f"{label}: disk", "value": disk / 2**20, "unit": "MiB"},
            ]
    return rows


CONFIG_ONLY_COMMANDS = {
    "train --cfg job": ["--cfg", "job"],
    "train --help": ["--help"],
    "train model=alexnett (unknown option)": ["model=alexnett"],
    "train model=alexnet (image model, beat data)": ["model=alexnet"],
}


def config_only_cli(repeats: int = 5) -> list[dict]:
    """Median wall time of `python -m ecg_experiments.train <args>` that answer from the
    config alone (a fresh interpreter each time, as a user types it)."""
    import subprocess

    rows = []
    for label, args in CONFIG_ONLY_COMMANDS.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "ecg_experiments.train", *args],
                           cwd=PROJECT_ROOT, capture_output=True, check=False)
            times.append(time.perf_counter() - start)
        rows.append({"benchmark": f"CLI: {label}, median of {repeats}",
                     "value": statistics.median(times), "unit": "s"})
    return rows


def main() -> None:
    if "--transfer" in sys.argv[1:]:
        import bench_transfer  # scripts/ is on sys.path when this file runs as a script

        sys.argv.remove("--transfer")
        bench_transfer.main()
        return
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mitdb", default=default_mitdb(), help="raw MIT-BIH folder")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and beats (<= 2 min)")
    parser.add_argument("--workers", type=int, default=2, help="image loader workers")
    parser.add_argument("--cli-only", action="store_true",
                        help="only the command-line rows (about 30 s)")
    parser.add_argument("--render-only", action="store_true",
                        help="only the on-the-fly against PNG rendering rows")
    args = parser.parse_args()
    from ecg_experiments.cli import quiet_third_party

    quiet_third_party()  # the table without the known harmless warnings, as the commands
    BENCH.mkdir(parents=True, exist_ok=True)
    repeats = 3 if args.quick else 9
    started = time.perf_counter()
    rows = [] if args.render_only else config_only_cli()
    if not (args.cli_only or args.render_only):
        rows += loop_overhead(args.mitdb, 5_000 if args.quick else 20_000, repeats)
        rows += preparation(args.mitdb)
        rows += rendering(args.mitdb, 1_000 if args.quick else 4_000, 1 if args.quick else 3)
        rows += image_loading(args.mitdb, 200 if args.quick else 1_000, args.workers)
    if not args.cli_only or args.render_only:
        rows += rendered_paths(args.mitdb, 200 if args.quick else 1_000, args.workers)
    mode = ("cli only" if args.cli_only else "render only" if args.render_only
            else "quick" if args.quick else "full")
    view = Table(title=f"ecg-experiments benchmarks, {os.cpu_count()} cores, torch "
                       f"{torch.__version__}, {mode} "
                       f"({time.perf_counter() - started:.0f} s)")
    for column in ("benchmark", "value", "unit"):
        view.add_column(column, justify="right" if column == "value" else "left")
    for row in rows:
        value = row["value"]
        view.add_row(row["benchmark"], f"{value:.3f}" if row["unit"] in ("ratio", "s")
                     else f"{value:,.0f}", row["unit"])
    Console().print(view)
    out = BENCH / "benchmark.csv"
    pd.DataFrame(rows).assign(cores=os.cpu_count()).to_csv(out, index=False)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
