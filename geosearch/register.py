"""Image registration: where a query picture lies inside a larger image, and how well it fits.

The second search stage (``geosearch.locate``) asks this of every shortlisted scene. Both
pictures become gradient-magnitude images (edges of fields, roads, shores: what survives a
change of year, season or sensor better than brightness does); the query's is slid over the
scene's with normalised cross-correlation (OpenCV ``matchTemplate``), at one scale when the
query's ground resolution is known and over a sweep of scales when it is not (a screenshot),
and under the eight rotations/mirrors when asked. The best peak gives the query's window in the
scene and a correlation in -1..1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from geosearch.orientation import IDENTITY, Orientation

# Gaussian blur (pixels, at the scene's resolution) before gradients: tolerance to the small
# misalignments and resampling differences between two acquisitions of a place.
BLUR_SIGMA = 1.5
# Templates smaller than this (pixels per side, after scaling) say too little to be placed.
MIN_TEMPLATE_SIDE = 24
# A placement counts only over at least this share of valid scene pixels (not over nodata).
MIN_VALID_SHARE = 0.5
# When several scales or orientations are tried, they are first compared at this fraction of
# the resolution; only the best is matched again at full resolution.
COARSE_FACTOR = 0.5
# Scales tried for a query of unknown ground resolution: scene pixels per query pixel.
SCALE_SWEEP = tuple(float(2 ** (k / 4)) for k in range(-4, 5))  # 0.5 .. 2, steps of 2^(1/4)
# Then the best is refined at full resolution over these factors (2^(1/16) apart, one sweep
# step either way).
REFINE_STEPS = tuple(float(2 ** (k / 16)) for k in range(-4, 5))


@dataclass(frozen=True)
class Registration:
    """The query's window in a scene: top-left corner (scene pixels), ``scale`` scene pixels
    per query pixel, the ``orientation`` applied to the query, the correlation there and its
    margin over the best placement elsewhere (how distinct the fit is)."""

    row: float
    col: float
    scale: float
    orientation: Orientation
    correlation: float
    margin: float  # correlation here minus the best elsewhere in the scene
    height: float  # the window's size in scene pixels (the turned, scaled query)
    width: float


def gradient_image(grey: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Gradient magnitude of a grey image (float32), invalid pixels filled with the valid mean
    first so that nodata edges do not look like features."""
    image = np.asarray(grey, dtype=np.float32)
    if valid is not None and not valid.all():
        image = image.copy()
        image[~valid] = float(image[valid].mean()) if valid.any() else 0.0
    image = cv2.GaussianBlur(image, (0, 0), BLUR_SIGMA)
    return cv2.magnitude(cv2.Sobel(image, cv2.CV_32F, 1, 0), cv2.Sobel(image, cv2.CV_32F, 0, 1))


def _resized(image: np.ndarray, factor: float) -> np.ndarray:
    """``image`` resized by ``factor`` (area averaging when shrinking)."""
    height, width = image.shape
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    if size == (width, height):
        return image
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation)


