"""Every reader fuzzed (Hypothesis): arbitrary bytes and mutations of a valid file (bytes
flipped, cut at any point, a field replaced by 0, -1, nan or a huge number).

The outcome must be the valid result or the framework's user error (one `error:` line and
exit 2 under the command line's handling, tests/test_bad_readers.py): never another
exception (a traceback). An annotation file cut short, or changed in any byte in a folder
with SHA256SUMS (as PhysioNet ships its databases), is always refused: a mutated annotation
file never gives a plausible-looking wrong answer.

Budget: `EXAMPLES` (20) examples per test, about 12 s together; `test_a_longer_fuzz_run`
(slow, `make test-all`) runs the module again with 10x as many.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecg_experiments.errors import EcgUserError
from tests.conftest import shared_path

EXAMPLES = int(os.environ.get("ECG_FUZZ_EXAMPLES", "20"))
FIELD_VALUES = ("0", "-1", "nan", "inf", "-inf", "1e308", "99999999999999999999", "")
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def mutated(draw: st.DrawFn, valid: bytes, text: bool = False) -> tuple[str, bytes]:
    """(kind, bytes): random bytes, or `valid` with bytes flipped, cut, or (text formats) one
    field replaced by an extreme value."""
    kinds = ["random", "flip", "cut"] + ["field"] * text
    kind = draw(st.sampled_from(kinds))
    if kind == "random":
        return kind, draw(st.binary(max_size=4096))
    if kind == "cut":
        return kind, valid[: draw(st.integers(0, len(valid) - 1))]
    data = bytearray(valid)
    if kind == "flip":  # distinct places: two flips of one byte could give it back
        places = draw(st.sets(st.integers(0, len(data) - 1), min_size=1, max_size=4))
        for at in places:
            data[at] ^= draw(st.integers(1, 255))
        return kind, bytes(data)
    fields = [m for m in _field_spans(valid)]
    start, end = draw(st.sampled_from(fields))
    value = draw(st.sampled_from(FIELD_VALUES)).encode()
    return kind, bytes(data[:start]) + value + bytes(data[end:])


def _field_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each whitespace-, comma- or colon-separated field."""
    import re

    return [m.span() for m in re.finditer(rb"[^\s,:]+", data)][:400]


def outcome(read: Callable[[], object]) -> tuple[str, object]:
    """("ok", result) or ("refused", error); any other exception fails the test."""
    try:
        return "ok", read()
    except EcgUserError as err:
        assert str(err).strip(), "an empty error message"
        return "refused", err


class Example(dict):
    """The example record's files; a short repr for Hypothesis' reports."""

    def __repr__(self) -> str:
        return f"Example({self['folder']})"


def read_bytes_as(content: bytes, name: str, read: Callable[[Path], object]
                  ) -> tuple[str, object]:
    """`outcome` of `read` on a file named `name` that holds `content`."""
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / name
        path.write_bytes(content)
        return outcome(lambda: read(path))


@pytest.fixture(scope="module")
def example_record() -> dict[str, Path | bytes]:
    """A fixed example database: the first 20 s of mitdb record 100 (both leads, format
    212) and its beat annotations, written by wfdb, with a SHA256SUMS file."""
    import wfdb

    folder = Path(tempfile.mkdtemp(prefix="ecg-fuzz-record-"))
    source = str(shared_path("mitdb") / "100")
    length = 20 * 360
    record = wfdb.rdrecord(source, sampto=length, physical=False)
    wfdb.wrsamp("100", fs=record.fs, units=record.units, sig_name=record.sig_name,
                d_signal=record.d_signal, fmt=record.fmt, adc_gain=record.adc_gain,
                baseline=record.baseline, write_dir=str(folder))
    annotation = wfdb.rdann(source, "atr", sampto=length - 1)
    # with its rhythm note ('+' with aux "(N"), so the AUX words of the format are met
    wfdb.wrann("100", "atr", annotation.sample, np.asarray(annotation.symbol),
               subtype=annotation.subtype, chan=annotation.chan, num=annotation.num,
               aux_note=[a.rstrip("\x00") for a in annotation.aux_note],
               write_dir=str(folder))
    files = {ext: (folder / f"100.{ext}").read_bytes() for ext in ("hea", "dat", "atr")}
    yield Example({"folder": folder, **files})
    shutil.rmtree(folder, ignore_errors=True)


def _read_spoiled(example: dict, ext: str, data: bytes, with_sums: bool):
    """read_record on a copy of the example record whose `ext` file holds `data`."""
    from ecg_experiments.data.physionet import read_record

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for name in ("hea", "dat", "atr"):
            (work / f"100.{name}").write_bytes(data if name == ext else example[name])
        if with_sums:
            (work / "SHA256SUMS").write_text("".join(
                f"{hashlib.sha256(example[n]).hexdigest()}  100.{n}\n"
                for n in ("hea", "dat", "atr")))
        return outcome(lambda: read_record(work, "100", lead="MLII", missing_lead="error"))


