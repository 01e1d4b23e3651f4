"""AAMI EC57 reporting of beat classifiers, as inter-patient papers report it (de Chazal 2004).

Per class N, S, V, F: sensitivity (Se), positive predictivity (+P) and false-positive rate
(FPR), counted over the beats whose reference class is one of them; Q (unclassifiable and
paced beats) is reported apart, as the protocol says. Overall: accuracy, Cohen's kappa,
the j index (Se + +P of S and V) and jκ = κ/2 + j/8 (Mar et al. 2011, Mondejar-Guerra 2019).
Written here because no library computes EC57's class conventions; every number comes from
one confusion matrix, so the bootstrap can compute them for a thousand resamples at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

AAMI_MAIN = ("N", "S", "V", "F")
APART = "Q"
# the classes whose Se and +P get bootstrap intervals (the hard ones across patients)
WITH_CI = ("S", "V")


def applies(class_names: Sequence[str]) -> bool:
    """Whether a model's classes are AAMI beat classes (N, S, V and F among them)."""
    return set(AAMI_MAIN) <= set(class_names)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def ec57_statistics(cm: np.ndarray, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """EC57 numbers of one confusion matrix [true, predicted] or a stack [..., k, k]."""
    cm = np.asarray(cm, dtype=np.float64)
    main = [list(class_names).index(c) for c in AAMI_MAIN]
    counted = cm[..., main, :]  # beats whose reference is N, S, V or F; any prediction
    total = counted.sum(axis=(-1, -2))
    stats: dict[str, np.ndarray] = {}
    agree = np.zeros(cm.shape[:-2])
    for i, (name, k) in enumerate(zip(AAMI_MAIN, main, strict=True)):
        tp = counted[..., i, k]
        fn = counted[..., i, :].sum(axis=-1) - tp
        fp = counted[..., :, k].sum(axis=-1) - tp
        tn = total - tp - fn - fp
        stats[f"se_{name}"] = _ratio(tp, tp + fn)
        stats[f"ppv_{name}"] = _ratio(tp, tp + fp)
        stats[f"fpr_{name}"] = _ratio(fp, fp + tn)
        stats[f"support_{name}"] = tp + fn
        agree = agree + tp
    stats["acc"] = _ratio(agree, total)
    rows = counted.sum(axis=-1)  # reference counts of N, S, V, F
    columns = counted.sum(axis=-2)[..., main]  # their predictions as N, S, V, F
    expected = _ratio((rows * columns).sum(axis=-1), total**2)
    stats["kappa"] = _ratio(stats["acc"] - expected, 1 - expected)
    stats["j"] = sum(np.nan_to_num(stats[f"{m}_{c}"]) for c in WITH_CI for m in ("se", "ppv"))
    stats["jkappa"] = stats["kappa"] / 2 + stats["j"] / 8
    if APART in class_names:  # Q over every beat: its own Se and +P
        q = list(class_names).index(APART)
        tp = cm[..., q, q]
        stats[f"se_{APART}"] = _ratio(tp, cm[..., q, :].sum(axis=-1))
        stats[f"ppv_{APART}"] = _ratio(tp, cm[..., :, q].sum(axis=-1))
        stats[f"support_{APART}"] = cm[..., q, :].sum(axis=-1)
    return stats


def ec57_table(cm: np.ndarray, class_names: Sequence[str],
               ci: dict[str, tuple[float, float]] | None = None) -> pd.DataFrame:
    """One row per class (N, S, V, F, then Q apart) and an `overall` row: Se, +P, FPR,
    support, and the bootstrap intervals given in `ci` (keys like `se_S`)."""
    stats = ec57_statistics(cm, class_names)
    rows = []
    for name in (*AAMI_MAIN, APART):
        if f"se_{name}" not in stats:
            continue
        rows.append({"class": name if name != APART else f"{name} (apart)",
                     "se": float(stats[f"se_{name}"]), "ppv": float(stats[f"ppv_{name}"]),
                     "fpr": float(stats.get(f"fpr_{name}", np.nan)),
                     "support": int(stats[f"support_{name}"])})
    rows.append({"class": "overall", "acc": float(stats["acc"]),
                 "kappa": float(stats["kappa"]), "j": float(stats["j"]),
                 "jkappa": float(stats["jkappa"]),
                 "support": int(sum(stats[f"support_{c}"] for c in AAMI_MAIN))})
    table = pd.DataFrame(rows)
    for key, (low, high) in (ci or {}).items():
        metric, _, name = key.partition("_")
        row = table["class"] == (name or "overall")
        if not name:  # overall numbers: acc, kappa
            row, metric = table["class"] == "overall", key
        table.loc[row, f"{metric}_ci_low"] = low
        table.loc[row, f"{metric}_ci_high"] = high
    return table


def ec57_metrics(table: pd.DataFrame, stage: str = "test") -> dict[str, float]:
    """The table as flat metric names: `{stage}/aami/se_S`, `{stage}/aami/se_S_ci_low`,
    `{stage}/aami/kappa`..."""
    metrics = {}
    for row in table.to_dict("records"):
        name = str(row["class"]).split(" ")[0]
        for column, value in row.items():
            if column in ("class", "support") or value is None or pd.isna(value):
                continue
            metric, _, bound = column.partition("_ci_")
            key = metric if name == "overall" else f"{metric}_{name}"
            metrics[f"{stage}/aami/{key}" + (f"_ci_{bound}" if bound else "")] = float(value)
    return metrics
