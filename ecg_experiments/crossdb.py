"""After training: the best checkpoint evaluated on other data too (`also_test`), e.g. every
svdb record for a model trained on mitdb DS1, in one table beside the test split.

Each entry of `also_test` ({name: overrides of the run's data config}) is evaluated on all
its beats (`split=all` where the data offers it) as an MLflow child run of the training run;
the table `also_test.csv` (accuracy, macro-F1 and the AAMI EC57 figures per data) goes to
the run's report.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from ecg_experiments.config import build

log = logging.getLogger(__name__)

# the columns of the table: what inter-patient and cross-database papers compare
COLUMNS = {"acc": "test/acc", "f1_macro": "test/f1_macro", "aami_acc": "test/aami/acc",
           "kappa": "test/aami/kappa", "jkappa": "test/aami/jkappa",
           "se_S": "test/aami/se_S", "ppv_S": "test/aami/ppv_S",
           "se_V": "test/aami/se_V", "ppv_V": "test/aami/ppv_V"}


def summary_row(name: str, metrics: dict[str, float], beats: int | None) -> dict[str, Any]:
    return {"data": name, "beats": beats,
            **{column: metrics.get(key) for column, key in COLUMNS.items()}}


def data_config(cfg: DictConfig, overrides: Any) -> DictConfig:
    """The run's data config with `overrides`, every sample in test where the data allows."""
    from ecg_experiments.tasks.evaluate import every_sample_in_test

    data = OmegaConf.merge(cfg.data, overrides)
    every_sample_in_test(data)
    return data


def also_test(cfg: DictConfig, checkpoint: str, test_metrics: dict[str, float],
              test_beats: int, run_dir: Path, parent: Any) -> dict[str, float]:
    """Evaluate `checkpoint` on each `cfg.also_test` entry; write, print and log one table.
    Returns `also_test/<name>/<column>` metrics."""
    from rich.console import Console
    from rich.table import Table

    from ecg_experiments.models.checkpoint import load_trained_model
    from ecg_experiments.tasks.evaluate import evaluate_model
    from ecg_experiments.tracking import log_files

    model = load_trained_model(Path(checkpoint))
    settings = OmegaConf.create({"holdout": "test", "class_map": None, "seed": cfg.seed,
                                 "trainer": OmegaConf.to_container(cfg.trainer, resolve=True),
                                 "report": OmegaConf.to_container(cfg.report, resolve=True)})
    with open_dict(settings):
        settings.trainer.pop("max_time", None)
        settings.trainer["strategy"] = "auto"
        settings.trainer["devices"] = 1
    rows = [summary_row("test split", test_metrics, test_beats)]
    results: dict[str, float] = {}
    for name, overrides in (cfg.get("also_test") or {}).items():
        data = data_config(cfg, overrides)
        logger = None
        if parent is not None:
            logger = build(cfg.logger, run_name=f"{name}",
                           tags={"mlflow.parentRunId": parent.run_id, "also_test": str(name)})
        metrics = evaluate_model(settings, model, data, f"also_test.{name}",
                                 run_dir / "also_test" / str(name), logger,
                                 {"source.run_id": parent.run_id} if parent else {},
                                 f"{name}: the best checkpoint on all its beats")
        beats = int(metrics.pop("test/samples"))
        rows.append(summary_row(str(name), metrics, beats))
        results.update({f"also_test/{name}/{column}": float(metrics[key])
                        for column, key in COLUMNS.items() if key in metrics})
    table = pd.DataFrame(rows)
    out = run_dir / "report" / "also_test.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    view = Table(title="The best checkpoint on each test set (AAMI: N/S/V/F reference beats)")
    for column in table.columns:
        view.add_column(column, justify="left" if column == "data" else "right")
    for row in table.itertuples(index=False):
        view.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    Console(width=max(Console().width, 120)).print(view)
    if parent is not None:
        parent.log_metrics(results)
        log_files(parent, {"also_test": out}, "report")
    return results
