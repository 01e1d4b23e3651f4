"""Benchmark: seconds to prepare all 48 MIT-BIH records per recipe (fresh output dir).

Usage: python scripts/bench_prepare.py [--mitdb DIR] [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ecg_experiments.data.beat_table import BeatTable, prepare_mitbih
from ecg_experiments.data.segment import CenteredRecipe, KachueeRecipe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_render import default_mitdb  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mitdb", default=default_mitdb(), help="raw MIT-BIH folder")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    view = Table(title=f"MIT-BIH preparation, 48 records, {os.cpu_count()} cores")
    for column in ("recipe", "beats", "median s", "min s", "cached re-run s"):
        view.add_column(column, justify="left" if column == "recipe" else "right")
    recipes = {"kachuee": KachueeRecipe(), "kachuee (detector)": KachueeRecipe(rpeaks="detector"),
               "centered": CenteredRecipe()}
    for label, recipe in recipes.items():
        times = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                path = prepare_mitbih(args.mitdb, out, recipe, missing_lead="first",
                                      download=False, progress=False)
                times.append(time.perf_counter() - start)
                start = time.perf_counter()
                prepare_mitbih(args.mitdb, out, recipe, missing_lead="first", download=False,
                               progress=False)
                cached = time.perf_counter() - start
                beats = len(BeatTable.load(path / "beats.npz").records)
        view.add_row(label, f"{beats:,}", f"{statistics.median(times):.2f}", f"{min(times):.2f}",
                     f"{cached:.2f}")
    Console().print(view)


if __name__ == "__main__":
    main()
