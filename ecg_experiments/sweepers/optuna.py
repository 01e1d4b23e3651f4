"""A Hydra sweeper on Optuna's current ask/tell API (`hydra/sweeper=optuna`).

The released hydra-optuna-sweeper pins optuna<3, which cannot persist studies beside
SQLAlchemy 2 (required by MLflow). This sweeper keeps that plugin's config keys (sampler,
direction, study_name, storage, n_trials, n_jobs, max_failure_rate, params in Hydra's
override grammar: choice, range, interval, tag(log|int, ...)) and adds:

- resumable studies: with a persistent `storage`, `n_trials` is the study's total; a rerun
  runs only the missing trials, and trials left RUNNING by an interrupted sweep are marked
  failed and their parameters tried again;
- one configuration per study: a study records the digest of the configuration its trials
  share (everything but the swept parameters and Hydra's own settings); a rerun under another
  configuration (another default, another fixed override) is refused before any trial, so
  trials of two configurations never meet in one study and its best parameters;
- pruning: each job gets `optuna_trial.*` overrides so its training can report validation
  metrics per epoch and stop early when the `pruner` says so (needs a persistent storage).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from ecg_experiments.errors import ConfigError

log = logging.getLogger(__name__)

CONFIGURATION_ATTR = "ecg_configuration"


def configuration_digest(config: DictConfig, fixed: list[str],
                         swept: Iterable[str] = ()) -> str:
    """What a study's trials share: the task config (unresolved, without Hydra's settings,
    so n_trials or the sweep folder may change, and without the swept keys, whose default
    each trial replaces) and the fixed command-line overrides."""
    task = OmegaConf.to_container(config, resolve=False)
    task.pop("hydra", None)
    shared_config = OmegaConf.create(task)
    for key in swept:
        parent, _, leaf = key.lstrip("+~").rpartition(".")
        node = OmegaConf.select(shared_config, parent) if parent else shared_config
        if isinstance(node, DictConfig) and leaf in node:
            del node[leaf]
    shared = sorted(f for f in fixed if not f.lstrip("+~").startswith("hydra"))
    text = OmegaConf.to_yaml(shared_config) + "\n".join(shared)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_study_configuration(study: optuna.Study, digest: str, storage: str | None) -> None:
    """Record `digest` on a new study; refuse one whose trials ran another configuration."""
    recorded = study.user_attrs.get(CONFIGURATION_ATTR)
    if recorded == digest:
        return
    if recorded is not None:
        raise ConfigError(
            f"Optuna study {study.study_name!r} in {storage}: its {len(study.trials)} trial(s) "
            f"ran another configuration (digest {recorded}, this one {digest}: a default or a "
            "fixed override changed); its best parameters would mix both. Name a new study "
            "(hydra.sweeper.study_name=...) or delete this one")
    if study.trials:
        log.warning("Optuna study %s holds %d trial(s) from before studies recorded their "
                    "configuration: continuing it assumes they ran this one (a default may "
                    "have changed since; hydra.sweeper.study_name=... starts afresh)",
                    study.study_name, len(study.trials))
    study.set_user_attr(CONFIGURATION_ATTR, digest)


def distribution_from_override(override: Override) -> BaseDistribution:
    """Optuna distribution for a sweep override: choice, range or interval (tag log / int)."""
    value = override.value()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        return CategoricalDistribution(list(override.sweep_string_iterator()))
    if isinstance(value, RangeSweep):
        step = value.step if value.step is not None else 1
        if any(isinstance(v, float) for v in (value.start, value.stop, step)):
            # Hydra's range excludes its stop; Optuna's high is inclusive
            return FloatDistribution(value.start, value.stop - step, step=step)
        return IntDistribution(int(value.start), int(value.stop) - int(step), step=int(step))
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if "int" in value.tags:
            return IntDistribution(int(value.start), int(value.end), log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"{override.input_line}: not a choice, range or interval sweep")


def build_from_config(conf: Any, seed_offset: int = 0) -> Any:
    """Build a sampler/pruner from its config (seed shifted by `seed_offset`)."""
    if not isinstance(conf, (dict, DictConfig)):
        return conf
    if not conf:
        return None
    conf = OmegaConf.create(OmegaConf.to_container(conf, resolve=True) if isinstance(
        conf, DictConfig) else conf)
    if seed_offset and conf.get("seed") is not None:
        return instantiate(conf, seed=int(conf.seed) + seed_offset)
    return instantiate(conf)


class OptunaSweeperBase(Sweeper):
    """Hydra Sweeper that asks Optuna for parameters and tells it each job's return value."""

    def __init__(self, sampler: Any, pruner: Any, direction: Any, storage: Any,
                 study_name: str | None, n_trials: int, n_jobs: int, max_failure_rate: float,
                 params: dict[str, str] | None) -> None:
        self.sampler_conf = sampler
        self.pruner_conf = pruner
        self.direction = direction
        self.storage = storage
        self.study_name = study_name
        self.n_trials = int(n_trials)
        self.n_jobs = max(int(n_jobs), 1)
        self.max_failure_rate = float(max_failure_rate)
        self.params = dict(params or {})
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.sweep_dir = Path(config.hydra.sweep.dir)

    def _search_space(self, arguments: list[str]) -> tuple[dict[str, BaseDistribution],
                                                            list[str]]:
        parser = OverridesParser.create()
        from_config = parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()])
        from_cli = parser.parse_overrides(arguments)
        space: dict[str, BaseDistribution] = {}
        fixed: dict[str, str] = {}
        for override in [*from_config, *from_cli]:  # the command line wins
            key = override.get_key_element()
            space.pop(key, None)
            fixed.pop(key, None)
            if override.is_sweep_override():
                space[key] = distribution_from_override(override)
            else:
                fixed[key] = override.input_line
        return space, list(fixed.values())

    def _study(self) -> optuna.Study:
        directions = self.direction if isinstance(self.direction, (list, tuple)) or (
            OmegaConf.is_list(self.direction)) else [self.direction]
        study = optuna.create_study(
            study_name=self.study_name,
            storage=self.storage,
            pruner=build_from_config(self.pruner_conf),
            directions=[str(d) for d in directions],
            load_if_exists=True,
        )
        # A seeded sampler restarted on a resumed study would propose the same points again:
        # offset its seed by the trials the study already has (still reproducible).
        study.sampler = build_from_config(self.sampler_conf, seed_offset=len(study.trials)) or (
            optuna.samplers.TPESampler())
        return study

    def _resume(self, study: optuna.Study) -> int:
        """Fail and re-enqueue trials an interrupted sweep left running; count finished ones."""
        stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for trial in stale:
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            study.enqueue_trial(trial.params, skip_if_exists=False)
        if stale:
            log.warning("resuming study %s: %d interrupted trial(s) will run again",
                        study.study_name, len(stale))
        stale_ids = {t._trial_id for t in stale}
        return sum(1 for t in study.get_trials(deepcopy=False)
                   if t.state.is_finished() and t._trial_id not in stale_ids)

    def sweep(self, arguments: list[str]) -> None:
        space, fixed = self._search_space(arguments)
        study = self._study()
        check_study_configuration(study, configuration_digest(self.config, fixed, space),
                                  self.storage)
        done = self._resume(study)
        remaining = max(self.n_trials - done, 0)
        log.info("Optuna study %s: %d trial(s) done, %d to run (n_trials=%d), space: %s",
                 study.study_name, done, remaining, self.n_trials,
                 {k: repr(v) for k, v in space.items()})
        failures = launched = 0
        while remaining > 0:
            batch = [study.ask(space) for _ in range(min(self.n_jobs, remaining))]
            overrides = [self._overrides(study, trial, fixed) for trial in batch]
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            for trial, result in zip(batch, returns, strict=True):
                failures += self._tell(study, trial, result)
            launched += len(batch)
            remaining -= len(batch)
            if failures / launched > self.max_failure_rate:
                raise RuntimeError(
                    f"{failures} of {launched} trials failed, above max_failure_rate="
                    f"{self.max_failure_rate}; see the job logs in {self.sweep_dir}"
                )
        self._write_results(study)

    def _overrides(self, study: optuna.Study, trial: optuna.Trial, fixed: list[str]) -> list[str]:
        params = [f"{key}={value}" for key, value in trial.params.items()]
        extra = []
        if self.storage:
            extra = [f"++optuna_trial.study_name={study.study_name}",
                     f"++optuna_trial.storage='{self.storage}'",
                     f"++optuna_trial.number={trial.number}"]
        return [*fixed, *params, *extra]

    def _tell(self, study: optuna.Study, trial: optuna.Trial, result: Any) -> int:
        from hydra.core.utils import JobStatus

        if result.status != JobStatus.COMPLETED:
            log.warning("trial %d failed: %s", trial.number, result._return_value)
            study.tell(trial, state=TrialState.FAIL)
            return 1
        stored = study._storage.get_trial(trial._trial_id)
        if stored.user_attrs.get("pruned"):
            study.tell(trial, state=TrialState.PRUNED)
            return 0
        value = result.return_value
        if value is None:
            log.warning("trial %d returned no value (is optimized_metric logged?)", trial.number)
            study.tell(trial, state=TrialState.FAIL)
            return 1
        study.tell(trial, list(value) if isinstance(value, (list, tuple)) else float(value))
        return 0

    def _write_results(self, study: optuna.Study) -> None:
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name,
                                   "n_trials": len(study.trials), "n_complete": len(completed)}
        if len(study.directions) == 1 and completed:
            results["best_params"] = study.best_params
            results["best_value"] = study.best_value
            results["best_trial"] = study.best_trial.number
        elif completed:
            results["solutions"] = [{"params": t.params, "values": t.values}
                                    for t in study.best_trials]
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), self.sweep_dir / "optimization_results.yaml")
        log.info("best: %s", {k: v for k, v in results.items() if k.startswith("best")})
