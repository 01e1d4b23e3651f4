"""ImageDataModule on small image folders made here: splits, given folders, duplicates,
corrupt files, grey → RGB, transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ecg_experiments.data.image_files import ImageAugment, image_transform
from ecg_experiments.data.images import ImageDataModule
from ecg_experiments.errors import ConfigError, DataError


def _write(path: Path, seed: int, size: int = 12, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)


def _folder(root: Path, counts: dict[str, int], ext: str = "png", start: int = 0) -> Path:
    seed = start
    for name, count in counts.items():
        for i in range(count):
            _write(root / name / f"r{i % 7}_{i:04d}.{ext}", seed)
            seed += 1
    return root


def _module(root: Path, **kwargs) -> ImageDataModule:
    options = {"image_size": 16, "mean": [0.5] * 3, "std": [0.5] * 3, "batch_size": 8,
               "seed": 3, **kwargs}
    return ImageDataModule(root=str(root), **options)


def test_stratified_split_ratios_saved_file_list_and_batches(tmp_path: Path) -> None:
    root = _folder(tmp_path / "images", {"normal": 100, "af": 40, "pvc": 60})
    dm = _module(root)
    dm.setup("fit")
    assert dm.class_names == ["af", "normal", "pvc"]  # sorted folder names
    sizes = {s: len(dm.datasets[s]) for s in ("train", "val", "test")}
    assert sizes == {"train": 140, "val": 30, "test": 30}
    # every class keeps its share in every split (stratified)
    for split, share in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        assert dm.class_counts(split).tolist() == [round(40 * share), round(100 * share),
                                                   round(60 * share)]
    frame = dm.split_frame
    assert len(frame) == 200 and set(frame["split"]) == {"train", "val", "test"}
    assert frame["path"].str.match(r"(af|normal|pvc)/r\d_\d{4}\.png").all()
    # the same seed gives the same file list; another seed another one
    again = _module(root)
    again.setup("fit")
    assert again.split_frame.equals(frame)
    other = _module(root, seed=4)
    other.setup("fit")
    assert not other.split_frame["split"].equals(frame["split"])
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.long
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0  # normalised with mean/std 0.5


def test_custom_ratios_and_class_names_fix_the_label_order(tmp_path: Path) -> None:
    root = _folder(tmp_path / "images", {"N": 40, "V": 40, "junk": 3})
    dm = _module(root, class_names=["V", "N"], val_fraction=0.25, test_fraction=0.25)
    dm.setup("fit")
    assert dm.class_names == ["V", "N"]
    assert dm.class_counts("train").tolist() == [20, 20]
    assert dm.class_counts("test").tolist() == [10, 10]
    labels = dm.split_frame.set_index("path")["label"]
    assert (labels[labels.index.str.startswith("V/")] == 0).all()


def test_given_train_val_test_folders_are_used_as_they_are(tmp_path: Path) -> None:
    root = tmp_path / "given"
    _folder(root / "train", {"a": 10, "b": 6})
    _folder(root / "val", {"a": 3, "b": 2}, start=100)
    _folder(root / "test", {"a": 4, "b": 5}, start=200)
    dm = _module(root)
    dm.setup("fit")
    assert dm.class_counts("train").tolist() == [10, 6]
    assert dm.class_counts("val").tolist() == [3, 2]
    assert dm.class_counts("test").tolist() == [4, 5]
    assert all(str(p).startswith(str(root / "test")) for p in dm.paths("test"))
    # without val/, validation is carved from train/ (stratified)
    (root / "val" / "a").rename(tmp_path / "moved_a")
    (root / "val" / "b").rename(tmp_path / "moved_b")
    (root / "val").rmdir()
    carved = _module(root, val_fraction=0.5)
    carved.setup("fit")
    assert carved.class_counts("train").tolist() == [5, 3]
    assert carved.class_counts("val").tolist() == [5, 3]
    assert carved.class_counts("test").tolist() == [4, 5]


def test_exact_duplicates_never_straddle_splits(tmp_path: Path) -> None:
    root = _folder(tmp_path / "images", {"a": 30, "b": 30})
    # 10 images copied (same bytes) under other names, some into the other class folder
    for i in range(10):
        source = root / "a" / f"r{i % 7}_{i:04d}.png"
        target = root / ("b" if i % 2 else "a") / f"copy_{i}.png"
        target.write_bytes(source.read_bytes())
    dm = _module(root)
    dm.setup("fit")
    assert dm.duplicate_images == 10
    frame = dm.split_frame
    per_hash = frame.groupby("sha256")["split"].nunique()
    assert (per_hash == 1).all()
    assert frame["duplicate"].sum() == 20
    assert dm.fingerprint()["duplicates"] == "10"


def test_record_grouped_split_keeps_records_apart(tmp_path: Path) -> None:
    root = _folder(tmp_path / "images", {"a": 70, "b": 70})  # records r0..r6 in names
    dm = _module(root, split="records", group_regex=r"^(r\d)_")
    dm.setup("fit")
    records = dm.split_frame["path"].str.extract(r"/(r\d)_")[0]
    assert (dm.split_frame.assign(record=records).groupby("record")["split"].nunique() == 1).all()
    with pytest.raises(ConfigError, match="data.split=records needs data.group_regex"):
        _module(root, split="records")
    bad = _module(root, split="records", group_regex=r"^(x\d)_")
    with pytest.raises(DataError, match=r"r0_0000\.png: data.group_regex='\^\(x\\\\d\)_' finds"):
        bad.setup("fit")


def test_corrupt_file_is_an_error_naming_it_or_skipped(tmp_path: Path) -> None:
    root = _folder(tmp_path / "images", {"a": 20, "b": 20})
    good = (root / "a" / "r0_0000.png").read_bytes()
    (root / "b" / "broken.png").write_bytes(good[: len(good) // 2])  # truncated PNG
    (root / "b" / "text.jpg").write_text("not an image")
    with pytest.raises(DataError, match=r"broken\.png: not a readable image .*\(and 1 more\)"):
        _module(root).setup("fit")
    dm = _module(root, skip_bad_images=True)
    dm.setup("fit")
    assert dm.skipped_images == 2
    assert len(dm.split_frame) == 40
    assert dm.fingerprint()["skipped_bad_images"] == "2"


def test_grey_and_bmp_jpeg_images_become_rgb_tensors(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for i in range(10):
        _write(root / "grey" / f"g{i}.png", i, mode="L")
        _write(root / "colour" / f"c{i}.bmp", 100 + i)
        _write(root / "colour" / f"j{i}.JPG", 200 + i)
    dm = _module(root, val_fraction=0.2, test_fraction=0.2)
    dm.setup("fit")
    assert dm.class_counts("train").sum() + dm.class_counts("val").sum() + \
        dm.class_counts("test").sum() == 30
    grey = next(i for i, p in enumerate(dm.paths("train")) if p.name.startswith("g"))
    x, _ = dm.datasets["train"][grey]
    assert x.shape == (3, 16, 16)
    # the loaded tensors (no augmentation outside training, images at their own size): a grey
    # file becomes three equal channels holding its normalised pixels, colour files keep
    # three different ones
    same_size = _module(root, val_fraction=0.2, test_fraction=0.2, image_size=12)
    same_size.setup("fit")
    for split in ("val", "test"):
        for i, path in enumerate(same_size.paths(split)):
            x_eval = same_size.datasets[split][i][0]
            assert x_eval.shape == (3, 12, 12)
            if path.name.startswith("g"):
                expected = (np.asarray(Image.open(path), dtype=np.float32) / 255 - 0.5) / 0.5
                for channel in x_eval:
                    np.testing.assert_allclose(channel.numpy(), expected, atol=1e-6)
            else:
                assert not torch.equal(x_eval[0], x_eval[1])
    assert {p.name[0] for s in ("val", "test") for p in same_size.paths(s)} >= {"g", "c", "j"}
    single = _module(root, channels=1, mean=[0.5], std=[0.5])
    single.setup("fit")
    assert single.datasets["train"][0][0].shape == (1, 16, 16)


def test_missing_and_empty_folders_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.root=.*nowhere: no such folder"):
        _module(tmp_path / "nowhere").setup("fit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no class folders"):
        _module(tmp_path / "empty").setup("fit")
    root = _folder(tmp_path / "images", {"a": 5})
    (root / "b").mkdir()
    (root / "b" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"images/b: class 'b' has no images"):
        _module(root).setup("fit")
    with pytest.raises(DataError, match=r"no folder for class\(es\) c"):
        _module(root, class_names=["a", "c"]).setup("fit")


def test_max_per_class_caps_each_class_seeded(tmp_path: Path) -> None:
    root = _folder(tmp_path / "images", {"a": 50, "b": 12})
    dm = _module(root, max_per_class=20)
    dm.setup("fit")
    total = sum(dm.class_counts(s) for s in ("train", "val", "test"))
    assert total.tolist() == [20, 12]


def test_train_transform_rotates_eval_transform_does_not() -> None:
    image = Image.fromarray(np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1)))
    plain = image_transform(32, [0.0], [1.0])
    assert torch.equal(plain(image), plain(image))
    torch.manual_seed(0)
    rotating = image_transform(32, [0.0], [1.0], ImageAugment(rotation=30.0))
    outputs = [rotating(image) for _ in range(6)]
    assert sum(not torch.equal(out, plain(image)) for out in outputs) >= 5
    assert len({out.sum().item() for out in outputs}) >= 5  # a new angle each time
    steps = [type(t).__name__ for t in
             image_transform(32, [0.0], [1.0], ImageAugment(
                 rotation=0, resized_crop_scale=[0.8, 1.0], translate=0.05,
                 brightness=0.2)).transforms]
    assert steps == ["ToImage", "Resize", "RandomResizedCrop", "RandomAffine", "ColorJitter",
                     "ToDtype", "Normalize"]


def test_split_frame_is_what_training_saves(tmp_path: Path, compose_train) -> None:
    """The run folder's split.csv (and its MLflow artifact) is the DataModule's split table:
    every file, its split, label, content hash and duplicate flag."""
    import mlflow

    from ecg_experiments.config import build
    from ecg_experiments.tasks.train import train
    from tests.conftest import FAST, all_runs

    root = _folder(tmp_path / "images", {"a": 20, "b": 20})
    cfg = compose_train(["data=image_folder", f"data.root={root}", "model=cnn2d",
                         "model.input_size=16", "data.num_workers=0", *FAST,
                         "trainer.max_epochs=1"])
    train(cfg)
    saved = pd.read_csv(Path(cfg.paths.run_dir) / "split.csv")
    dm = build(cfg.data)
    dm.setup("fit")
    pd.testing.assert_frame_equal(saved, dm.split_frame.reset_index(drop=True),
                                  check_dtype=False)
    [run] = all_runs(tmp_path)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert "split.csv" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert list(saved.columns) == ["index", "split", "path", "label", "sha256", "duplicate",
                                   "sample_id"]
    assert saved.groupby("split").size().to_dict() == {"test": 6, "train": 28, "val": 6}