def test_the_example_record_reads(example_record) -> None:
    from ecg_experiments.data.physionet import read_record

    record = read_record(example_record["folder"], "100", lead="MLII")
    assert record.fs == 360 and len(record.signal) == 7200
    assert len(record.beat_samples) == 25 and set(record.beat_symbols) == {"N", "A"}
    assert record.unmapped == {"+": 1} and b"(N" in example_record["atr"]


@FUZZ
@given(data=st.data())
def test_fuzz_wfdb_header(example_record, data) -> None:
    kind, content = data.draw(mutated(example_record["hea"], text=True))
    result, value = _read_spoiled(example_record, "hea", content, with_sums=False)
    if result == "ok":
        assert np.isfinite(value.signal).any() and value.fs > 0


@FUZZ
@given(data=st.data())
def test_fuzz_signal_file(example_record, data) -> None:
    kind, content = data.draw(mutated(example_record["dat"]))
    result, value = _read_spoiled(example_record, "dat", content, with_sums=False)
    if kind in ("cut", "random"):  # shorter than the header promises
        assert result == "refused", f"{kind}: {len(content)} bytes read as a record"
    else:  # any bits are samples in format 212: read (a checksum would tell)
        assert result == "ok" and len(value.signal) == 7200, value
        checked, error = _read_spoiled(example_record, "dat", content, with_sums=True)
        assert checked == "refused" and "SHA256SUMS" in str(error)


@FUZZ
@given(data=st.data())
def test_fuzz_annotation_file(example_record, data) -> None:
    """Cut short: always refused. Flipped in a folder with SHA256SUMS: always refused.
    Arbitrary bytes: no traceback (what may be accepted: the test below)."""
    kind, content = data.draw(mutated(example_record["atr"]))
    with_sums = kind == "flip"
    result, value = _read_spoiled(example_record, "atr", content, with_sums)
    if kind in ("cut", "flip"):
        assert result == "refused", f"a {kind} annotation file read as {value}"


@FUZZ
@given(data=st.data())
def test_fuzz_annotation_file_without_checksums(example_record, data) -> None:
    """Flipped bytes where no checksum can tell: refused, or beats inside the signal at a
    human heart's rate (a flip that turns one valid label into another is undetectable)."""
    kind, content = data.draw(mutated(example_record["atr"]))
    result, value = _read_spoiled(example_record, "atr", content, with_sums=False)
    if kind == "cut":
        assert result == "refused"
    if result == "ok":
        beats = value.beat_samples
        assert np.all(np.diff(beats) >= 0) and beats.min() >= 0 and beats.max() < 7200
        assert len(beats) / (7200 / 360 / 60) <= 300  # (20 s: no lower bound)


@FUZZ
@given(data=st.data())
def test_fuzz_beats_csv(good, data) -> None:
    from ecg_experiments.data.beats import read_beats_csv

    kind, content = data.draw(mutated(good["csv"].read_bytes()[:20_000], text=True))
    result, value = read_bytes_as(content, "beats.csv", read_beats_csv)
    if result == "ok":
        x, y = value
        assert len(x) == len(y) > 0 and x.shape[1] == 187 and np.isfinite(x).all()
        assert y.min() >= 0 and y.max() < 5


@FUZZ
@given(data=st.data())
def test_fuzz_image_file(good, data) -> None:
    from ecg_experiments.data.image_files import load_image

    kind, content = data.draw(mutated(good["png"].read_bytes()))
    result, value = read_bytes_as(content, "image.png", lambda path: load_image(path, 3))
    if result == "ok":
        assert value.mode == "RGB" and min(value.size) > 0
    if kind == "random":
        assert result == "refused"
    if kind == "cut" and result == "ok":  # cut after the pixel data (in the end chunk): whole
        assert np.array_equal(np.asarray(value), np.asarray(load_image(good["png"], 3)))


@FUZZ
@given(data=st.data())
def test_fuzz_checkpoint(good, data) -> None:
    from ecg_experiments.models.checkpoint import load_trained_model

    kind, content = data.draw(mutated(good["signal_ckpt"].read_bytes()))
    result, value = read_bytes_as(content, "model.ckpt", load_trained_model)
    if result == "ok":
        assert value.class_names and not value.net.training
    if kind in ("cut", "random"):
        assert result == "refused"


@FUZZ
@given(data=st.data())
def test_fuzz_weights_file(good, data) -> None:
    from ecg_experiments.models.backbones import load_local_weights
    from ecg_experiments.models.checkpoint import load_trained_model

    net = load_trained_model(good["signal_ckpt"]).net
    kind, content = data.draw(mutated(good["pth"].read_bytes()))
    result, value = read_bytes_as(content, "weights.pth",
                                  lambda path: load_local_weights(net, path, skip=()))
    if result == "ok":
        assert all(bool(v.isfinite().all()) for v in net.state_dict().values()
                   if v.is_floating_point())
    if kind in ("cut", "random"):
        assert result == "refused"


