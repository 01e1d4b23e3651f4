"""Class balancing, signal augmentations, noise robustness and fine-tuning from earlier runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ecg_experiments.data.augment import SignalAugment, add_noise_at_snr, snr_db
from ecg_experiments.data.beats import BeatsDataModule, read_beats_csv
from ecg_experiments.errors import ConfigError, DataError
from ecg_experiments.evaluation.robustness import noise_robustness
from ecg_experiments.models.checkpoint import init_from
from ecg_experiments.models.cnn1d import KachueeCNN1d
from tests.conftest import shared_path


@pytest.fixture(scope="module")
def beats() -> torch.Tensor:
    """256 real public beats [n, 1, 187]."""
    x, _ = read_beats_csv(shared_path("kachuee_samples", "mitbih_train_sample.csv"))
    return torch.from_numpy(x[:256]).unsqueeze(1)


@pytest.fixture
def imbalanced_csv(tmp_path: Path) -> Path:
    """Real rows with 100 N, 40 S, 20 V, 10 F, 60 Q."""
    from ecg_experiments.data.beats import write_beats_csv

    x, y = read_beats_csv(shared_path("kachuee_samples", "mitbih_train_sample.csv"))
    keep = np.concatenate([np.flatnonzero(y == k)[:n] for k, n in enumerate([100, 40, 20, 10, 60])])
    write_beats_csv(tmp_path / "imbalanced.csv", x[keep], y[keep])
    return tmp_path / "imbalanced.csv"


def _module(path: Path, **kwargs) -> BeatsDataModule:
    dm = BeatsDataModule(str(path), val_fraction=0.2, test_fraction=0.2, seed=1, **kwargs)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("mode,expected", [
    ("none", [60, 24, 12, 6, 36]),
    ("undersample", [6, 6, 6, 6, 6]),
    ("resample", [50, 50, 50, 50, 50]),
    ("class_weights", [60, 24, 12, 6, 36]),
    ("sampler", [60, 24, 12, 6, 36]),
])
def test_balancing_changes_the_training_split_only(imbalanced_csv, mode, expected) -> None:
    plain = _module(imbalanced_csv)
    dm = _module(imbalanced_csv, balance=mode, balance_to=50)
    assert dm.class_counts("train").tolist() == expected
    for split in ("val", "test"):
        assert dm.class_counts(split).tolist() == plain.class_counts(split).tolist()
        assert torch.equal(dm.signals(split), plain.signals(split))
    if mode == "resample":  # 60 N rows drawn down without repeats, 6 F rows drawn up with
        train = dm.signals("train").numpy()
        labels = dm.labels("train")
        assert len(np.unique(train[labels == 0], axis=0)) == 50
        assert len(np.unique(train[labels == 3], axis=0)) == 6
    if mode == "sampler":  # drawn classes come out about equally often, anew each epoch
        loader = dm.train_dataloader()
        epochs = []
        for epoch in range(10):
            loader.sampler.set_epoch(epoch)
            epochs.append(np.concatenate([y.numpy() for _, y in loader]))
        drawn = np.concatenate(epochs)
        shares = np.bincount(drawn, minlength=5) / len(drawn)
        assert np.all(np.abs(shares - 0.2) < 0.05), shares
        assert not np.array_equal(epochs[0], epochs[1])
        loader.sampler.set_epoch(0)  # an epoch's draw depends on the epoch alone (resume)
        assert np.array_equal(np.concatenate([y.numpy() for _, y in loader]), epochs[0])
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (1, 187)


def test_balance_options_are_checked(imbalanced_csv) -> None:
    with pytest.raises(ConfigError, match="data.balance='smote'"):
        _module(imbalanced_csv, balance="smote")
    with pytest.raises(ConfigError, match="data.balance=resample needs data.balance_to"):
        _module(imbalanced_csv, balance="resample")


def test_class_weights_mode_weights_the_loss(compose_train, imbalanced_csv) -> None:
    from ecg_experiments.runs.fit_setup import class_weights as _class_weights

    cfg = compose_train(["data=beats_csv", f"data.train_file={imbalanced_csv}",
                         "data.balance=class_weights"])
    dm = _module(imbalanced_csv, balance="class_weights")
    weights = np.array(_class_weights(cfg, dm))
    counts = dm.class_counts("train")
    assert np.allclose(weights, counts.sum() / (5 * counts))


@pytest.mark.parametrize("kind", ["gaussian", "baseline", "powerline"])
@pytest.mark.parametrize("target", [24.0, 12.0, 6.0, 0.0])
def test_noise_hits_its_target_snr(beats, kind, target) -> None:
    noisy = add_noise_at_snr(beats, target, kind, seed=3)
    measured = snr_db(beats, noisy)
    assert torch.all((measured - target).abs() < 1.0), measured
    assert not torch.equal(noisy, beats)


def test_real_noise_records_hit_their_target_snr(beats) -> None:
    nstdb = shared_path("nstdb")
    records = [str(nstdb / "bw"), str(nstdb / "ma")]
    for target in (18.0, 6.0):
        noisy = add_noise_at_snr(beats, target, "records", records, rate=125.0, seed=1)
        assert torch.all((snr_db(beats, noisy) - target).abs() < 1.0)
    # baseline wander is slow: most of its power is below 1 Hz once resampled to 125 Hz
    augment = SignalAugment(records_p=1.0, records_snr_db=[6, 6], noise_records=records[:1])
    noise = augment.record_noise(torch.Size([64, 1, 2048]))[:, 0].numpy()
    spectrum = np.abs(np.fft.rfft(noise - noise.mean(axis=1, keepdims=True), axis=1)) ** 2
    freqs = np.fft.rfftfreq(2048, 1 / 125.0)
    assert spectrum[:, freqs < 1.0].sum() > 0.5 * spectrum.sum()
    with pytest.raises(DataError, match="no WFDB noise record"):
        add_noise_at_snr(beats, 6.0, "records", ["/no/such/em"])


def test_augment_steps_probabilities_and_strengths(beats) -> None:
    x = beats[:200]
    never = SignalAugment(seed=0)
    assert torch.equal(never(x), x)
    scaled = SignalAugment(scale_p=1.0, scale_range=[2.0, 2.0], seed=0)(x)
    assert torch.allclose(scaled, 2 * x)
    shifted = SignalAugment(shift_p=1.0, max_shift=3, seed=0)(x)
    offsets = [next(s for s in range(-3, 4) if torch.equal(torch.roll(x[i], s, -1), shifted[i]))
               for i in range(20)]
    assert len(set(offsets)) > 1
    half = SignalAugment(gaussian_p=0.5, gaussian_snr_db=[10, 10], seed=0)(x)
    changed = (half != x).flatten(1).any(dim=1).float().mean()
    assert 0.35 < changed < 0.65
    with pytest.raises(ConfigError, match="gaussian_p=1.5"):
        SignalAugment(gaussian_p=1.5)
    with pytest.raises(ConfigError, match="powerline_hz=70"):
        SignalAugment(powerline_hz=70.0, rate=125.0)


SEEN: list[torch.Tensor] = []


class Recording(SignalAugment):
    """The noise augmentation, recording every batch it is given."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        SEEN.append(x)
        return super().__call__(x)


