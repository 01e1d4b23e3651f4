"""Benchmark: beats rendered to PNG images per second, per renderer and image size.

Real MIT-BIH beats (kachuee recipe, prepared from the raw records into outputs/data when
missing). "files/s" is the whole path (render, encode, write one PNG per beat to
outputs/bench/); "arrays/s" the rendering alone. Prints a table and writes
outputs/bench/render.csv.

Usage: python scripts/bench_render.py [--mitdb DIR] [--beats N] [--repeats N] [--sizes 64 227]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from ecg_experiments.config import PROJECT_ROOT
from ecg_experiments.data.beat_table import BeatTable, prepare_mitbih
from ecg_experiments.data.render import (
    ScalogramRenderer,
    SpectrogramRenderer,
    WaveformRenderer,
    write_images,
)
from ecg_experiments.data.segment import KachueeRecipe


def default_mitdb() -> str:
    """The raw MIT-BIH folder: env ECG_MITDB_DIR, else the shared copy beside the repo."""
    return os.environ.get("ECG_MITDB_DIR") or str(
        Path(os.environ.get("ECG_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data")) / "mitdb"
    )


RENDERERS = {"spectrogram": SpectrogramRenderer(), "scalogram": ScalogramRenderer(),
             "waveform": WaveformRenderer()}


def real_beats(mitdb: str, count: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """`count` beats drawn at random from all 48 records (prepared once, then cached)."""
    recipe = KachueeRecipe()
    folder = prepare_mitbih(mitdb, PROJECT_ROOT / "outputs" / "data", recipe,
                            missing_lead="first", download=False, progress=False)
    signals = BeatTable.load(folder / "beats.npz").beats.signals
    rows = np.random.default_rng(seed).choice(len(signals), size=count, replace=False)
    return signals[rows].astype(np.float64), recipe.rate


def time_rendering(name: str, beats: np.ndarray, rate: float, size: int,
                   repeats: int) -> dict[str, float]:
    """Median files/s and arrays/s over `repeats`, and the mean PNG size."""
    renderer = RENDERERS[name]
    bench = PROJECT_ROOT / "outputs" / "bench"
    bench.mkdir(parents=True, exist_ok=True)
    files, arrays, kilobytes = [], [], 0.0
    for _ in range(repeats):
        folder = Path(tempfile.mkdtemp(prefix=f"render-{name}-", dir=bench))
        try:
            paths = [folder / f"{i:06d}.png" for i in range(len(beats))]
            start = time.perf_counter()
            write_images(renderer, beats, rate, size, paths)
            files.append(len(beats) / (time.perf_counter() - start))
            kilobytes = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        finally:
            shutil.rmtree(folder)
        start = time.perf_counter()
        for first in range(0, len(beats), 512):
            renderer.render(beats[first:first + 512], rate, size)
        arrays.append(len(beats) / (time.perf_counter() - start))
    return {"renderer": name, "size": size, "images": len(beats),
            "files_per_s": statistics.median(files), "arrays_per_s": statistics.median(arrays),
            "kb_per_image": kilobytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mitdb", default=default_mitdb(), help="raw MIT-BIH folder")
    parser.add_argument("--beats", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 227])
    parser.add_argument("--renderers", nargs="+", default=list(RENDERERS), choices=RENDERERS)
    args = parser.parse_args()

    beats, rate = real_beats(args.mitdb, args.beats)
    rows = [time_rendering(name, beats, rate, size, args.repeats)
            for name in args.renderers for size in args.sizes]
    view = Table(title=f"{args.beats:,} beats to PNG, {os.cpu_count()} cores, "
                       f"median of {args.repeats}")
    for column in ("renderer", "size", "files/s", "arrays/s", "KB/image"):
        view.add_column(column, justify="left" if column == "renderer" else "right")
    for row in rows:
        view.add_row(row["renderer"], f"{row['size']}x{row['size']}",
                     f"{row['files_per_s']:,.0f}", f"{row['arrays_per_s']:,.0f}",
                     f"{row['kb_per_image']:.1f}")
    Console().print(view)
    out = PROJECT_ROOT / "outputs" / "bench" / "render.csv"
    pd.DataFrame(rows).to_csv(out, index=False)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
