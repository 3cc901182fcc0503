"""Relevance feedback: move the query toward tiles marked relevant and away from the others.

Rocchio: q' = alpha q + beta mean(good) - gamma mean(bad), renormalised. The classifier
method trains a logistic regression on the marked vectors (the query counts as relevant) and
re-ranks Rocchio's candidates by its probability; "both" averages that with the cosine.
"""

from __future__ import annotations

import numpy as np

from geosearch.config import FeedbackSettings


def rocchio(
    query: np.ndarray, good: np.ndarray, bad: np.ndarray, settings: FeedbackSettings
) -> np.ndarray:
    """The moved query vector, unit length."""
    moved = settings.alpha * query.astype(np.float64)
    if len(good):
        moved += settings.beta * good.mean(axis=0)
    if len(bad):
        moved -= settings.gamma * bad.mean(axis=0)
    norm = np.linalg.norm(moved)
    return (moved / norm if norm > 0 else query).astype(np.float32)


def rerank_scores(
    query: np.ndarray,
    good: np.ndarray,
    bad: np.ndarray,
    candidates: np.ndarray,
    cosine: np.ndarray,
    settings: FeedbackSettings,
) -> np.ndarray:
    """Scores to rank ``candidates`` by under the configured method (higher is better)."""
    if settings.method == "rocchio" or not len(bad):
        return cosine  # a classifier needs both kinds of example
    from sklearn.linear_model import LogisticRegression  # slow to import; only needed here

    positives = np.vstack([query[None, :], good]) if len(good) else query[None, :]
    features = np.vstack([positives, bad])
    labels = np.r_[np.ones(len(positives)), np.zeros(len(bad))]
    model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=200)
    model.fit(features, labels)
    probability = model.predict_proba(candidates)[:, 1]
    if settings.method == "classifier":
        return probability
    return 0.5 * (cosine + 1.0) / 2.0 + 0.5 * probability
