"""The data of a run as MLflow datasets (`mlflow.data`), so the MLflow UI's Dataset column and
filter tell runs on different data apart.

Each split a run uses is one dataset input with its context (training, validation, testing):
a name that says database or file, recipe and split kind and part (`mitdb kachuee random
test`), a digest of the identities of its samples (another split, recipe, database, record
list or image folder gives another digest; the same data gives the same), the source it was
read from, and its class counts as the profile. The samples themselves are not copied into
the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from mlflow.data.meta_dataset import MetaDataset

log = logging.getLogger(__name__)

CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}


class SplitDataset(MetaDataset):
    """A split's metadata with its class counts as the profile."""

    def __init__(self, source: Any, name: str, digest: str, profile: dict) -> None:
        self._profile = profile
        super().__init__(source=source, name=name, digest=digest)

    @property
    def profile(self) -> dict:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


def data_name(datamodule: Any, data_option: str) -> str:
    """What the data is, in a few words: databases, recipe and split kind for beats cut
    from records; the file for a beats CSV; the folder for images."""
    if hasattr(datamodule, "databases") and hasattr(datamodule, "recipe"):
        words = ["+".join(db.name for db in datamodule.databases), datamodule.recipe.name,
                 str(datamodule.split)]
        if getattr(datamodule, "folds", None):
            words.append(f"fold{datamodule.fold}of{datamodule.folds}")
        return " ".join(words)
    if getattr(datamodule, "train_file", None) is not None:
        return f"{data_option} {Path(datamodule.train_file).name}"
    where = getattr(datamodule, "_where", None) or getattr(datamodule, "root", None)
    if where is not None:
        return f"{data_option} {Path(str(where).split(' ')[0]).name}"
    return data_option


def data_source(datamodule: Any, split: str = "train") -> str:
    """Where the samples of `split` were read from: records folder(s), CSV file (a separate
    test file for the test part) or image folder."""
    if split == "test" and getattr(datamodule, "test_file", None) is not None:
        return str(Path(datamodule.test_file).resolve())
    dirs = getattr(datamodule, "dirs", None)
    if dirs:
        return ", ".join(str(Path(d).resolve()) for d in dirs.values())
    for attribute in ("train_file", "root"):
        value = getattr(datamodule, attribute, None)
        if value is not None:
            return str(Path(value).resolve())
    return str(getattr(datamodule, "_where", "") or type(datamodule).__name__)


# fingerprint entries that say where a copy is kept, not what the samples are
_PLACES = ("prepared", "fold")


def split_digest(datamodule: Any, split: str) -> str:
    """A digest of the samples of `split` as the model meets them: their identities and
    labels (order aside) where the data keeps a split table, else its class counts; with
    the data's fingerprint (file and manifest hashes: recipe settings, leads, rendering) and
    the input description (length, rate, features, image size)."""
    frame = datamodule.sample_frame(split)
    if frame is not None and "sample_id" in frame:
        labels = datamodule.labels(split)
        samples = sorted(f"{i}:{k}" for i, k in zip(frame["sample_id"], labels, strict=True))
    else:
        samples = [str(datamodule.class_counts(split).tolist())]
    fingerprint = {k: v for k, v in datamodule.fingerprint().items()
                   if k.rsplit(".", 1)[-1] not in _PLACES}
    try:
        described = datamodule.input_spec().describe()
    except (NotImplementedError, AttributeError):
        described = ""
    text = json.dumps({"fingerprint": fingerprint, "input": described, "split": split},
                      sort_keys=True) + "\n" + "\n".join(samples)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def split_dataset(datamodule: Any, split: str, data_option: str) -> SplitDataset:
    """The MLflow dataset of one split of a set-up DataModule."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source

    counts = datamodule.class_counts(split)
    profile = {"samples": int(counts.sum()),
               "classes": {name: int(n) for name, n in zip(datamodule.class_names, counts,
                                                           strict=True)}}
    with warnings.catch_warnings():
        # MLflow registers its local-file source twice and warns that a path "can be
        # interpreted in multiple ways: LocalArtifactDatasetSource, LocalArtifactDatasetSource"
        warnings.filterwarnings("ignore", message="The specified dataset source can be")
        source = resolve_dataset_source(data_source(datamodule, split))
    name = data_name(datamodule, data_option)
    if split == "test" and getattr(datamodule, "test_file", None) is not None:
        name = f"{data_option} {Path(datamodule.test_file).name}"
    return SplitDataset(source, f"{name} {split}", split_digest(datamodule, split), profile)


def log_datasets(client: Any, run_id: str, datamodule: Any, data_option: str,
                 contexts: dict[str, str]) -> None:
    """Log the splits of `contexts` ({split: context}) that hold samples as dataset inputs
    of run `run_id`."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = []
    try:
        for split, context in contexts.items():
            if (split not in getattr(datamodule, "datasets", {})
                    or not len(datamodule.labels(split))):
                continue
            dataset = split_dataset(datamodule, split, data_option)
            inputs.append(DatasetInput(dataset._to_mlflow_entity(),
                                       [InputTag(MLFLOW_DATASET_CONTEXT, context)]))
        if inputs:
            client.log_inputs(run_id, datasets=inputs)
    except Exception as err:  # the run's own work goes on; the log says what is missing
        log.warning("the run's datasets were not logged to MLflow (%s: %s)",
                    type(err).__name__, err)


def log_children_datasets(client: Any, parent_id: str, child_ids: list[str | None]) -> None:
    """A parent run (cross-validation, seed repeat, sweep) lists the dataset inputs of its
    children, each (name, digest, context) once: the data it summarises."""
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    seen, inputs = set(), []
    for run_id in filter(None, child_ids):
        for item in client.get_run(run_id).inputs.dataset_inputs:
            context = {tag.key: tag.value for tag in item.tags}.get(MLFLOW_DATASET_CONTEXT)
            key = (item.dataset.name, item.dataset.digest, context)
            if key not in seen:
                seen.add(key)
                inputs.append(item)
    if inputs:
        client.log_inputs(parent_id, datasets=inputs)
