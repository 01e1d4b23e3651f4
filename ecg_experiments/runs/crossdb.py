"""After training: the best checkpoint evaluated on other data too (`also_test`), e.g. every
svdb record for a model trained on mitdb DS1, in one table beside the test split.

Each entry of `also_test` ({name: overrides of the run's data config}) is evaluated on all
its beats (`split=all` where the data offers it) as an MLflow child run of the training run,
through the scoring stage (runs/score.py). An entry scores only the database it names, and
never a record the model trained on: those are left out and the row says so (`note`). The
table `also_test.csv` (accuracy, macro-F1 and the AAMI EC57 figures per data) goes to the
run's report.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from ecg_experiments.config import build
from ecg_experiments.errors import DataError
from ecg_experiments.evaluation.seen import SeenDataError, SeenSamples
from ecg_experiments.models.checkpoint import load_trained_model
from ecg_experiments.runs.score import evaluate_model, every_sample_in_test
from ecg_experiments.tracking import log_files

log = logging.getLogger(__name__)

# the columns of the table: what inter-patient and cross-database papers compare
COLUMNS = {"acc": "test/acc", "f1_macro": "test/f1_macro", "aami_acc": "test/aami/acc",
           "kappa": "test/aami/kappa", "jkappa": "test/aami/jkappa",
           "se_S": "test/aami/se_S", "ppv_S": "test/aami/ppv_S",
           "se_V": "test/aami/se_V", "ppv_V": "test/aami/ppv_V"}


def summary_row(name: str, metrics: dict[str, float], beats: int | None,
                note: str = "") -> dict[str, Any]:
    return {"data": name, "beats": beats,
            **{column: metrics.get(key) for column, key in COLUMNS.items()}, "note": note}


def data_config(cfg: DictConfig, overrides: Any, seen: SeenSamples | None = None
                ) -> tuple[DictConfig, list[str]]:
    """The run's data config with `overrides`, every sample in test where the data allows,
    only the database an entry names (`database: svdb` replaces the run's list of
    databases), and no record the model trained on: returns it and the records left out."""
    data = OmegaConf.merge(cfg.data, overrides)
    with open_dict(data):
        if "database" in overrides and "databases" not in overrides and "databases" in data:
            data.databases = None
        every_sample_in_test(data)
        left_out: list[str] = []
        if seen is not None and seen.records and "exclude_records" in data:
            scored = {str(d) for d in (data.get("databases") or [data.get("database")])}
            given = [str(r) for r in data.exclude_records or []]
            named = set(given) | {r.split("/", 1)[-1] for r in given}
            left_out = [r for r in seen.records
                        if r.split("/", 1)[0] in scored and r not in named
                        and r.split("/", 1)[-1] not in named]
            data.exclude_records = given + left_out
    return data, left_out


def also_test(cfg: DictConfig, checkpoint: str, test_metrics: dict[str, float],
              test_beats: int, run_dir: Path, parent: Any) -> dict[str, float]:
    """Evaluate `checkpoint` on each `cfg.also_test` entry; write, print and log one table.
    Returns `also_test/<name>/<column>` metrics."""
    from rich.console import Console
    from rich.table import Table

    model = load_trained_model(Path(checkpoint))
    settings = OmegaConf.create({"holdout": "test", "class_map": None, "seed": cfg.seed,
                                 "allow_seen": bool(cfg.get("allow_seen")),
                                 "trainer": OmegaConf.to_container(cfg.trainer, resolve=True),
                                 "report": OmegaConf.to_container(cfg.report, resolve=True)})
    with open_dict(settings):
        settings.trainer.pop("max_time", None)
        settings.trainer["strategy"] = "auto"
        settings.trainer["devices"] = 1
    rows = [summary_row("test split", test_metrics, test_beats)]
    results: dict[str, float] = {}
    for name, overrides in (cfg.get("also_test") or {}).items():
        data, left_out = data_config(cfg, overrides, model.seen)
        note = (f"{len(left_out)} trained-on record(s) left out: "
                + ", ".join(left_out)) if left_out else ""
        if left_out:
            log.info("also_test.%s: %s", name, note)
        make_logger = None
        if parent is not None:
            tags = {"mlflow.parentRunId": parent.run_id, "also_test": str(name),
                    **({"also_test.left_out": ", ".join(left_out)} if left_out else {})}
            trained = parent.experiment.get_run(parent.run_id).info.run_name
            make_logger = functools.partial(build, cfg.logger,
                                            run_name=f"eval-{trained}-on-{name}", tags=tags)
        try:
            metrics = evaluate_model(settings, model, data, f"also_test.{name}",
                                     run_dir / "also_test" / str(name), make_logger,
                                     {"source.run_id": parent.run_id} if parent else {},
                                     f"{name}: the best checkpoint on all its unseen beats")
        except SeenDataError as err:  # samples the model was fit on, no record to drop
            log.warning("also_test.%s: not scored: %s", name, err)
            rows.append(summary_row(str(name), {}, 0, "not scored: holds samples the model "
                                    "was fit or validated on (allow_seen=true scores them)"))
            continue
        except DataError as err:
            if not left_out:
                raise
            log.warning("also_test.%s: nothing left to score once the records the model "
                        "trained on are left out (%s)", name, err)
            rows.append(summary_row(str(name), {}, 0, note + "; no other record"))
            continue
        beats = int(metrics.pop("test/samples"))
        rows.append(summary_row(str(name), metrics, beats, note))
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
        view.add_row(*["" if v is None or (isinstance(v, float) and pd.isna(v)) else
                       f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    Console(width=max(Console().width, 120)).print(view)
    if parent is not None:
        parent.log_metrics(results)
        log_files(parent, {"also_test": out}, "report")
    return results
