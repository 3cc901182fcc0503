"""The one classifier of marked tiles: a logistic regression on the stored vectors.

Trained on the tiles marked good (and any query vector counted as one) against the tiles marked
bad and a background sample of the database: most tiles are not what was marked, so a few
hundred random tiles are fair negatives, each weighed less than a mark (it may be a positive
nobody marked). Being linear, it scores a batch of vectors with one matrix product, so scoring a
whole database costs about what reading its vectors does. Used by feedback re-ranking
(``geosearch.feedback``) and by ``detect`` (``geosearch.detection``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController

from geosearch.errors import ConfigError


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
    penalised): scikit-learn's ``LogisticRegression(C=c)``, without its 0.6-2 s import."""
    from scipy.optimize import minimize
    from scipy.special import expit

    def loss_and_gradient(params: np.ndarray) -> tuple[float, np.ndarray]:
        w, bias = params[:-1], params[-1]
        z = features @ w + bias
        loss = c * float(weights @ (np.logaddexp(0.0, z) - labels * z)) + 0.5 * float(w @ w)
        residual = c * weights * (expit(z) - labels)
        return loss, np.r_[features.T @ residual + w, residual.sum()]

    start = np.zeros(features.shape[1] + 1)
    with _blas().limit(limits=1, user_api="blas"):  # BLAS's threads: 10-30x slower when busy
        found = minimize(loss_and_gradient, start, jac=True, method="L-BFGS-B",
                         options={"maxiter": 1000, "gtol": 1e-6})  # fmt: skip
    return found.x


@functools.cache
def _blas() -> ThreadpoolController:
    """The process's BLAS libraries, looked up once (2-20 ms a look on a busy machine)."""
    return ThreadpoolController()
