"""Image classification data: class folders of PNG/JPEG/BMP files and their DataModule."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision.transforms import v2

from ecg_experiments.data.base import ClassDataModule
from ecg_experiments.data.identity import ALSO, rendered_beat_id
from ecg_experiments.data.image_files import (
    IMAGE_EXTENSIONS,
    ImageAugment,
    ImageFiles,
    check_image_file,
    image_files,
    image_transform,
    load_image,
)
from ecg_experiments.data.image_splits import (
    GIVEN,
    assign_image_splits,
    duplicate_groups,
    record_ids,
)
from ecg_experiments.data.render import (
    BeatRows,
    RenderedBeatImages,
    RenderedBeats,
    is_rendered_folder,
)
from ecg_experiments.data.splits import cv_fold, split_table
from ecg_experiments.errors import ConfigError, DataError
from ecg_experiments.inputs import InputSpec

log = logging.getLogger(__name__)

SPLITS = ("auto", "stratified", "records", "given")


class ImageDataModule(ClassDataModule):
    """Images in class folders (`data=image_folder`, and the rendered beat-image datasets).

    `root` holds one folder per class, or `train/`, `val/`, `test/` each holding the class
    folders (used as given; with no `val/`, validation is carved from `train/`). Splits
    (`split`): auto (given when `root/train` exists, else stratified), stratified (seeded,
    `val_fraction` and `test_fraction` of the images), records (no group in two splits; the
    group is the first capture of `group_regex` in the file name, e.g. the MIT-BIH record),
    given. Exact duplicates (same SHA-256) always share a split; in given splits a copy of an
    image of an earlier split (train, val, test) is left out of the later one, with a
    warning. The split is saved as a file list (`split_frame`, written to the run folder and
    MLflow).

    Class names are the sorted folder names unless `class_names` lists them (in label
    order). A file that does not decode is a DataError naming it, or is skipped with a
    warning when `skip_bad_images`. With `source` (a RenderedBeats) and no root, the images
    are rendered from MIT-BIH in `prepare_data` when missing, or, with `source.on_the_fly`,
    each time a batch is read (no files; the split, duplicates and records work as for the
    files, whose names the images would have).
    """

    input_kind = "image"
    needs_groups_for_folds = True  # cross-validation folds are made of whole records

    def __init__(
        self,
        root: str | None = None,
        class_names: Sequence[str] | None = None,
        split: str = "auto",
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        group_regex: str | None = None,
        image_size: int = 224,
        channels: int = 3,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        augment: ImageAugment | None = None,
        max_per_class: int | None = None,
        skip_bad_images: bool = False,
        source: RenderedBeats | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
        balance: str = "none",
        balance_to: int | None = None,
        folds: int | None = None,
        fold: int | None = None,
    ) -> None:
        super().__init__(class_names, batch_size, eval_batch_size, num_workers, seed, balance,
                         balance_to)
        if folds is not None and not group_regex:
            raise ConfigError("cv.folds / data.folds need data.group_regex (the record id in "
                              "each file name) so that a record stays within one fold")
        if (folds is None) != (fold is None) or (folds is not None and not 0 <= fold < folds):
            raise ConfigError(f"data.folds={folds}, data.fold={fold}: expected both or "
                              "neither, with 0 <= fold < folds")
        self.folds = None if folds is None else int(folds)
        self.fold = None if fold is None else int(fold)
        if split not in SPLITS:
            raise ConfigError(f"data.split={split!r}: expected one of {', '.join(SPLITS)}")
        if split == "records" and not group_regex:
            raise ConfigError("data.split=records needs data.group_regex (the record id in "
                              "each file name, e.g. '^([^_]+)_')")
        if root is None and source is None:
            raise ConfigError("data.root: expected the folder of class folders (data.root=...)")
        if channels not in (1, 3):
            raise ConfigError(f"data.channels={channels}: expected 1 (grey) or 3 (RGB)")
        if len(mean) != channels or len(std) != channels:
            raise ConfigError(f"data.mean / data.std: expected {channels} values each")
        self.root = Path(root) if root is not None else None
        self.split = split
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.group_regex = re.compile(group_regex) if group_regex else None
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.mean, self.std = list(mean), list(std)
        self.augment = augment
        self.max_per_class = None if max_per_class is None else int(max_per_class)
        self.skip_bad_images = bool(skip_bad_images)
        self.source = source
        self.files: pd.DataFrame | None = None
        self.cross_split_duplicates = 0
        self.rendered: BeatRows | None = None  # the beats drawn on the fly, if so
        self.parts: dict[str, np.ndarray] = {}  # rows of `files` per split

    @property
    def on_the_fly(self) -> bool:
        return self.root is None and self.source is not None and self.source.on_the_fly

    # -- discovery ------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.on_the_fly:
            if self.rendered is None:
                self.rendered = self.source.rows()
        elif self.root is None and self.source is not None:
            self.root = self.source.ensure()

    @property
    def prepared_path(self) -> Path | None:
        if self.on_the_fly:  # the beats the images are drawn from
            return getattr(self.source.beats, "prepared_path", None)
        return self.root

    @property
    def _where(self) -> str:
        """The images' origin, for messages: the folder, or the beats drawn on the fly."""
        if self.on_the_fly:
            return f"{self.source.renderer.name} images drawn from {self.prepared_path}"
        return str(self.root)

    def _class_folders(self, folder: Path) -> dict[str, Path]:
        found = {p.name: p for p in sorted(folder.iterdir()) if p.is_dir()}
        if not self.class_names:
            if not found:
                raise DataError(f"{folder}: no class folders (expected <class>/<image files>)")
            return found
        missing = [name for name in self.class_names if name not in found]
        if missing:
            raise DataError(
                f"{folder}: no folder for class(es) {', '.join(missing)} (data.class_names="
                f"{self.class_names}; found {', '.join(found) or 'no folders'})"
            )
        ignored = sorted(set(found) - set(self.class_names))
        if ignored:
            log.warning("%s: folders not in data.class_names are ignored: %s", folder,
                        ", ".join(ignored))
        return {name: found[name] for name in self.class_names}

    def _rendered_frame(self) -> pd.DataFrame:
        """The rows of `_scan` for images drawn on the fly: the path each would have in a
        rendered folder (`<class>/<name>`), and the SHA-256 of its beat (the same beat, the
        same image)."""
        rows = self.rendered
        assert rows is not None
        names = list(self.source.beats.class_names)
        if not self.class_names:
            self.class_names = names
        if list(self.class_names) != names:
            raise ConfigError(f"data.class_names={list(self.class_names)}: the beats drawn on the "
                              f"fly have the classes {names}")
        paths = [Path(names[label]) / name
                 for label, name in zip(rows.labels, rows.names, strict=True)]
        digests = [hashlib.sha256(beat.tobytes()).hexdigest() for beat in rows.signals]
        frame = pd.DataFrame({"path": paths, "label": rows.labels, "given": None,
                              "sha256": digests, "row": np.arange(len(paths)),
                              ALSO: [rendered_beat_id(name) for name in rows.names]})
        self.skipped_images = 0
        return frame

    def _scan(self) -> pd.DataFrame:
        """One row per image: path, label, given split (if any), SHA-256."""
        if self.on_the_fly:
            return self._cap(self._rendered_frame())
        root = self.root
        if root is None or not root.is_dir():
            raise DataError(f"data.root={root}: no such folder (expected class folders of "
                            f"{', '.join(IMAGE_EXTENSIONS)} images)")
        given = root / "train"
        use_given = self.split == "given" or (self.split == "auto" and given.is_dir())
        if self.split == "given" and not given.is_dir():
            raise DataError(f"{root}: data.split=given needs {given}/<class>/ folders")
        parts = [p for p in GIVEN if (root / p).is_dir()] if use_given else [None]
        if use_given and "test" not in parts:
            raise DataError(f"{root}: given splits need train/ and test/ folders (val/ is "
                            "optional)")
        top = root / parts[0] if use_given else root
        folders = self._class_folders(top)
        if not self.class_names:
            self.class_names = list(folders)
        rows = []
        for part in parts:
            base = root / part if part else root
            for label, name in enumerate(self.class_names):
                folder = base / name
                files = image_files(folder) if folder.is_dir() else []
                if not files and (part in (None, "train")):
                    raise DataError(
                        f"{folder}: class {name!r} has no images (expected "
                        f"{', '.join(IMAGE_EXTENSIONS)} files)"
                    )
                rows += [(path, label, part) for path in files]
        frame = pd.DataFrame(rows, columns=["path", "label", "given"])
        if is_rendered_folder(root):  # its files are beats of records: say which
            frame[ALSO] = [rendered_beat_id(Path(path).name) for path in frame["path"]]
        with ThreadPoolExecutor(max_workers=4) as pool:
            checked = list(pool.map(check_image_file, frame["path"]))
        frame["sha256"] = [digest for digest, _ in checked]
        errors = [(path, error) for path, (_, error) in zip(frame["path"], checked, strict=True)
                  if error]
        if errors:
            if not self.skip_bad_images:
                path, error = errors[0]
                more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
                raise DataError(f"{path}: not a readable image ({error}){more}; remove it or "
                                "set data.skip_bad_images=true")
            bad = {str(path) for path, _ in errors}
            log.warning("skipped %d unreadable image(s), e.g. %s", len(errors), errors[0][0])
            frame = frame[~frame["path"].astype(str).isin(bad)].reset_index(drop=True)
        self.skipped_images = len(errors)
        return self._cap(frame)

    def _cap(self, frame: pd.DataFrame) -> pd.DataFrame:
        """At most `max_per_class` images per class (and given split), seeded."""
        if self.max_per_class is None:
            return frame
        keys = frame["given"].fillna("") + "/" + frame["label"].astype(str)
        keep = (frame.groupby(keys, group_keys=False)
                .apply(lambda g: g.sample(min(len(g), self.max_per_class),
                                          random_state=self.seed)).index)
        return frame.loc[np.sort(keep)].reset_index(drop=True)

    # -- splitting (data/image_splits.py) ------------------------------------------------
    def _record_of(self, paths: pd.Series) -> np.ndarray:
        assert self.group_regex is not None
        return record_ids(paths, self.group_regex)

    def _assign(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Row indices per split; duplicates (and records, if grouped) never straddle."""
        fractions = {"train": 1 - self.val_fraction - self.test_fraction,
                     "val": self.val_fraction, "test": self.test_fraction}
        records = (self._record_of(frame["path"]) if self.split == "records"
                   and not frame["given"].notna().all() else None)
        parts, self.cross_split_duplicates = assign_image_splits(
            frame, fractions, self.seed, self.class_names, self._where, records)
        return parts

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.prepare_data()
        frame = self._scan()
        duplicated = frame["sha256"].duplicated(keep=False)
        self.duplicate_images = int(frame["sha256"].duplicated().sum())
        if self.duplicate_images:
            log.warning("%d image(s) are exact duplicates of another; each set of duplicates is "
                        "kept in one split", self.duplicate_images)
        parts = self._assign(frame)
        records = self._record_of(frame["path"]) if self.group_regex is not None else None
        if self.folds is not None:  # fold `fold` of the training pool, by record
            groups = duplicate_groups(frame["sha256"].to_numpy(), records)
            pool = np.sort(np.concatenate([parts["train"], parts["val"]]))
            held = cv_fold(groups[pool], frame["label"].to_numpy()[pool], self.folds,
                           self.seed, f"{self._where} (training pool)") == self.fold
            parts = {"train": pool[~held], "val": pool[held], "test": parts["test"]}
        eval_transform = image_transform(self.image_size, self.mean, self.std)
        train_transform = image_transform(self.image_size, self.mean, self.std, self.augment)
        self.parts = parts
        for name, rows in parts.items():
            labels = frame["label"].to_numpy()[rows]
            self.split_labels[name] = labels.astype(np.int64)
            transform = train_transform if name == "train" else eval_transform
            if self.on_the_fly:
                self.datasets[name] = self._drawn(frame["row"].to_numpy()[rows], transform)
            else:
                self.datasets[name] = ImageFiles(frame["path"].to_numpy()[rows], labels,
                                                 transform, self.channels)
        relative = [str(p if self.on_the_fly else Path(p).relative_to(self.root))
                    for p in frame["path"]]
        columns = {} if records is None else {"record": records}
        if ALSO in frame:
            columns[ALSO] = frame[ALSO].to_numpy()
        self.split_frame = split_table(parts, path=np.array(relative),
                                       label=frame["label"].to_numpy(),
                                       sha256=frame["sha256"].to_numpy(),
                                       duplicate=duplicated.to_numpy(), **columns)
        # the identity of each image (evaluation/seen.py): its content, wherever it lies
        self.split_frame["sample_id"] = "sha256:" + self.split_frame["sha256"].astype(str)
        self.files = frame
        self._balance_training()
        log.info("images per split: %s", {n: len(d) for n, d in self.datasets.items()})

    def _drawn(self, rows: np.ndarray, transform: v2.Compose) -> RenderedBeatImages:
        """The beats `rows` of `self.rendered`, drawn on the fly."""
        drawn = self.rendered
        assert drawn is not None and self.source is not None
        return RenderedBeatImages(drawn.signals[rows], drawn.labels[rows], self.source.renderer,
                                  drawn.rate, int(self.source.image_size), transform,
                                  self.channels)

    def _rows(self, split: str) -> np.ndarray:
        """Rows of `self.files` in one split (after setup and balancing)."""
        rows = self.parts[split]
        dataset = self.datasets[split]
        return rows[dataset.indices] if isinstance(dataset, Subset) else rows

    def evaluation_dataset(self, split: str) -> Dataset:
        """The split's images with the evaluation transform (the training split's dataset
        rotates and crops at random)."""
        dataset = self.datasets[split]
        if split != "train":
            return dataset
        transform = image_transform(self.image_size, self.mean, self.std)
        if self.on_the_fly:
            return self._drawn(self.files["row"].to_numpy()[self._rows(split)], transform)
        return ImageFiles(self.paths(split), self.split_labels[split], transform, self.channels)

    def image(self, split: str, index: int) -> Image.Image:
        """Image `index` of a split as decoded (files) or drawn (on the fly), untransformed."""
        dataset = self.datasets[split]
        if isinstance(dataset, Subset):
            dataset, index = dataset.dataset, dataset.indices[index]
        if isinstance(dataset, RenderedBeatImages):
            return dataset.image(index)
        return load_image(dataset.paths[index], self.channels)

    def input_spec(self) -> InputSpec:
        return InputSpec("image", tuple(self.class_names), image_size=self.image_size,
                         channels=self.channels, mean=tuple(self.mean), std=tuple(self.std))

    def training_augmentation(self) -> str | None:
        steps = self.augment.transforms(self.image_size) if self.augment is not None else []
        if not steps:
            return None
        return f"data.augment ({', '.join(type(step).__name__ for step in steps)})"

    @property
    def random_per_sample(self) -> bool:  # type: ignore[override]
        """Augmented training images are drawn per sample in the workers (SeededSamples)."""
        return self.augment is not None

    def paths(self, split: str) -> list[Path]:
        """The image files of one split (after setup and balancing); for images drawn on the
        fly, the paths they would have in a rendered folder."""
        if self.on_the_fly:
            return [Path(p) for p in self.files["path"].to_numpy()[self._rows(split)]]
        dataset = self.datasets[split]
        if isinstance(dataset, Subset):
            return [dataset.dataset.paths[i] for i in dataset.indices]
        return list(dataset.paths)

    def fingerprint(self) -> dict[str, str]:
        info = {"root": self._where if self.on_the_fly else str(self.root)}
        if self.files is not None:
            listing = "\n".join(sorted(self.files["sha256"]))
            info["images.sha256"] = hashlib.sha256(listing.encode()).hexdigest()
            info["images"] = str(len(self.files))
            info["duplicates"] = str(self.duplicate_images)
            info["cross_split_duplicates_left_out"] = str(self.cross_split_duplicates)
            info["skipped_bad_images"] = str(self.skipped_images)
        return info
