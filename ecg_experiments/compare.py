"""Compare tracked runs in the terminal.

`python -m ecg_experiments.compare [experiment name] [metric=val/f1_macro] [limit=20]
[children=false] [tracking_uri=...]`: one row per run (key params and metrics), best first.

Runs are ranked by a validation metric (by default the monitored one), using each run's best
epoch (`best/<metric>`, what checkpoints and sweepers chose on); test metrics are shown beside
it for reading, never for choosing: ranking by a test metric is refused.

The parts of a run (the folds of a cross-validation, the seeds of a repeat, the other
databases of `also_test`) are child runs whose numbers are not the run's: a fold's best epoch
is chosen on the data that scores it. They are left out unless `children=true`; their parent
carries the figure to rank by (the fold mean at the common epoch count, the seed mean).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from ecg_experiments.cli import exit_on_user_error
from ecg_experiments.config import project_root
from ecg_experiments.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

KEY_PARAMS = {
    "model": "tags.choice.model",
    "data": "tags.choice.data",
    "split": "params.data.split",
    "optimizer": "tags.choice.optimizer",
    "lr": "params.optimizer.lr",
    "batch": "params.data.batch_size",
    "epochs": "params.trainer.max_epochs",
    "seed": "params.seed",
}
KEY_METRICS = ("test/acc", "test/f1_macro", "test/auroc_macro")
DEFAULT_METRIC = "val/f1_macro"  # conf/train.yaml's monitor.metric
# the tags of child runs that are part of another run (runs/crossval.py, runs/repeats.py,
# runs/crossdb.py); the children of a sweep are whole runs and carry none of them
PART_TAGS = {"cv.fold": "fold", "repeat.seed": "seed", "also_test": "also_test"}


def default_tracking_uri() -> str:
    import os

    return os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{project_root()}/outputs/mlflow.db")


def compare_runs(
    tracking_uri: str, experiment: str | None = None, metric: str = DEFAULT_METRIC,
    limit: int = 20, children: bool = False,
) -> pd.DataFrame:
    """Runs of one experiment (or all) with key params and metrics, sorted by the validation
    `metric`'s best epoch (`best/<metric>`; the last epoch's value for runs without it).

    Loss-like metrics sort ascending, everything else descending; runs without the metric
    come last. The parts of runs (folds, seeds, also_test) are left out unless `children`.
    """
    if not metric.startswith("val/"):
        raise ConfigError(f"metric={metric}: runs are ranked by a validation metric "
                          "('val/...'); test metrics are shown beside it, but choosing a "
                          "model on the test split would make its test score optimistic")
    import mlflow
    import pandas as pd  # MLflow and pandas load here, not for --help or a wrong metric

    client = mlflow.MlflowClient(tracking_uri)
    if experiment:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            names = [e.name for e in client.search_experiments()]
            raise ConfigError(
                f"no MLflow experiment named {experiment!r} in {tracking_uri}; "
                f"experiments: {', '.join(names) or 'none'}"
            )
        ids = [found.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        runs = mlflow.search_runs(experiment_ids=ids, max_results=10_000)
    finally:
        mlflow.set_tracking_uri(previous)
    part = pd.Series("", index=runs.index)
    for tag, label in PART_TAGS.items():
        if f"tags.{tag}" in runs:
            value = runs[f"tags.{tag}"]
            part = part.where(value.isna(), label + " " + value.astype(str))
    if not children:
        runs, part = runs[part == ""], part[part == ""]
    if runs.empty:
        return pd.DataFrame()
    column = f"metrics.best/{metric}"
    last = runs.get(f"metrics.{metric}", pd.Series(float("nan"), index=runs.index))
    runs[column] = runs[column].fillna(last) if column in runs else last
    ascending = "loss" in metric
    runs = runs.sort_values(column, ascending=ascending, na_position="last").head(limit)
    table = pd.DataFrame({
        "run": runs["run_id"].str[:8],
        "name": runs.get("tags.mlflow.runName", pd.Series("", index=runs.index)),
        "part": part.loc[runs.index],
        "status": runs["status"],
        "started": runs["start_time"].dt.strftime("%Y-%m-%d %H:%M"),
    })
    for label, key in KEY_PARAMS.items():
        table[label] = runs[key] if key in runs else ""
    table[f"best {metric}"] = runs[column]
    for name in KEY_METRICS:
        key = f"metrics.{name}"
        table[name] = runs[key] if key in runs else float("nan")
    return table.reset_index(drop=True)


def print_runs(table: pd.DataFrame, metric: str) -> None:
    import pandas as pd

    if table.empty:
        Console().print("no runs found")
        return
    empty = [c for c in table.columns if table[c].isna().all() or (table[c] == "").all()]
    table = table.drop(columns=[c for c in empty if c != f"best {metric}"])
    view = Table(title=f"Runs ranked by their best {metric} (test metrics for reading only)")
    for column in table.columns:
        view.add_column(column, justify="right" if "/" in column else "left", no_wrap=True)
    for row in table.itertuples(index=False):
        view.add_row(*["" if pd.isna(v) else (f"{v:.4f}" if isinstance(v, float) else str(v))
                       for v in row])
    Console(width=max(Console().width, 200)).print(view)


def parse_args(argv: Sequence[str]) -> dict[str, str]:
    """`[experiment] [metric=...] [limit=...] [tracking_uri=...]`."""
    options = {"metric": DEFAULT_METRIC, "limit": "20", "tracking_uri": default_tracking_uri(),
               "experiment": "", "children": "false"}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            options["experiment"] = arg
        elif key in options:
            options[key] = value
        else:
            raise ConfigError(
                f"unknown option {key!r}; usage: compare [experiment] [metric=val/f1_macro] "
                "[limit=20] [children=false] [tracking_uri=...]"
            )
    if options["children"].lower() not in ("true", "false"):
        raise ConfigError(f"children={options['children']}: expected true or false")
    return options


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help" in argv or "-h" in argv:
        print(__doc__)
        return
    with exit_on_user_error():
        options = parse_args(argv)
        table = compare_runs(options["tracking_uri"], options["experiment"] or None,
                             options["metric"], int(options["limit"]),
                             options["children"].lower() == "true")
    print_runs(table, options["metric"])


if __name__ == "__main__":
    main()