def test_augmentation_touches_training_batches_only(small_csv, compose_train) -> None:
    from ecg_experiments.tasks.train import train

    SEEN.clear()
    cfg = compose_train(["data=beats_csv", f"data.train_file={small_csv}", "data/augment=noise",
                         "trainer.max_epochs=1", "logger=none", "report.enabled=false"])
    assert cfg.data.augment._target_.endswith("SignalAugment")
    cfg.data.augment._target_ = f"{__name__}.Recording"
    train(cfg)
    # one epoch: exactly the 140 training beats, never the 30 + 30 validation and test beats
    assert sum(len(x) for x in SEEN) == 140


class Roughness(torch.nn.Module):
    """A fixed two-class "model": rough (high sample-to-sample variation) or smooth beats."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rough = x.diff(dim=-1).std(dim=(1, 2)) / x.std(dim=(1, 2))
        return torch.stack([self.threshold - rough, rough - self.threshold], dim=1) * 50


def test_noise_robustness_table_degrades_with_noise(beats) -> None:
    net = Roughness(threshold=0.3)
    labels = net(beats).argmax(dim=1)  # the clean predictions are the truth: clean acc 1.0
    assert 0 < labels.sum() < len(labels)  # both classes present
    frame = noise_robustness(net, beats, labels, ["smooth", "rough"], [24, 12, 0], seed=0)
    assert frame["snr_db"].tolist() == ["clean", 24.0, 12.0, 0.0]
    assert {"acc", "f1_macro", "recall_macro", "recall_smooth", "recall_rough"} <= set(frame)
    acc = frame.set_index("snr_db")["acc"]
    assert acc["clean"] == 1.0
    assert acc[24.0] >= acc[12.0] >= acc[0.0] and acc[0.0] < 0.9  # white noise makes beats rough
    # the same seed gives the same noise: a second table is identical
    again = noise_robustness(net, beats, labels, ["smooth", "rough"], [24, 12, 0], seed=0)
    assert again.equals(frame)


def test_init_from_copies_matching_tensors_and_reinitialises_the_head(tmp_path) -> None:
    source = KachueeCNN1d(num_classes=5)
    state = {"state_dict": {f"net.{k}": v for k, v in source.state_dict().items()}}
    torch.save(state, tmp_path / "clean.ckpt")
    torch.manual_seed(1)
    target = KachueeCNN1d(num_classes=2)  # PTB: normal vs abnormal
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    report = init_from(target, str(tmp_path / "clean.ckpt"), "sqlite:///unused.db")
    # only the final linear layer (5 -> 2 classes) differs in shape: it keeps its fresh init
    assert report.reinitialised == ["head.6.bias", "head.6.weight"]
    after, before = target.state_dict(), source.state_dict()
    for key in report.reinitialised:
        assert torch.equal(after[key], fresh[key])
    assert report.loaded == sorted(k for k in before if k not in report.reinitialised)
    for key in report.loaded:
        assert torch.equal(after[key], before[key])
    with pytest.raises(ConfigError, match="model.init_from=/no/such.ckpt: no such checkpoint"):
        init_from(target, "/no/such.ckpt", "sqlite:///unused.db")


def test_init_from_copies_the_feature_branch_only_for_the_same_features(tmp_path) -> None:
    """Two feature sets of one count (rr_context=1 + template: 11; rr_context=2: 11): the
    layers reading them load only when the names and order match; the rest loads anyway."""
    from ecg_experiments.data.beat_features import rr_feature_names
    from ecg_experiments.models.resnet1d import XResNet1d

    first, second = rr_feature_names(1, template=True), rr_feature_names(2)
    assert len(first) == len(second) == 11 and first != second
    source = XResNet1d(num_classes=5, num_features=11)
    torch.save({"state_dict": {f"net.{k}": v for k, v in source.state_dict().items()},
                "ecg_class_names": list("NSVFQ"), "ecg_input": {"features": list(first)}},
               tmp_path / "source.ckpt")
    for names, feature_branch_loaded in ((first, True), (second, False)):
        torch.manual_seed(1)
        target = XResNet1d(num_classes=5, num_features=11)
        fresh = {k: v.clone() for k, v in target.state_dict().items()}
        report = init_from(target, str(tmp_path / "source.ckpt"), "sqlite:///unused.db",
                           list("NSVFQ"), None, names)
        branch = [k for k in fresh if k.startswith("head.features.")]
        assert branch and all((k in report.loaded) == feature_branch_loaded for k in branch)
        after, before = target.state_dict(), source.state_dict()
        for key in branch:
            expected = before[key] if feature_branch_loaded else fresh[key]
            assert torch.equal(after[key], expected)
        body = [k for k in report.loaded if not k.startswith("head.")]
        assert body and all(torch.equal(after[k], before[k]) for k in body)


def test_fine_tune_mitbih_model_on_ptb_through_a_run_id(small_csv, tmp_path, compose_train):
    """MIT-BIH (5 classes) -> PTB (normal vs abnormal) from the shared sample rows: the
    clean run's id is enough; the head is reported re-initialised and freezing applies."""
    import mlflow

    from ecg_experiments.data.beats import write_beats_csv
    from ecg_experiments.tasks.train import train
    from tests.conftest import FAST

    cfg = compose_train(["data=beats_csv", f"data.train_file={small_csv}", *FAST,
                         "report.log_model=true"])
    train(cfg)
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    first = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    normal, _ = read_beats_csv(shared_path("kachuee_samples", "ptbdb_normal_sample.csv"),
                               class_names=["normal", "abnormal"])
    abnormal, _ = read_beats_csv(shared_path("kachuee_samples", "ptbdb_abnormal_sample.csv"),
                                 class_names=["normal", "abnormal"])
    ptb = tmp_path / "ptb.csv"
    write_beats_csv(ptb, np.vstack([normal, abnormal]),
                    np.r_[np.zeros(len(normal)), np.ones(len(abnormal))])
    cfg = compose_train(["data=beats_csv", f"data.train_file={ptb}",
                         "data.class_names=[normal,abnormal]",
                         f"model.init_from={first.info.run_id}", "freeze=last_n", "freeze.n=3",
                         f"paths.run_dir={tmp_path / 'tuned'}", *FAST])
    metrics = train(cfg)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              order_by=["attributes.start_time DESC"])
    tuned = runs[0]
    assert tuned.info.run_id != first.info.run_id and tuned.info.status == "FINISHED"
    assert tuned.data.tags["init_from.reinitialised"].startswith("head.")
    assert int(tuned.data.tags["init_from.loaded_tensors"]) > 10
    assert "test/acc" in metrics
    # freezing applied: every layer but the last 3 holds the source run's weights after
    # training, the last ones moved, and the run counts only theirs as trainable
    from ecg_experiments.models.checkpoint import checkpoint_from_run, load_trained_model
    from ecg_experiments.models.freezing import FreezeAllButLastN

    source = load_trained_model(checkpoint_from_run(
        first.info.run_id, cfg.logger.tracking_uri, str(tmp_path / "source"))).net.state_dict()
    [best] = (tmp_path / "tuned" / "checkpoints").glob("epoch_*.ckpt")
    net = load_trained_model(best).net
    FreezeAllButLastN(3).apply(net)
    frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert len(frozen) >= 4 and len(trainable) == 6  # 3 layers: weight and bias each
    tuned_weights = net.state_dict()
    assert all(torch.equal(tuned_weights[n], source[n]) for n in frozen)
    moved = [n for n in trainable if n in source and tuned_weights[n].shape == source[n].shape]
    assert moved and all(not torch.equal(tuned_weights[n], source[n]) for n in moved)
    assert int(tuned.data.params["model.params_trainable"]) == sum(
        p.numel() for p in net.parameters() if p.requires_grad)
