"""MLflow tracking: where the store is, what every run records, and finding runs again."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import MLFlowLogger

from ecg_experiments.config import project_root
from ecg_experiments.errors import ConfigError

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value


# the MLflow run of a run folder (a resumed or requeued run continues it)
RUN_ID_FILE = "mlflow_run_id"


def run_id_in(folder: Path) -> str | None:
    """The MLflow run recorded in a run folder (RUN_ID_FILE), if any."""
    id_file = Path(folder) / RUN_ID_FILE
    return id_file.read_text().strip() if id_file.is_file() else None


def is_remote(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://", "databricks"))


def mlflow_logger(
    tracking_uri: str,
    experiment_name: str,
    artifact_dir: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    run_id: str | None = None,
) -> MLFlowLogger:
    """An MLFlowLogger on a local SQLite store (artifacts in `artifact_dir`) or a server.

    For a local store the folders are created; a server chooses its own artifact location.
    """
    artifact_location = None
    if is_remote(tracking_uri):
        check_server(tracking_uri)
        get_or_create_experiment(mlflow.MlflowClient(tracking_uri), experiment_name, None)
    elif tracking_uri.startswith("sqlite:///"):
        prepare_sqlite_store(tracking_uri, experiment_name, artifact_dir)
    else:  # a file store, a database server: created (and marked) here, not by Lightning
        get_or_create_experiment(mlflow.MlflowClient(tracking_uri), experiment_name,
                                 artifact_dir)
    if not is_remote(tracking_uri) and artifact_dir:
        Path(artifact_dir).mkdir(parents=True, exist_ok=True)
        artifact_location = Path(artifact_dir).resolve().as_uri()
    return MLFlowLogger(
        experiment_name=experiment_name,
        run_name=run_name,
        tracking_uri=tracking_uri,
        tags=dict(tags or {}),
        artifact_location=artifact_location,
        run_id=run_id,
    )


def prepare_sqlite_store(tracking_uri: str, experiment_name: str,
                         artifact_dir: str | None) -> None:
    """Create the SQLite store and the experiment under a file lock.

    MLflow creates its tables on first use; processes starting together (parallel sweep
    jobs, several trainings) would race on that ("table ... already exists").
    """
    from filelock import FileLock

    database = Path(tracking_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(database) + ".lock", timeout=300):
        get_or_create_experiment(mlflow.MlflowClient(tracking_uri), experiment_name, artifact_dir)


def local_store_exists(tracking_uri: str) -> bool | None:
    """Whether a local SQLite store's file is there (asking MLflow would create it); None
    for any other store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///")).is_file()


def check_server(tracking_uri: str, timeout: float = 5.0) -> None:
    """Fail fast when no MLflow server answers at `tracking_uri` (MLflow's own client would
    retry for minutes, after the training work)."""
    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if response.status != 200:
                raise OSError(f"HTTP {response.status}")
    except (OSError, urllib.error.URLError) as err:
        raise ConfigError(
            f"logger.tracking_uri={tracking_uri}: no MLflow server answers at {url} ({err}); "
            "start one (`mlflow server --host 127.0.0.1 --port 5000`), fix the address, or "
            "drop the override to use the local store"
        ) from err


# MLflow 3 opens an experiment in its GenAI view (traces, token usage) unless this tag says
# it holds model training runs
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"


def get_or_create_experiment(client: mlflow.MlflowClient, name: str,
                             artifact_dir: str | None) -> str:
    """The id of experiment `name`, created (with the local artifact folder) when missing,
    and marked as model development unless its kind was set already (by hand, say)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        if EXPERIMENT_KIND_TAG not in found.tags:
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG,
                                      MODEL_DEVELOPMENT)
        return found.experiment_id
    location = None
    if artifact_dir and not is_remote(client.tracking_uri):
        Path(artifact_dir).mkdir(parents=True, exist_ok=True)
        location = Path(artifact_dir).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location,
                                        tags={EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT})
    except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel job?
        if client.get_experiment_by_name(name) is None:
            raise
        return get_or_create_experiment(client, name, artifact_dir)


def sweep_id(sweep_dir: str | Path) -> str:
    """A sweep's identity: its output folder relative to the multirun root."""
    sweep_dir = Path(sweep_dir)
    return f"{sweep_dir.parent.name}/{sweep_dir.name}"


def git_info(root: str | Path | None = None) -> dict[str, str]:
    """The commit and whether the working tree differs from it (empty outside git)."""
    root = str(root or project_root())
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"git.commit": commit, "git.dirty": str(bool(status.strip())).lower()}


def flatten_config(cfg: DictConfig | Mapping, prefix: str = "") -> dict[str, str]:
    """Flatten a config to `a.b.c` keys with string values, as MLflow params."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, str] = {}
    for key, value in container.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_LENGTH]
    return flat


def choice_tags() -> dict[str, str]:
    """The config group choices of this run (e.g. choice.model=cnn1d) as tags."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    # a group placed elsewhere ("render@data.source.renderer") is named by where it sits
    return {f"choice.{k.split('@')[-1]}": str(v) for k, v in choices.items()
            if v is not None and not k.startswith("hydra")}


