"""Noise robustness of template-relative beats (data.recipe.subtract_template=true): the SNR
is set on the beat the recipe cut, before its record's median beat was subtracted, not on
the near-zero residual a normal beat becomes; the noise lands on the residual."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from ecg_experiments.config import CONFIG_DIR
from ecg_experiments.data.augment import add_noise_at_snr, snr_db
from ecg_experiments.data.physionet import AAMI_CLASSES, read_record
from ecg_experiments.data.segment import CenteredRecipe, KachueeRecipe
from ecg_experiments.evaluation.robustness import reference_power, robustness_report
from ecg_experiments.inputs import InputSpec
from tests.conftest import shared_path


class Recorder(nn.Module):
    """A 'model' that keeps every batch it is shown and answers class N."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(len(AAMI_CLASSES)))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.bias.expand(x.shape[0], -1) + torch.eye(len(AAMI_CLASSES))[0]


@pytest.fixture(scope="module")
def cut() -> dict[str, torch.Tensor]:
    """Record 100 cut by the centered recipe, template-relative and not."""
    record = read_record(shared_path("mitdb"), "100")
    assert record is not None
    relative = CenteredRecipe(subtract_template=True).extract(record)
    whole = CenteredRecipe().extract(record)
    return {"residual": torch.from_numpy(relative.signals).unsqueeze(1),
            "beat": torch.from_numpy(whole.signals).unsqueeze(1),
            "labels": torch.from_numpy(relative.labels)}


def _noise_seen(net: Recorder, n: int, conditions: int) -> list[torch.Tensor]:
    seen = torch.cat(net.seen)
    assert len(seen) == n * conditions
    return list(seen.split(n))


@pytest.mark.parametrize("kind", ["gaussian", "baseline"])
def test_zero_db_noise_on_template_relative_beats_has_the_power_of_the_beat_before_subtraction(
        cut: dict[str, torch.Tensor], kind: str, tmp_path: Path) -> None:
    residual, beat = cut["residual"], cut["beat"]
    n = len(residual)
    # the residual is the cut beat minus the record's median beat: near zero for most beats
    assert residual.var(dim=(1, 2), unbiased=False).median() < 0.2
    beat_power = beat.var(dim=(1, 2), unbiased=False).flatten()
    assert torch.allclose(beat_power, torch.ones(n), atol=1e-4)  # z-scored
    net = Recorder()
    spec = InputSpec("signal", AAMI_CLASSES, signal_length=residual.shape[-1], rate=360.0)
    metrics = robustness_report(net, residual, cut["labels"], spec,
                                {"noise_snr_db": [0, 12], "noise": kind}, tmp_path, 0, None,
                                recipe=CenteredRecipe(subtract_template=True))
    assert {"noise/acc_snr0db", "noise/acc_snr12db"} <= set(metrics)
    clean, at_0, at_12 = _noise_seen(net, n, 3)
    assert torch.equal(clean, residual)
    for noisy, db in ((at_0, 0.0), (at_12, 12.0)):
        noise_power = (noisy - residual).pow(2).mean(dim=(1, 2))
        assert torch.allclose(noise_power, beat_power / 10 ** (db / 10), rtol=1e-3)
        # measured on the beat before the subtraction, where the same noise lands (linear)
        assert torch.allclose(snr_db(beat, beat + (noisy - residual)), torch.full((n,), db),
                              atol=0.01)


def test_beats_that_are_the_signal_keep_their_own_power(cut: dict[str, torch.Tensor],
                                                        tmp_path: Path) -> None:
    beat = cut["beat"]
    net = Recorder()
    spec = InputSpec("signal", AAMI_CLASSES, signal_length=beat.shape[-1], rate=360.0)
    robustness_report(net, beat, cut["labels"], spec, {"noise_snr_db": [6]}, tmp_path, 0,
                      None, recipe=CenteredRecipe())
    _, noisy = _noise_seen(net, len(beat), 2)
    assert torch.equal(noisy, add_noise_at_snr(beat, 6.0, seed=0))


def test_the_reference_power_follows_the_recipe_object_or_its_config() -> None:
    centered = OmegaConf.load(CONFIG_DIR / "data" / "recipe" / "centered.yaml")
    assert reference_power(centered) is None
    centered.subtract_template = True
    assert reference_power(centered) == 1.0
    assert reference_power(CenteredRecipe(subtract_template=True)) == 1.0
    assert reference_power(KachueeRecipe()) is None
    assert reference_power(None) is None
    # one value or one per beat; scaling scales it with the beat
    x = torch.randn(4, 1, 50, generator=torch.Generator().manual_seed(0)) * 0.1
    power = torch.tensor([1.0, 2.0, 0.5, 4.0])
    assert torch.allclose(snr_db(x, add_noise_at_snr(x, 3.0, signal_power=power), power),
                          torch.full((4,), 3.0), atol=1e-3)


def test_an_unknown_reference_power_leaves_the_report_out(
        cut: dict[str, torch.Tensor], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Min-max beats minus their template: the power before the subtraction is lost."""
    net = Recorder()
    residual = cut["residual"]
    spec = InputSpec("signal", AAMI_CLASSES, signal_length=residual.shape[-1], rate=360.0)
    with caplog.at_level(logging.WARNING):
        metrics = robustness_report(
            net, residual, cut["labels"], spec, {"noise_snr_db": [0]}, tmp_path, 0, None,
            recipe=CenteredRecipe(subtract_template=True, normalize="minmax"))
    assert metrics == {} and not net.seen
    assert not (tmp_path / "noise_robustness.csv").exists()
    assert "normalize=minmax" in caplog.text
