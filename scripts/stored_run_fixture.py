"""Store two small runs of today's code as a test fixture (tests/test_stored_runs.py).

    python scripts/stored_run_fixture.py tests/fixtures/stored_runs/<date>

Trains a beat model on mitdb record 119 (`data=mitbih`) and an image model on a folder of
generated PNGs (`data=image_folder`), one epoch each, and keeps what a later version of the
package must still read: each run's `config.yaml` and its checkpoint's metadata
(`checkpoint.json`: the `ecg_*` entries, Lightning's keys, and the state dict's tensor names
and shapes; the weights themselves, the optimizer state and the loops are left out, so no
weights enter the repository; the seen-sample hashes are cut to their first SEEN_KEPT).
Paths are written as `__SHARED__` (the shared data folder) and `__RUN__` (the run's own
folder), which the test replaces. Run it from the version whose runs
must keep loading (e.g. a worktree of the commit before a move of modules).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

SHARED = Path(os.environ.get("ECG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared"
                             / "data")).resolve()
LEFT_OUT = ("optimizer_states", "lr_schedulers", "loops", "callbacks")
SEEN_KEPT = 16  # of the 8-byte sample hashes in `ecg_seen` (their format is what matters)
BYTES = "__bytes_hex__"  # how JSON holds a bytes value


def to_json(value: Any) -> Any:
    """`value` with bytes written as {BYTES: hex} (JSON has no bytes)."""
    if isinstance(value, bytes):
        return {BYTES: value.hex()}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def from_json(value: Any) -> Any:
    """The inverse of `to_json`."""
    if isinstance(value, dict):
        if set(value) == {BYTES}:
            return bytes.fromhex(value[BYTES])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def write_images(folder: Path) -> None:
    """10 random 32x32 PNGs per class (N, V), the same on every call (seed 0)."""
    rng = np.random.default_rng(0)
    for name in ("N", "V"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(10):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i}.png")


def replaced(value: Any, pairs: dict[str, str]) -> Any:
    """`value` (a string, or dicts, lists and tuples of them) with each key of `pairs`
    written as its value."""
    if isinstance(value, str):
        for old, new in pairs.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return {k: replaced(v, pairs) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(replaced(v, pairs) for v in value)
    return value


def placeholders(value: Any, run: Path) -> Any:
    """`value` with the shared data folder and the run folder written as placeholders."""
    return replaced(value, {str(SHARED): "__SHARED__", str(run): "__RUN__"})


def store(run: Path, out: Path) -> None:
    """The run's config and its last checkpoint's metadata, paths as placeholders."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(placeholders((run / "config.yaml").read_text(), run))
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu",
                            weights_only=True)
    skeleton = {k: v for k, v in checkpoint.items() if k not in LEFT_OUT}
    skeleton["state_dict"] = {k: list(v.shape) for k, v in checkpoint["state_dict"].items()}
    seen = skeleton.get("ecg_seen")
    if seen:
        seen["hashes"] = seen["hashes"][:8 * SEEN_KEPT]
    text = json.dumps(to_json(placeholders(skeleton, run)), indent=1)
    (out / "checkpoint.json").write_text(text + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the fixture folder to write")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stored-runs-"))
    write_images(work / "image" / "images")
    runs = {
        "signal": ["data=mitbih", "data.records=[119]", f"data.dir={SHARED / 'mitdb'}",
                   "data.download=false"],
        "image": ["model=cnn2d", "data=image_folder", "data.num_workers=0",
                  f"data.root={work / 'image' / 'images'}"],
    }
    for kind, overrides in runs.items():
        run = work / kind
        subprocess.run([sys.executable, "-m", "ecg_experiments.train", *overrides,
                        "trainer.max_epochs=1", "logger=none", "report.enabled=false",
                        f"paths.outputs_dir={work / 'outputs'}", f"hydra.run.dir={run}",
                        f"paths.data_dir={run / 'prepared'}"],
                       check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        store(run, args.out / kind)
        print(f"{kind}: {args.out / kind}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
