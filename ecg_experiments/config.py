"""Config helpers: OmegaConf resolvers, project paths and cross-group validation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from ecg_experiments.errors import ConfigError, user_error_in

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"


def project_root() -> str:
    """The repository root: env `ECG_PROJECT_ROOT`, else the folder holding the package."""
    return os.environ.get("ECG_PROJECT_ROOT", str(PROJECT_ROOT))


def timm_data_config(model_name: str, key: str) -> Any:
    """`${ecg.timm:<model>,input_size|mean|std}`: from timm's pretrained config of a model."""
    import timm

    if not timm.is_model(model_name):
        raise ConfigError(f"model.name={model_name!r}: not a timm model (see timm.list_models())")
    pretrained = timm.get_pretrained_cfg(model_name)
    if pretrained is None:
        return {"input_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3}[key]
    if key == "input_size":
        return int(pretrained.input_size[-1])
    if key not in ("mean", "std"):
        raise ConfigError(f"ecg.timm:{model_name},{key}: expected input_size, mean or std")
    return [float(v) for v in getattr(pretrained, key)]


def _window_length(*args: Any) -> int:
    from ecg_experiments.data.segment import window_length  # scipy: loaded when resolved

    return window_length(*args)


def _rr_count(on: Any, context: Any = 0, template: Any = False, rhythm: Any = 0) -> int:
    """The number of per-beat features (0 when off), with `context` R-R intervals on either
    side (data.recipe.rr_context), the template features (data.recipe.template_features) and
    the rhythm features (data.recipe.rhythm_beats)."""
    from ecg_experiments.data.beat_features import rr_feature_names

    return len(rr_feature_names(int(context or 0), bool(template), int(rhythm or 0))) if on else 0


def _channel_count(channels: Any = None) -> int:
    """Channels of a beat: one per lead of `data.channels`, else one."""
    return len(channels) if channels else 1


def run_name(overrides: str = "") -> str:
    """A run folder's name under outputs/runs: `DATE/TIME`, or in a Slurm job
    `slurm-<job id>[_<array task>]-<hash of the command's overrides>`, the same name when
    Slurm requeues the job, so the requeued command finds its checkpoint and MLflow run."""
    import hashlib
    from datetime import datetime

    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return f"slurm-{job}-{hashlib.sha256(str(overrides).encode()).hexdigest()[:8]}"


def register_resolvers() -> None:
    """Register `${ecg.root:}`, `${ecg.window_length:b,a,rate}`, `${ecg.rr_count:on}`,
    `${ecg.channels:data.channels}`,
    `${ecg.timm:name,key}`, `${ecg.run_name:overrides}` and `${len:...}` (idempotent). Each
    imports what it needs when a config is resolved, so that composing one stays fast."""
    resolvers = {
        "ecg.root": project_root,
        "ecg.window_length": _window_length,
        "ecg.rr_count": _rr_count,
        "ecg.channels": _channel_count,
        "ecg.timm": timm_data_config,
        "ecg.run_name": run_name,
        # None while the classes come from the data
        "len": lambda seq: None if seq is None else len(seq),
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def group_choice(group: str) -> str:
    """The option chosen for a config group (e.g. `model=cnn1d` -> "cnn1d"), or the group name."""
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return f"{group}={choice}"
    return group


# The input kind of each DataModule of the project, by `_target_`: a model/data mismatch is
# then refused before Lightning loads (about 10 s); tests/test_config.py checks this against
# each class's own `input_kind`. Other targets are imported to ask them.
DATA_INPUT_KINDS = {
    "ecg_experiments.data.beats.BeatsDataModule": "signal",
    "ecg_experiments.data.physionet_datamodule.PhysionetDataModule": "signal",
    "ecg_experiments.data.mitbih.PhysionetDataModule": "signal",  # stored by older runs
    "ecg_experiments.data.mitbih.MitbihDataModule": "signal",
    "ecg_experiments.data.images.ImageDataModule": "image",
}


def data_input_kind(target: str) -> str | None:
    """"signal" or "image": what the DataModule `target` gives a model."""
    if target in DATA_INPUT_KINDS:
        return DATA_INPUT_KINDS[target]
    return getattr(get_class(target), "input_kind", None)


def check_adversary(cfg: DictConfig, model_kind: str | None) -> None:
    """`adversary=records` needs beats cut from records (each beat's record is its class)
    and a 1D model whose feature layers train."""
    if model_kind != "signal" or "recipe" not in cfg.data:
        raise ConfigError(
            f"adversary=records tells training records apart from the network's features: it "
            f"needs beats cut from records (data=mitbih | physionet) and a 1D model, not "
            f"{group_choice('data')} with {group_choice('model')}")
    if not str((cfg.get("freeze") or {}).get("_target_", "")).endswith("NoFreezing"):
        raise ConfigError(f"adversary=records trains the feature layers against the record "
                          f"classifier; {group_choice('freeze')} keeps them fixed (use "
                          "freeze=none)")


def validate_train_config(cfg: DictConfig) -> None:
    """Fail before any work starts when groups disagree or options are out of range (fast:
    the train command runs it before the heavy libraries load)."""
    data_kind = data_input_kind(str(cfg.data._target_))
    model_kind = cfg.model.get("input_kind")
    if data_kind is not None and model_kind is not None and data_kind != model_kind:
        raise ConfigError(
            f"{group_choice('model')} expects {model_kind} input but {group_choice('data')} "
            f"provides {data_kind} input; choose a {model_kind} dataset or a {data_kind} model"
        )
    if cfg.data.get("rr_features") and not cfg.model.net.get("num_features"):
        raise ConfigError(
            f"data.rr_features=true but {group_choice('model')} takes no R-R features; use "
            "model=resnet1d or model=inception1d (num_features follows data.rr_features)"
        )
    if cfg.model.get("channels_last") and model_kind != "image":
        raise ConfigError(
            f"model.channels_last=true: {group_choice('model')} takes {model_kind} input "
            "([batch, channels, samples]); channels-last is a layout of 2D image models only")
    if cfg.get("adversary"):
        check_adversary(cfg, model_kind)
    t_max = (cfg.get("scheduler") or {}).get("T_max")
    if t_max is not None and int(t_max) <= 0:
        raise ConfigError(
            f"scheduler.T_max={t_max} (it follows trainer.max_epochs): the cosine schedule "
            "needs a positive length; a run bounded by trainer.max_time alone takes "
            "scheduler=none or an explicit scheduler.T_max")
    monitor = str(cfg.monitor.metric)
    if not monitor.startswith("val/"):
        raise ConfigError(
            f"monitor.metric={monitor!r}: checkpoints, early stopping and sweeps may only "
            "monitor validation metrics ('val/...'), never train or test ones"
        )
    optimized = cfg.get("optimized_metric")
    if optimized is not None and not str(optimized).startswith("val/"):
        raise ConfigError(
            f"optimized_metric={optimized!r}: sweeps may only optimise validation metrics "
            "('val/...'); the test split is for the final report"
        )
    for option in ("monitor.mode", "optimized_mode"):
        mode = OmegaConf.select(cfg, option)
        if option == "monitor.mode" or mode is not None:
            if mode not in ("min", "max"):
                raise ConfigError(f"{option}={mode!r}: expected 'min' or 'max'")
    _check_no_validation(cfg)
    _check_class_weight_power(cfg)
    lr = cfg.optimizer.get("lr")
    if lr is not None and not float(lr) > 0:
        raise ConfigError(f"optimizer.lr={lr}: the learning rate must be > 0")
    batch_size = cfg.data.get("batch_size")
    if batch_size is not None and int(batch_size) < 1:
        raise ConfigError(f"data.batch_size={batch_size}: the batch size must be >= 1")


def _check_no_validation(cfg: DictConfig) -> None:
    """data.val_fraction=0 (a final fit on the whole training pool for a fixed epoch count,
    e.g. the one CV chose) leaves nothing to monitor: refuse what would wait for it."""
    if cfg.data.get("val_fraction") is None or float(cfg.data.val_fraction) > 0 \
            or (cfg.get("cv") or {}).get("folds"):
        return  # (cross-validation draws its validation folds from the whole pool)
    callbacks = cfg.get("callbacks") or {}
    waiting = [f"callbacks.{name}" for name in ("model_checkpoint", "early_stopping")
               if (callbacks.get(name) or {}).get("monitor")]
    if "ReduceLROnPlateau" in str((cfg.get("scheduler") or {}).get("_target_", "")):
        waiting.append("scheduler=plateau")
    if waiting:
        raise ConfigError(
            f"data.val_fraction=0: no validation split, but {', '.join(waiting)} "
            f"monitor{'s' if len(waiting) == 1 else ''} {cfg.monitor.metric}; train a fixed "
            "epoch count with callbacks.model_checkpoint.monitor=null "
            "callbacks.early_stopping=null (the last epoch is tested)")


def _check_class_weight_power(cfg: DictConfig) -> None:
    loss = cfg.get("loss") or {}
    power = loss.get("class_weight_power", 1.0)
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not 0 <= power <= 1:
        raise ConfigError(f"loss.class_weight_power={power!r}: expected a number in [0, 1] "
                          "(1: balanced weights, 0.5: their square root, 0: none)")
    if float(power) != 1.0 and loss.get("class_weights") != "balanced" \
            and not (loss.get("class_weights") is None
                     and cfg.data.get("balance") == "class_weights"):
        raise ConfigError(f"loss.class_weight_power={power} tempers balanced class weights, "
                          f"but loss.class_weights={loss.get('class_weights')!r}; use "
                          "loss.class_weights=balanced (or data.balance=class_weights)")


def to_container(cfg: DictConfig) -> dict:
    """The resolved config as plain Python containers."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]


def build(node: DictConfig, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate`, re-raising a user error from the built class as itself
    (Hydra wraps every exception of a target in InstantiationException)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        user_error = user_error_in(err)
        if user_error is not None:
            raise user_error from err
        raise