def log_run_metadata(
    logger: MLFlowLogger,
    cfg: DictConfig,
    config_file: Path,
    tags: Mapping[str, str],
    params: bool = True,
) -> None:
    """Log the flattened config as params, the tags, and the resolved config YAML."""
    client, run_id = logger.experiment, logger.run_id
    if params:
        logger.log_hyperparams(flatten_config(cfg))
    all_tags = {**git_info(), "command": " ".join(sys.argv)[:5000], **tags}
    for key, value in all_tags.items():
        client.set_tag(run_id, key, str(value))
    client.log_artifact(run_id, str(config_file))


@contextlib.contextmanager
def active_run(tracking_uri: str, run_id: str) -> Iterator[None]:
    """Make `run_id` the fluent API's active run (for mlflow.<flavor>.log_model) and restore
    the previous tracking URI afterwards. The run keeps its final status."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with mlflow.start_run(run_id=run_id, log_system_metrics=False):
            yield
    finally:
        mlflow.set_tracking_uri(previous)


def _with_checkpoint_weights(net: torch.nn.Module, checkpoint: Path) -> torch.nn.Module:
    """A copy of `net` with the network weights of a Lightning checkpoint (`net.` keys): the
    module in memory may hold other weights (the last epoch's, when the best epoch's
    checkpoint was not tested)."""
    import copy

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    weights = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    copied = copy.deepcopy(net)
    copied.load_state_dict(weights)
    return copied.eval()


def log_model(
    logger: MLFlowLogger,
    net: torch.nn.Module,
    example: torch.Tensor,
    class_names: list[str],
    preprocessing: Mapping[str, Any],
    checkpoint: str | Path | None,
) -> str:
    """Log `net` as an MLflow pytorch model and the Lightning checkpoint; return the model URI.

    The model carries a signature, an input example, the class names and the preprocessing
    settings (metadata), and the package code, so `mlflow.pytorch.load_model` works without
    this repository. Tags say how to reload both.
    """
    import mlflow.pytorch
    from mlflow.models import infer_signature

    # float32 and the usual memory layout, whatever the run trained in (models/precision.py)
    net = net.eval().cpu().float().to(memory_format=torch.contiguous_format)
    if checkpoint is not None:  # the logged model holds the weights of the checkpoint it names
        net = _with_checkpoint_weights(net, Path(checkpoint))
    with torch.no_grad():
        output = net(example)
    signature = infer_signature(example.numpy(), output.numpy())
    run_id = logger.run_id
    with active_run(logger._tracking_uri, run_id):
        info = mlflow.pytorch.log_model(
            net,
            name="model",
            signature=signature,
            input_example=example.numpy(),
            metadata={"class_names": list(class_names), "preprocessing": dict(preprocessing),
                      "output": "logits; softmax gives class probabilities"},
            code_paths=[str(Path(__file__).parent)],  # the package's folder
            pip_requirements=[f"torch>={torch.__version__.split('+')[0]}", "numpy"],
        )
        tags = {"model.uri": info.model_uri, "model.class_names": ",".join(class_names),
                "model.reload": f"mlflow.pytorch.load_model('{info.model_uri}')"}
        if checkpoint is not None:
            mlflow.log_artifact(str(checkpoint), "checkpoints")
            tags["model.checkpoint"] = f"checkpoints/{Path(checkpoint).name}"
            tags["model.reload_checkpoint"] = (
                f"python -m ecg_experiments.evaluate run_id={run_id} (or ckpt=<downloaded file>)"
            )
        mlflow.set_tags(tags)
    return info.model_uri


def log_files(logger: MLFlowLogger, files: Mapping[str, Path], artifact_path: str) -> None:
    for path in files.values():
        logger.experiment.log_artifact(logger.run_id, str(path), artifact_path)


def ui_address(tracking_uri: str, experiment_name: str, host: str = "127.0.0.1",
               port: int = 5000) -> str:
    """The MLflow UI's page of the experiment's training runs.

    MLflow 3.17's UI picks its view (GenAI or model training) from a browser-wide setting
    that starts on GenAI, not from the experiment's `mlflow.experimentKind` tag (older 3.x
    UIs read the tag, which `get_or_create_experiment` sets): the address names the view.
    """
    base = f"http://{host}:{port}/#/experiments"
    experiment = None
    if local_store_exists(tracking_uri) is not False:
        experiment = mlflow.MlflowClient(tracking_uri).get_experiment_by_name(experiment_name)
    page = f"{base}/{experiment.experiment_id}" if experiment is not None else base
    return f"{page}?workflowType=machine_learning"
