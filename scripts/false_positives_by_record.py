"""Where a class's false positives come from: per record, over the seeds of a repeat.

`python scripts/false_positives_by_record.py <repeat run folder> [<another> ...]
[--report also_test/svdb/report] [--label S] [--top 10]` reads every seed's predictions.csv
(`seed*/<report>/predictions.csv`) of each folder and prints, per record, the beats called
`label` whose reference is another AAMI class of EC57's scored ones (N, S, V, F; Q reference
beats are left out as EC57 does), as the mean over the seeds and the seed range, one column
per folder: the records that cost the class its positive predictivity, side by side for two
configurations. Records ordered by the first folder's mean, the `--top` first, and the
total over every record of each folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

SCORED = ("N", "S", "V", "F")  # EC57 scores false positives over these reference classes


def false_positives(path: Path, label: str) -> pd.Series:
    """Beats of each record called `label` whose reference is another scored class."""
    frame = pd.read_csv(path, usecols=["record", "reference", "predicted"])
    wrong = frame[(frame["predicted"] == label) & (frame["reference"] != label)
                  & frame["reference"].isin(SCORED)]
    return wrong.groupby("record").size().reindex(frame["record"].unique(), fill_value=0)


def per_seed_table(folder: Path, report: str, label: str) -> pd.DataFrame:
    """[records, seeds] false-positive counts of one repeat folder."""
    files = sorted(folder.glob(f"seed*/{report}/predictions.csv"))
    if not files:
        raise SystemExit(f"{folder}: no seed*/{report}/predictions.csv (a repeat.seeds run "
                         "folder with its test report was expected)")
    table = pd.DataFrame({path.parts[-len(Path(report).parts) - 2]: false_positives(path, label)
                          for path in files})
    if table.isna().any().any():
        missing = table.index[table.isna().any(axis=1)].tolist()
        raise SystemExit(f"{folder}: the seeds score different records ({missing[:5]} not in "
                         "every seed's predictions); a repeat scores the same records")
    return table.astype(int)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--report", default="report")
    parser.add_argument("--label", default="S", choices=SCORED,
                        help="an EC57-scored class (Q beats are scored apart)")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    tables = [per_seed_table(folder, args.report, args.label) for folder in args.folders]
    order = tables[0].mean(axis=1).sort_values(ascending=False).index
    view = Table(title=f"{args.label} false positives per record (reference N/V/F called "
                       f"{args.label}): seed mean [min, max]")
    view.add_column("record")
    for folder, table in zip(args.folders, tables, strict=True):
        view.add_column(f"{folder.name} ({table.shape[1]} seeds)", justify="right")

    def cell(table: pd.DataFrame, record: str | None) -> str:
        counts = table.sum(axis=0) if record is None else (
            table.loc[record] if record in table.index else None)
        if counts is None:
            return "-"
        return f"{counts.mean():.1f} [{counts.min()}, {counts.max()}]"

    for record in order[:args.top]:
        view.add_row(str(record), *(cell(table, record) for table in tables))
    view.add_row("all records", *(cell(table, None) for table in tables))
    Console().print(view)


if __name__ == "__main__":
    main()
