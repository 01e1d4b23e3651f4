"""Benchmark: transfer learning at the speed of the hardware (issue 29).

For alexnet (227x227 spectrograms), inception_v3 (299x299) and cnn1d (187-sample beats):
training samples/s of one optimizer step (forward, loss, backward, SGD) on random inputs in
float32, float32 channels-last, bf16 autocast and bf16 + channels-last (2D models), and with
the layers before the head frozen (freeze=backbone): uncached (the whole forward every
step) against the feature cache (the caching pass's samples/s, then the head's training
samples/s on cached outputs). The frozen rows use the framework's own freezing policy and cut
(models/frozen_split.py). Then the image loader's images/s drawing 227x227 spectrograms of
real MIT-BIH beats on the fly with 1, 2 and all workers: whether rendering keeps up with a
GPU. bf16 rows are skipped on a CPU without bfloat16 kernels.

Usage: python scripts/bench_transfer.py [--quick] [--mitdb DIR]; also run by
`python scripts/benchmark.py --transfer`. Prints a table, writes outputs/bench/transfer.csv
(transfer-epochs.csv for --epochs-only).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from ecg_experiments.config import PROJECT_ROOT
from ecg_experiments.models.backbones import build_backbone
from ecg_experiments.models.cnn1d import KachueeCNN1d
from ecg_experiments.models.freezing import FreezeBackbone
from ecg_experiments.models.frozen_split import frozen_split
from ecg_experiments.models.precision import cpu_has_bf16

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_render import default_mitdb  # noqa: E402

BENCH = PROJECT_ROOT / "outputs" / "bench"
# model: (input shape, batch, timed steps, quick steps)
MODELS = {"alexnet": ((3, 227, 227), 32, 6, 3), "inception_v3": ((3, 299, 299), 16, 3, 2),
          "cnn1d": ((1, 187), 128, 20, 8)}


def _net(name: str) -> torch.nn.Module:
    if name == "cnn1d":
        return KachueeCNN1d(5, dropout=0.0)
    return build_backbone(name, 5, input_size=MODELS[name][0][-1])


def _autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _loss(output) -> torch.Tensor:
    if hasattr(output, "aux_logits"):
        return output.logits.float().logsumexp(1).mean() + 0.4 * output.aux_logits.float(
        ).logsumexp(1).mean()
    return output.float().logsumexp(1).mean()


def _steps_per_s(step, steps: int) -> float:
    step()  # warm-up: first-call costs (kernels, allocator)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1.0 / statistics.median(times)


def training_rate(name: str, bf16: bool, channels_last: bool, frozen: bool,
                  steps: int) -> float:
    """Samples/s of optimizer steps on random inputs (the whole network forward)."""
    shape, batch = MODELS[name][:2]
    torch.manual_seed(0)
    net = _net(name)
    if frozen:
        FreezeBackbone().apply(net)
    net.train()
    if frozen:  # frozen batch norm in inference, as the framework's module runs it
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.train(any(p.requires_grad for p in module.parameters()))
    x = torch.randn(batch, *shape)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-4,
                                momentum=0.9)

    def step() -> None:
        with _autocast(bf16):
            loss = _loss(net(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return batch * _steps_per_s(step, steps)


def cached_rates(name: str, bf16: bool, steps: int) -> tuple[float, float]:
    """The caching pass (frozen prefix, inference mode) and the head's training on cached
    outputs, in samples/s."""
    shape, batch = MODELS[name][:2]
    torch.manual_seed(0)
    net = _net(name)
    FreezeBackbone().apply(net)
    x = torch.randn(batch, *shape)
    split = frozen_split(net, x[:2])
    assert not isinstance(split, str), split
    net.eval()

    def prefix() -> None:
        with torch.inference_mode(), _autocast(bf16):
            split.prefix(x)

    caching = batch * _steps_per_s(prefix, steps)
    with torch.inference_mode(), _autocast(bf16):
        cached = split.prefix(x)
    cached = tuple(c.float().clone() for c in cached) if isinstance(cached, tuple) \
        else cached.float().clone()
    net.train()
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.train(any(p.requires_grad for p in module.parameters()))
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-4,
                                momentum=0.9)

    def head_step() -> None:
        with _autocast(bf16):
            loss = _loss(split.suffix(cached))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return caching, batch * _steps_per_s(head_step, steps * 5)


def model_rows(quick: bool) -> list[dict]:
    rows = []
    precisions = [False, True] if cpu_has_bf16() else [False]
    for name, (shape, batch, steps, quick_steps) in MODELS.items():
        steps = quick_steps if quick else steps
        layouts = [False, True] if len(shape) == 3 else [False]
        unit = "beats/s" if name == "cnn1d" else "images/s"
        for bf16 in precisions:
            for channels_last in layouts:
                label = (f"{name} batch {batch}: train all layers, "
                         f"{'bf16' if bf16 else 'float32'}"
                         f"{' channels-last' if channels_last else ''}")
                rows.append({"benchmark": label, "unit": unit,
                             "value": training_rate(name, bf16, channels_last, False, steps)})
            kind = "bf16" if bf16 else "float32"
            rows.append({"benchmark": f"{name} batch {batch}: freeze=backbone, no cache, {kind}",
                         "value": training_rate(name, bf16, False, True, steps), "unit": unit})
            caching, head = cached_rates(name, bf16, steps)
            rows += [
                {"benchmark": f"{name} batch {batch}: feature cache pass, {kind}",
                 "value": caching, "unit": unit},
                {"benchmark": f"{name} batch {batch}: freeze=backbone on cached outputs, {kind}",
                 "value": head, "unit": unit},
            ]
    return rows


def loader_rows(mitdb: str, per_class: int) -> list[dict]:
    """Images/s of the training loader drawing 227x227 spectrograms on the fly."""
    from ecg_experiments.data.images import ImageDataModule
    from ecg_experiments.data.mitbih import MitbihDataModule
    from ecg_experiments.data.render import RenderedBeats, SpectrogramRenderer
    from ecg_experiments.data.segment import KachueeRecipe

    beats = MitbihDataModule(mitdb, str(PROJECT_ROOT / "outputs" / "data"), KachueeRecipe(),
                             missing_lead="first", download=False)
    beats.prepare_data()
    rows = []
    for workers in sorted({1, 2, os.cpu_count() or 1}):
        source = RenderedBeats(beats=beats, renderer=SpectrogramRenderer(),
                               out_dir=str(BENCH / "unused"), image_size=227,
                               max_per_class=per_class, seed=0, on_the_fly=True)
        dm = ImageDataModule(source=source, class_names=list("NSVFQ"), image_size=227,
                             batch_size=32, num_workers=workers, split="stratified")
        dm.setup("fit")
        batches = iter(dm.train_dataloader())
        next(batches)  # workers started
        start, seen = time.perf_counter(), 0
        for xb, _ in batches:
            seen += len(xb)
        rows.append({"benchmark": f"loader: 227x227 spectrograms drawn on the fly, "
                                  f"{workers} worker{'s' if workers > 1 else ''}",
                     "value": seen / (time.perf_counter() - start), "unit": "images/s"})
        dm.shutdown_workers()
    return rows


EPOCH_RE = re.compile(r"epoch (\d+)/\d+ .* ([0-9.]+) s/epoch")
CACHE_RE = re.compile(r"feature cache: (train|val) ([0-9,]+) samples in ([0-9.]+) s")


def epoch_rows(mitdb: str, per_class: int | None, epochs: int) -> list[dict]:
    """`experiment=alexnet_spectrogram freeze=backbone data.augment.rotation=0` (random
    weights: no ImageNet download here) trained with and without the feature cache, one
    after the other: seconds per epoch after the first (the progress lines), the caching
    pass, and the whole command's wall time."""
    rows = []
    for cache in ("false", "true"):
        with tempfile.TemporaryDirectory(dir=BENCH) as tmp:
            args = [sys.executable, "-m", "ecg_experiments.train",
                    "experiment=alexnet_spectrogram", "freeze=backbone",
                    "data.augment.rotation=0", "model.pretrained=null",
                    f"trainer.max_epochs={epochs}",
                    f"feature_cache.enabled={cache}", f"paths.mitdb_dir={mitdb}",
                    f"paths.outputs_dir={tmp}", f"paths.data_dir={tmp}/data",
                    "report.bootstrap_rounds=0", "logger=none"]
            if per_class:
                args.append(f"data.max_per_class={per_class}")
            start = time.perf_counter()
            done = subprocess.run(args, cwd=PROJECT_ROOT, capture_output=True, text=True,
                                  check=False)
            wall = time.perf_counter() - start
        text = done.stdout + done.stderr
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{text[-3000:]}")
        seconds = [float(m.group(2)) for m in EPOCH_RE.finditer(text)]
        label = (f"alexnet/spectrogram freeze=backbone, {per_class or 'all'} per class, "
                 f"{'cached' if cache == 'true' else 'uncached'}")
        rows += [{"benchmark": f"{label}: s per epoch (epochs 2-{len(seconds)}, median)",
                  "value": statistics.median(seconds[1:] or seconds), "unit": "s"},
                 {"benchmark": f"{label}: whole command", "value": wall, "unit": "s"}]
        for m in CACHE_RE.finditer(text):
            rows.append({"benchmark": f"{label}: caching pass, {m.group(2)} {m.group(1)} "
                                      "images", "value": float(m.group(3)), "unit": "s"})
    return rows