def _best(
    template: np.ndarray, scene: np.ndarray, valid: np.ndarray | None
) -> tuple[float, float, int, int]:
    """(correlation, margin, row, col) of the best placement of ``template`` in ``scene``; the
    margin is how much better it is than the best placement away from it (more than a quarter
    of the template's side off): a true match stands out, chance resemblance does not.
    Placements over less than ``MIN_VALID_SHARE`` valid scene pixels don't count."""
    scores = cv2.matchTemplate(scene, template, cv2.TM_CCOEFF_NORMED)
    np.nan_to_num(scores, copy=False, nan=-1.0, posinf=-1.0, neginf=-1.0)
    if valid is not None and not valid.all():
        scores[_valid_share(valid, template.shape) < MIN_VALID_SHARE] = -1.0
    _, peak, _, (col, row) = cv2.minMaxLoc(scores)
    radius = max(4, min(template.shape) // 4)
    scores[max(0, row - radius) : row + radius + 1, max(0, col - radius) : col + radius + 1] = -1.0
    elsewhere = cv2.minMaxLoc(scores)[1] if (scores > -1.0).any() else 0.0
    return float(peak), float(peak - elsewhere), row, col


def _valid_share(valid: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """For every placement of a ``shape`` window in ``valid``, the share of valid pixels under
    it (the layout of ``matchTemplate``'s result)."""
    height, width = shape
    total = cv2.integral(valid.astype(np.uint8)).astype(np.float64)
    inside = total[height:, width:] - total[:-height, width:] - total[height:, :-width]
    return (inside + total[:-height, :-width]) / (height * width)


def register(
    query: np.ndarray,
    query_valid: np.ndarray | None,
    scene: np.ndarray,
    scene_valid: np.ndarray | None,
    scales: Sequence[float],
    orientations: Sequence[Orientation] = (IDENTITY,),
) -> Registration | None:
    """The best placement of the grey ``query`` in the grey ``scene`` over ``scales`` (scene
    pixels per query pixel) and ``orientations``; None if the query can't fit at any scale.

    Several scales or orientations are first compared at ``COARSE_FACTOR`` of the resolution
    by their margin; the best scale is then refined at full resolution around where it
    matched."""
    scene_gradient = gradient_image(scene, scene_valid)
    trials = [(s, o) for s in scales for o in orientations]
    if len(trials) > 1:
        coarse_scene = _resized(scene_gradient, COARSE_FACTOR)
        coarse_valid = None
        if scene_valid is not None:
            coarse_valid = _resized(scene_valid.astype(np.float32), COARSE_FACTOR) > 0.5
        ranked = []
        for scale, orientation in trials:
            template = _template(query, query_valid, scale * COARSE_FACTOR, orientation)
            if template is None or not _fits(template, coarse_scene):
                continue
            _, margin, row, col = _best(template, coarse_scene, coarse_valid)
            centre = ((row + template.shape[0] / 2), (col + template.shape[1] / 2))
            ranked.append((margin, scale, orientation, centre))
        if not ranked:
            return None
        # By margin, not correlation: a smaller template correlates well in more places.
        _, scale, orientation, (row, col) = max(ranked, key=lambda trial: trial[0])
        centre = (row / COARSE_FACTOR, col / COARSE_FACTOR)
        if len(scales) > 1:
            scene_part = (scene_gradient, scene_valid)
            scale = _refined_scale(query, query_valid, scene_part, scale, orientation, centre)
    else:
        [(scale, orientation)] = trials
    template = _template(query, query_valid, scale, orientation)
    if template is None or not _fits(template, scene_gradient):
        return None
    correlation, margin, row, col = _best(template, scene_gradient, scene_valid)
    height, width = template.shape
    return Registration(row, col, scale, orientation, correlation, margin, height, width)


def _refined_scale(
    query: np.ndarray,
    valid: np.ndarray | None,
    scene: tuple[np.ndarray, np.ndarray | None],
    scale: float,
    orientation: Orientation,
    centre: tuple[float, float],
) -> float:
    """The scale among ``REFINE_STEPS`` around ``scale`` that matches best at full resolution
    near ``centre`` (scene pixels) where the coarse comparison put the query. ``scene``: its
    gradient image and validity."""
    gradient, scene_valid = scene
    best, best_scale = -2.0, scale
    for step in REFINE_STEPS:
        trial = scale * step
        template = _template(query, valid, trial, orientation)
        if template is None:
            continue
        height, width = template.shape
        pad = 0.1 * max(height, width) + 8
        top = max(0, round(centre[0] - height / 2 - pad))
        left = max(0, round(centre[1] - width / 2 - pad))
        rows = slice(top, round(centre[0] + height / 2 + pad))
        cols = slice(left, round(centre[1] + width / 2 + pad))
        crop = gradient[rows, cols]
        if not _fits(template, crop):
            continue
        crop_valid = scene_valid[rows, cols] if scene_valid is not None else None
        correlation = _best(template, crop, crop_valid)[0]
        if correlation > best:
            best, best_scale = correlation, trial
    return best_scale


def _template(
    query: np.ndarray, valid: np.ndarray | None, scale: float, orientation: Orientation
) -> np.ndarray | None:
    """The query's gradient image at ``scale`` under ``orientation``; None if too small."""
    resized = _resized(np.asarray(query, dtype=np.float32), scale)
    if min(resized.shape) < MIN_TEMPLATE_SIDE:
        return None
    mask = None
    if valid is not None and not valid.all():
        mask = _resized(valid.astype(np.float32), scale) > 0.5
    return orientation.apply(gradient_image(resized, mask))


def _fits(template: np.ndarray, scene: np.ndarray) -> bool:
    return template.shape[0] <= scene.shape[0] and template.shape[1] <= scene.shape[1]
