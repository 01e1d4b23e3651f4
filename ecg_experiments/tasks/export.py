"""Export a saved model to ONNX or TorchScript and check it against PyTorch.

`python -m ecg_experiments.export ckpt=<path> | run_id=<id> format=onnx|torchscript`
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from ecg_experiments.errors import ConfigError, EcgUserError
from ecg_experiments.io import atomic_path
from ecg_experiments.models.checkpoint import resolve_trained_model

log = logging.getLogger(__name__)
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


def _export_onnx(net: torch.nn.Module, example: torch.Tensor, path: Path,
                 input_name: str) -> None:
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(net, (example,), str(path), input_names=[input_name],
                      output_names=["logits"], dynamic_shapes=({0: batch},), dynamo=True,
                      verbose=False, external_data=False)  # one file (it is renamed into place)


def _run_onnx(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def export_model(cfg: DictConfig) -> tuple[Path, float]:
    """Write the exported model; return its path and the parity check's max abs difference."""
    if cfg.format not in SUFFIX:
        raise ConfigError(f"format={cfg.format!r}: expected onnx or torchscript")
    model, _ = resolve_trained_model(cfg.get("ckpt"), cfg.get("run_id"), cfg.paths.tracking_uri)
    net = model.net.eval()
    output = Path(cfg.output or Path(cfg.paths.run_dir) / f"model{SUFFIX[cfg.format]}")
    generator = torch.Generator().manual_seed(int(cfg.seed))
    shape = model.input.shape  # what the network takes, stored with it (inputs.py)
    x = torch.rand(int(cfg.parity_inputs), *shape, generator=generator)
    with torch.no_grad():
        expected = net(x).numpy()
    with atomic_path(output) as tmp:
        if cfg.format == "onnx":
            _export_onnx(net, x[:2], tmp, "beats" if model.input.kind == "signal" else "images")
            got = _run_onnx(tmp, x)
        else:
            scripted = torch.jit.trace(net, x[:2])
            scripted.save(str(tmp))
            with torch.no_grad():
                got = torch.jit.load(str(tmp))(x).numpy()
        difference = float(np.abs(got - expected).max())
        if difference > float(cfg.tolerance):
            raise EcgUserError(
                f"{cfg.format} export of {model.checkpoint}: outputs differ from PyTorch by "
                f"{difference:.2e} > tolerance {cfg.tolerance:g} on {len(x)} inputs; not written"
            )
    reason = model.record_only_reason()
    print(f"exported {model.checkpoint} to {output} ({cfg.format}, input [batch, "
          f"{', '.join(map(str, shape))}]: {model.input.describe()}); parity on {len(x)} "
          f"inputs: max |difference| = {difference:.2e} <= {cfg.tolerance:g}"
          + (f"; feed it as trained: {reason}" if reason else ""))
    return output, difference