def transfer_rows(mitdb: str, quick: bool) -> list[dict]:
    torch.set_num_threads(os.cpu_count() or 1)
    return model_rows(quick) + loader_rows(mitdb, 60 if quick else 200)


def print_table(rows: list[dict], title: str) -> None:
    view = Table(title=title)
    for column in ("benchmark", "value", "unit"):
        view.add_column(column, justify="right" if column == "value" else "left")
    for row in rows:
        view.add_row(row["benchmark"], f"{row['value']:,.1f}", row["unit"])
    Console().print(view)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mitdb", default=default_mitdb(), help="raw MIT-BIH folder")
    parser.add_argument("--quick", action="store_true", help="fewer steps and images")
    parser.add_argument("--epochs", type=int, default=0,
                        help="also train frozen alexnet/spectrogram with and without the "
                             "cache for this many epochs")
    parser.add_argument("--per-class", type=int, default=None,
                        help="data.max_per_class of those trainings (default: all beats)")
    parser.add_argument("--epochs-only", action="store_true", help="only those trainings")
    args = parser.parse_args()
    BENCH.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = [] if args.epochs_only else transfer_rows(args.mitdb, args.quick)
    if args.epochs:
        rows += epoch_rows(args.mitdb, args.per_class, args.epochs)
    print_table(rows, f"transfer learning, {os.cpu_count()} cores, torch {torch.__version__}, "
                      f"bf16 kernels: {'yes' if cpu_has_bf16() else 'no'} "
                      f"({time.perf_counter() - started:.0f} s)")
    out = BENCH / ("transfer-epochs.csv" if args.epochs_only else "transfer.csv")
    pd.DataFrame(rows).assign(cores=os.cpu_count()).to_csv(out, index=False)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