@FUZZ
@given(data=st.data())
def test_fuzz_yaml_config(data, capsys) -> None:
    """A user's experiment file: one error line and exit 2, or a YAML mapping Hydra reads."""
    from ecg_experiments.cli import check_config_files
    from ecg_experiments.config import CONFIG_DIR

    valid = (CONFIG_DIR / "experiment" / "accuracy_interpatient.yaml").read_bytes()
    kind, content = data.draw(mutated(valid, text=True))
    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "experiment").mkdir()
        (Path(work) / "experiment" / "mine.yaml").write_bytes(content)
        capsys.readouterr()
        try:
            check_config_files(["--config-dir", work, "experiment=mine"])
            code = 0
        except SystemExit as err:
            code = err.code
        err = capsys.readouterr().err.strip().splitlines()
    assert code in (0, 2)
    if code == 2:
        assert len(err) == 1 and err[0].startswith("error: ") and "mine.yaml" in err[0]


@pytest.mark.slow
def test_a_longer_fuzz_run() -> None:
    import subprocess
    import sys

    from ecg_experiments.config import PROJECT_ROOT

    process = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
         "-m", "not slow"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=3000,
        env={**os.environ, "ECG_FUZZ_EXAMPLES": str(10 * EXAMPLES)})
    assert process.returncode == 0, process.stdout[-4000:]


def _words(*annotations: tuple[int, int]) -> bytes:
    """MIT-format annotation bytes of (code, time difference) words, then the end mark."""
    out = b"".join(((code << 10) | diff).to_bytes(2, "little") for code, diff in annotations)
    return out + b"\x00\x00"


BEATS_EVERY_SECOND = [(1, 360 if k else 100) for k in range(20)]  # "N" every 360 samples
# each: annotation bytes, words of the refusal
IMPLAUSIBLE_ANNOTATIONS = {
    "a plausible file (accepted)": (_words(*BEATS_EVERY_SECOND), None),
    "110 beats in 20 s": (_words(*[(1, 60)] * 110), "beats a minute"),
    "a beat after the signal": (_words(*BEATS_EVERY_SECOND, (1, 1000)), "outside the signal"),
    "code 15, which wfdb does not define": (_words(*BEATS_EVERY_SECOND[:10], (15, 5),
                                                   *BEATS_EVERY_SECOND[10:]),
                                            "a code neither wfdb nor the file defines"),
    "a step back in time (SKIP -1000)": (
        _words(*BEATS_EVERY_SECOND[:10])[:-2] + (59 << 10).to_bytes(2, "little")
        + (-1000 & 0xFFFFFFFF).to_bytes(4, "big")[:2][::-1]
        + (-1000 & 0xFFFFFFFF).to_bytes(4, "big")[2:][::-1]
        + _words((1, 0), *BEATS_EVERY_SECOND[10:]), "before the one before it"),
    "bytes after the end mark": (_words(*BEATS_EVERY_SECOND) + b"\x01\x04",
                                 "follow the end-of-annotations mark"),
}


@pytest.mark.parametrize("case", list(IMPLAUSIBLE_ANNOTATIONS))
def test_annotations_a_heart_cannot_have_are_refused(example_record, case: str) -> None:
    content, words = IMPLAUSIBLE_ANNOTATIONS[case]
    result, value = _read_spoiled(example_record, "atr", content, with_sums=False)
    if words is None:
        assert result == "ok" and len(value.beat_samples) == 20, value
    else:
        assert result == "refused" and words in str(value) and "100.atr" in str(value), value


def test_a_beat_rate_no_heart_has_over_a_minute_or_more_is_refused() -> None:
    from ecg_experiments.data.record_checks import check_annotations
    from ecg_experiments.errors import DataError

    half_hour = 30 * 60 * 360
    check_annotations(np.arange(0, half_hour, 360), 1800, half_hour, 360.0, Path("r.atr"))
    with pytest.raises(DataError, match=r"r.atr: 250 beat annotations in 30.0 min is 8 beats"):
        check_annotations(np.arange(250) * 2500, 250, half_hour, 360.0, Path("r.atr"))
    # a 10 s excerpt inside a pause: one beat is no reason to refuse it
    check_annotations(np.array([100]), 1, 3600, 360.0, Path("r.atr"))
    with pytest.raises(DataError, match="annotations at 180 Hz .* the record at 360 Hz"):
        check_annotations(np.arange(0, half_hour // 2, 180), 1800, half_hour, 360.0,
                          Path("r.atr"), annotation_fs=180.0)
