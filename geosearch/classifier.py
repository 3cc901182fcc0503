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
        logits = np.clip(self.decision(vectors), -60.0, 60.0)
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def train_classifier(
    positives: np.ndarray,
    negatives: np.ndarray,
    background: np.ndarray,
    *,
    background_weight: float = 1.0,
    c: float = 1.0,
) -> TileClassifier:
    """A logistic regression of ``positives`` against ``negatives`` and the ``background``
    sample, classes balanced, each background row weighing ``background_weight`` of a mark.

    ConfigError without a positive, or with neither negatives nor background to learn from."""
    from sklearn.linear_model import LogisticRegression  # slow to import; only needed here

    if not len(positives):
        raise ConfigError("no tile marked good: mark at least one with --good")
    if not len(negatives) and not len(background):
        raise ConfigError(
            "only good marks, and no other tile in the database to sample as background: "
            "mark some tiles bad with --bad"
        )
    dim = positives.shape[1]
    parts = [np.asarray(p, dtype=np.float32).reshape(-1, dim) for p in (positives, negatives)]
    parts.append(np.asarray(background, dtype=np.float32).reshape(-1, dim))
    features = np.vstack(parts)
    labels = np.r_[np.ones(len(parts[0])), np.zeros(len(parts[1]) + len(parts[2]))]
    weights = np.r_[
        np.ones(len(parts[0]) + len(parts[1])), np.full(len(parts[2]), background_weight)
    ]
    # balanced: each class weighs the same in all (background counted at its weight)
    positive_total = weights[labels == 1].sum()
    negative_total = weights[labels == 0].sum()
    weights[labels == 1] *= len(weights) / (2 * positive_total)
    weights[labels == 0] *= len(weights) / (2 * negative_total)
    model = LogisticRegression(C=c, max_iter=1000)
    model.fit(features, labels, sample_weight=weights)
    return TileClassifier(
        model.coef_[0].astype(np.float32), float(model.intercept_[0]), len(parts[0]),
        len(parts[1]), len(parts[2]),
    )  # fmt: skip
