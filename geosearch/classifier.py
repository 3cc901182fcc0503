"""The one classifier of marked tiles: a logistic regression on the stored vectors.

Trained on the tiles marked good (and any query vector counted as one) against the tiles marked
bad and a background sample of the database: most tiles are not what was marked, so a few
hundred random tiles are fair negatives, each weighed less than a mark (it may be a positive
nobody marked). Being linear, it scores a batch of vectors with one matrix product, so scoring a
whole database costs about what reading its vectors does. Used by feedback re-ranking
(``geosearch.feedback``) and by ``detect`` (``geosearch.detection``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from geosearch.errors import ConfigError

_NEWTON_STEPS = 100  # at most; ~10 are taken
_DECREMENT_TOLERANCE = 1e-16  # Newton's decrement at the minimum, relative to the loss


@dataclass(frozen=True)
class TileClassifier:
    """A trained linear classifier: P(marked kind | vector) = sigmoid(vector . weights + bias)."""

    weights: np.ndarray  # (dim,) float32
    bias: float
    positives: int
    negatives: int  # marked bad
    background: int  # background tiles drawn as negatives

    def decision(self, vectors: np.ndarray) -> np.ndarray:
        """(n,) float32 log-odds of each row of ``vectors``."""
        return np.asarray(vectors, dtype=np.float32) @ self.weights + np.float32(self.bias)

    def probability(self, vectors: np.ndarray) -> np.ndarray:
        """(n,) float32 probability that each row of ``vectors`` is of the marked kind."""
        return probability(self.decision(vectors))


def probability(logits: np.ndarray) -> np.ndarray:
    """Log-odds as float32 probabilities (the logistic function)."""
    return (1.0 / (1.0 + np.exp(-np.clip(logits, -60.0, 60.0)))).astype(np.float32)


def train_classifier(
    positives: np.ndarray,
    negatives: np.ndarray,
    background: np.ndarray,
    *,
    background_weight: float = 1.0,
    c: float = 1.0,
    weak_positives: np.ndarray | None = None,
    weak_weight: float = 0.0,
) -> TileClassifier:
    """A logistic regression of ``positives`` against ``negatives`` and the ``background``
    sample, classes balanced, each background row weighing ``background_weight`` of a mark;
    ``weak_positives`` (self-training: tiles a first classifier was surest of) count as positives
    weighing ``weak_weight`` of a mark.

    ConfigError without a positive, or with neither negatives nor background to learn from."""
    if not len(positives):
        raise ConfigError("no tile marked good: mark at least one with --good")
    if not len(negatives) and not len(background):
        raise ConfigError(
            "only good marks, and no other tile in the database to sample as background: "
            "mark some tiles bad with --bad"
        )
    dim = positives.shape[1]
    parts = [np.asarray(p, dtype=np.float64).reshape(-1, dim) for p in (positives, negatives)]
    parts.append(np.asarray(background, dtype=np.float64).reshape(-1, dim))
    weak = np.zeros((0, dim)) if weak_positives is None else weak_positives
    parts.append(np.asarray(weak, dtype=np.float64).reshape(-1, dim))
    features = np.vstack(parts)
    negative = len(parts[1]) + len(parts[2])
    labels = np.r_[np.ones(len(parts[0])), np.zeros(negative), np.ones(len(parts[3]))]
    weights = np.r_[
        np.ones(len(parts[0]) + len(parts[1])),
        np.full(len(parts[2]), background_weight),
        np.full(len(parts[3]), weak_weight),
    ]
    # balanced: each class weighs half of all (background counted at its weight)
    for label in (0, 1):
        weights[labels == label] *= len(weights) / (2 * weights[labels == label].sum())
    coefficients = _logistic_regression(features, labels, weights, c)
    return TileClassifier(
        coefficients[:-1].astype(np.float32), float(coefficients[-1]), len(parts[0]),
        len(parts[1]), len(parts[2]),
    )  # fmt: skip


def _logistic_regression(
    features: np.ndarray, labels: np.ndarray, weights: np.ndarray, c: float
) -> np.ndarray:
    """(weights..., bias) minimising c * sum(weight * log-loss) + |weights|^2 / 2 (the bias not
    penalised): scikit-learn's ``LogisticRegression(C=c)``. Newton's method with a backtracking
    line search: with a few hundred rows of 128 numbers each step is one small linear solve, it
    converges in ~10 steps, and it needs neither scikit-learn nor ``scipy.optimize`` (their
    imports cost 1-2 s on a busy machine)."""
    design = np.hstack([features, np.ones((len(features), 1))])
    penalty = np.r_[np.ones(features.shape[1]), 0.0]  # the bias is not penalised

    def loss(params: np.ndarray) -> float:
        z = design @ params
        data = float(weights @ (np.logaddexp(0.0, z) - labels * z))
        return c * data + 0.5 * float(params[:-1] @ params[:-1])

    params = np.zeros(design.shape[1])
    current = loss(params)
    with threadpool_limits(1, user_api="blas"):  # BLAS's threads: 10-30 times slower when busy
        for _ in range(_NEWTON_STEPS):
            fitted = 1.0 / (1.0 + np.exp(-(design @ params)))
            gradient = design.T @ (c * weights * (fitted - labels)) + penalty * params
            curvature = c * weights * fitted * (1.0 - fitted)
            hessian = (design.T * curvature) @ design + np.diag(penalty)
            step = np.linalg.lstsq(hessian, gradient, rcond=None)[0]
            decrement = float(gradient @ step)  # twice what a full step would lower the loss
            if decrement < _DECREMENT_TOLERANCE * max(1.0, current):
                break
            scale = 1.0
            while scale > 1e-10:  # halve the step until the loss falls enough (Armijo)
                candidate = params - scale * step
                found = loss(candidate)
                if found <= current - 1e-4 * scale * decrement:
                    break
                scale /= 2
            else:
                break  # no step lowers the loss: at the minimum to rounding
            params, current = candidate, found
    return params
