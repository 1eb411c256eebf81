"""DD-Ranking's robust scores (HLR, IOR, LRS, ARS), computed from their definitions.

Source: DD-Ranking (Li, Zhong et al., arXiv 2505.13300; package ``ddranking`` 0.2.0,
``ddranking/metrics/{hard_label,soft_label,aug_robust}.py``, NUS-HPC-AI-Lab/DD-Ranking).

Units: every accuracy here is a **fraction in [0, 1]**; a value outside [0, 1] raises ValueError, which catches
percent inputs such as 90.0. Differences (HLR, IOR, alpha, beta) are fractions in [-1, 1] and the normalised
scores (LRS, ARS) lie in [0, 1]. DD-Ranking's code works in percent (0-100) while its normalisation assumes
alpha in [-1, 1] (its docs multiply the score by 100 % at the end), and it feeds the **best** test accuracy over
training epochs (validated every 10 or 20 epochs) of each run. This package feeds **final-epoch** accuracies as
fractions, so its scores follow the same formulas but are not numerically interchangeable with DD-Ranking's
leaderboard.
"""

from __future__ import annotations

import math

__all__ = ["augmentation_robust_score", "hard_label_recovery", "improvement_over_random", "label_robust_score",
           "normalise_score"]

_E_INV = math.exp(-1.0)


def _fraction(name: str, x: float) -> float:
    """``x`` as a float after checking it is an accuracy fraction in [0, 1] (ValueError otherwise)."""
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise ValueError(f"{name} must be a finite accuracy fraction in [0, 1], got {x!r}")
    if not 0.0 <= x <= 1.0:
        hint = " (it looks like a percent: divide by 100)" if 1.0 < x <= 100.0 else ""
        raise ValueError(f"{name} = {x} is not an accuracy fraction in [0, 1]{hint}")
    return float(x)


def _weight(name: str, w: float) -> float:
    if isinstance(w, bool) or not isinstance(w, int | float) or not 0.0 <= w <= 1.0:
        raise ValueError(f"{name} must be a weight in [0, 1], got {w!r}")
    return float(w)


def hard_label_recovery(acc_full: float, acc_syn_hard: float) -> float:
    """HLR = acc_full - acc_syn_hard (fractions in [0, 1]; result in [-1, 1], lower is better).

    Args:
        acc_full: accuracy (fraction) of the network trained on the full training set with hard labels.
        acc_syn_hard: accuracy (fraction) of the network trained on the synthetic set with hard labels.
    """
    return _fraction("acc_full", acc_full) - _fraction("acc_syn_hard", acc_syn_hard)


def improvement_over_random(acc_syn: float, acc_random: float) -> float:
    """IOR = acc_syn - acc_random (fractions in [0, 1]; result in [-1, 1], higher is better).

    Args:
        acc_syn: accuracy (fraction) of the synthetic set under the method's own recipe (its labels and loss).
        acc_random: accuracy (fraction) of a random real subset of the same IPC under the same recipe.
    """
    return _fraction("acc_syn", acc_syn) - _fraction("acc_random", acc_random)


def normalise_score(x: float) -> float:
    """DD-Ranking's normalisation (e^x - e^-1) / (e - e^-1): maps x in [-1, 1] (fractions) to [0, 1].

    Raises ValueError for x outside [-1, 1], i.e. for differences of percent accuracies.
    """
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise ValueError(f"score must be a finite number in [-1, 1], got {x!r}")
    if not -1.0 <= x <= 1.0:
        raise ValueError(f"score {x} is outside [-1, 1]; accuracies must be fractions, not percent")
    return (math.exp(x) - _E_INV) / (math.e - _E_INV)


def label_robust_score(acc_full: float, acc_syn_hard: float, acc_syn: float, acc_random: float,
                       w: float = 0.5) -> dict[str, float]:
    """DD-Ranking's label-robust score from accuracies given as fractions in [0, 1].

    HLR = acc_full - acc_syn_hard, IOR = acc_syn - acc_random, alpha = w * IOR - (1 - w) * HLR and
    LRS = normalise_score(alpha). For hard-label methods ``acc_syn`` equals ``acc_syn_hard``.

    Args:
        acc_full: full-training-set accuracy, hard labels (fraction).
        acc_syn_hard: synthetic-set accuracy with hard labels (fraction).
        acc_syn: synthetic-set accuracy with the method's own labels and loss (fraction).
        acc_random: random-subset accuracy with that same recipe (fraction).
        w: weight of IOR against HLR, in [0, 1] (DD-Ranking's default 0.5).

    Returns:
        ``{"hlr", "ior", "alpha"}`` as fractions in [-1, 1] and ``"lrs"`` in [0, 1].
    """
    w = _weight("w", w)
    hlr = hard_label_recovery(acc_full, acc_syn_hard)
    ior = improvement_over_random(acc_syn, acc_random)
    alpha = w * ior - (1.0 - w) * hlr
    return {"hlr": hlr, "ior": ior, "alpha": alpha, "lrs": normalise_score(alpha)}


def augmentation_robust_score(syn_aug: float, syn_noaug: float, rand_aug: float, rand_noaug: float,
                              gamma: float = 0.5) -> dict[str, float]:
    """DD-Ranking's augmentation-robust score from accuracies given as fractions in [0, 1].

    beta = gamma * (syn_aug - rand_aug) + (1 - gamma) * (syn_noaug - rand_noaug), ARS = normalise_score(beta).

    Args:
        syn_aug: synthetic-set accuracy trained with augmentation (fraction).
        syn_noaug: synthetic-set accuracy trained without augmentation (fraction).
        rand_aug: random-subset accuracy trained with augmentation (fraction).
        rand_noaug: random-subset accuracy trained without augmentation (fraction).
        gamma: weight of the with-augmentation gap, in [0, 1] (DD-Ranking's default 0.5).

    Returns:
        ``{"with_aug", "without_aug", "beta"}`` as fractions in [-1, 1] and ``"ars"`` in [0, 1].
    """
    gamma = _weight("gamma", gamma)
    with_aug = _fraction("syn_aug", syn_aug) - _fraction("rand_aug", rand_aug)
    without_aug = _fraction("syn_noaug", syn_noaug) - _fraction("rand_noaug", rand_noaug)
    beta = gamma * with_aug + (1.0 - gamma) * without_aug
    return {"with_aug": with_aug, "without_aug": without_aug, "beta": beta, "ars": normalise_score(beta)}
