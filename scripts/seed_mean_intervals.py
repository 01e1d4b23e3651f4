"""Record-level intervals of a seed repeat's mean AAMI figures (`repeat.seeds`).

`python scripts/seed_mean_intervals.py <repeat run folder> [report subfolder, e.g.
also_test/svdb/report] [--rounds 1000]` reads every seed's predictions.csv, draws records with
replacement (the same draw for every seed: the seeds score the same records), computes each
seed's EC57 figures on the draw and averages them over the seeds; prints the seed means with
their 95% percentile interval over the draws, as a table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from ecg_experiments.evaluation import aami
from ecg_experiments.evaluation.report import percentile_interval

KEYS = ("acc", "kappa", "se_S", "ppv_S", "se_V", "ppv_V")


def per_record_confusions(frame: pd.DataFrame, names: list[str]) -> tuple[list, np.ndarray]:
    k = len(names)
    records = sorted(frame["record"].unique())
    index = {r: i for i, r in enumerate(records)}
    cells = (frame["reference"].map(names.index) * k + frame["predicted"].map(names.index))
    flat = frame["record"].map(index).to_numpy() * k * k + cells.to_numpy()
    return records, np.bincount(flat, minlength=len(records) * k * k).reshape(-1, k, k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("report", nargs="?", default="report")
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    files = sorted(args.folder.glob(f"seed*/{args.report}/predictions.csv"))
    names = ["N", "S", "V", "F", "Q"]
    stacks, records = [], None
    for path in files:
        seen, confusions = per_record_confusions(pd.read_csv(path), names)
        if records is not None and seen != records:
            raise SystemExit(f"{path}: scores other records than the first seed")
        records = seen
        stacks.append(confusions)
    per_seed = np.stack(stacks)  # [seeds, records, k, k]
    rng = np.random.default_rng(args.seed)
    draws = rng.integers(0, per_seed.shape[1], size=(args.rounds, per_seed.shape[1]))
    counts = np.stack([np.bincount(d, minlength=per_seed.shape[1]) for d in draws])
    resampled = np.einsum("dr,srij->dsij", counts, per_seed)  # [draws, seeds, k, k]
    point = aami.ec57_statistics(per_seed.sum(axis=1), names)
    boot = aami.ec57_statistics(resampled, names)
    table = Table(title=f"{len(files)} seeds, 95% CI over {per_seed.shape[1]} records "
                        f"({args.rounds} draws)")
    for column in ("figure", "seed mean", "sd", "interval of the mean"):
        table.add_column(column, justify="right")
    for key in KEYS:
        low, high = percentile_interval(np.nanmean(boot[key], axis=1))
        table.add_row(key, f"{np.mean(point[key]):.3f}", f"{np.std(point[key], ddof=1):.3f}",
                      f"[{low:.3f}, {high:.3f}]")
    Console().print(table)


if __name__ == "__main__":
    main()
