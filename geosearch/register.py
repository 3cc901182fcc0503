"""Image registration: where a query picture lies inside a larger image, and how well it fits.

The second search stage (``geosearch.locate``) asks this of every shortlisted scene. Both
pictures become gradient-magnitude images (edges of fields, roads, shores: what survives a
change of year, season or sensor better than brightness does); the query's is slid over the
scene's with normalised cross-correlation (OpenCV ``matchTemplate``), at one scale when the
query's ground resolution is known and over a sweep of scales when it is not (a screenshot),
and under the eight rotations/mirrors when asked. The best peak gives the query's window in the
scene and a correlation in -1..1.

How sure a peak is comes from the pictures' own texture (``independent_pixels``): neighbouring
gradient pixels are not independent, and by Bartlett's formula the chance correlation of two
unrelated pictures has a variance of (sum over lags of their autocorrelations' product) / pixels.
The query's own autocorrelation stands in for both (a scene's would cost an FFT of every
region searched). A query of broad, smooth structure (water, haze, cloud, one shore) has few
independent pixels, so chance alone gives it high correlations; a query rich in small edges
has many. Gradient images are spiky (a few strong edges carry most of the variance), which
makes chance's tail heavier than a Gaussian's: the count is divided by the template's kurtosis
over a Gaussian's (3), so that one road across a field counts for little.

A peak is then judged against the best placement elsewhere in the same region, in these units
(``Registration.sigmas_over_elsewhere``): chance correlations of aerial pictures are
heavy-tailed and repeat where the ground does, so an absolute bar (what the best of that many
independent placements reaches by chance) turned away true NAIP chips of poor texture and was
not needed against the wrong fits measured; the gap to the neighbours separates the two
(``bench/protocols/placements.py``).
"""

from __future__ import annotations

import math
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
# Then the best is refined at full resolution over these factors (2^(1/16) apart, half a
# sweep step either way).
REFINE_STEPS = tuple(float(2 ** (k / 16)) for k in range(-2, 3))
# Autocorrelations are summed out to this share of the template's shorter side (Bartlett's
# formula; further lags are too noisy to estimate from one picture).
AUTOCORRELATION_REACH = 0.25


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
    elsewhere: float = 0.0  # the best correlation away from the peak
    independent_pixels: float = 1.0  # of the query against this scene (see module docstring)

    @property
    def sigmas(self) -> float:
        """The correlation as standard deviations of chance (Fisher's z times the square root
        of the independent pixels)."""
        return fisher_sigmas(self.correlation, self.independent_pixels)

    @property
    def sigmas_over_elsewhere(self) -> float:
        """How far the peak stands above the best placement elsewhere, in the same units."""
        return self.sigmas - fisher_sigmas(self.elsewhere, self.independent_pixels)


def fisher_sigmas(correlation: float, independent_pixels: float) -> float:
    """A correlation as standard deviations of the chance correlation of unrelated pictures
    with ``independent_pixels`` (Fisher's transform: atanh(r) x sqrt(n - 3))."""
    r = min(max(correlation, -0.999999), 0.999999)
    return math.atanh(r) * math.sqrt(max(independent_pixels - 3.0, 1.0))


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


def best_placement(
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


def texture_of(template: np.ndarray) -> tuple[float, float]:
    """(pixels per independent sample, spikiness) of a gradient template: the sum over lags
    of its squared normalised autocorrelation (Bartlett's formula, taking the scene's texture
    to be like the query's), at least 1, and its kurtosis over a Gaussian's, at least 1."""
    reach = max(1, int(AUTOCORRELATION_REACH * min(template.shape)))
    cell = max(1.0, float(np.sum(_autocorrelation(template, reach) ** 2)))
    return cell, max(1.0, _kurtosis(template) / 3.0)


def _kurtosis(image: np.ndarray) -> float:
    """The fourth standardised moment of an image's values (3 for Gaussian ones)."""
    values = np.asarray(image, dtype=np.float64)
    centred = values - values.mean()
    variance = float(np.mean(centred**2))
    return float(np.mean(centred**4)) / variance**2 if variance > 0 else 3.0


def _autocorrelation(image: np.ndarray, reach: int) -> np.ndarray:
    """Normalised autocorrelation (biased estimate, 1 at lag 0) at lags -reach..reach."""
    values = np.asarray(image, dtype=np.float64)
    values = values - values.mean()
    height, width = values.shape
    spectrum = np.fft.rfft2(values, s=(height + reach, width + reach))
    circular = np.fft.irfft2(spectrum * np.conj(spectrum), s=(height + reach, width + reach))
    if circular[0, 0] <= 0:  # a flat picture: nothing correlates, one sample
        out = np.zeros((2 * reach + 1, 2 * reach + 1))
        out[reach, reach] = 1.0
        return out
    lags = np.r_[-reach : reach + 1]
    return circular[np.ix_(lags, lags)] / circular[0, 0]


def _valid_share(valid: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """For every placement of a ``shape`` window in ``valid``, the share of valid pixels under
    it (the layout of ``matchTemplate``'s result)."""
    height, width = shape
    total = cv2.integral(valid.astype(np.uint8)).astype(np.float64)
    inside = total[height:, width:] - total[:-height, width:] - total[height:, :-width]
    return (inside + total[:-height, :-width]) / (height * width)


class QueryPicture:
    """A grey query picture and its gradient templates, made once per scale and orientation
    however many scenes it is registered in."""

    def __init__(self, grey: np.ndarray, valid: np.ndarray | None = None) -> None:
        self.grey = np.asarray(grey, dtype=np.float32)
        self.valid = valid if valid is not None and not valid.all() else None
        self._templates: dict[tuple[float, Orientation], np.ndarray | None] = {}
        self._textures: dict[float, tuple[float, float]] = {}

    @property
    def shape(self) -> tuple[int, int]:
        return self.grey.shape

    def template(self, scale: float, orientation: Orientation) -> np.ndarray | None:
        """The gradient image at ``scale`` under ``orientation``; None if too small."""
        key = (round(scale, 6), orientation)
        if key not in self._templates:
            resized = _resized(self.grey, scale)
            template = None
            if min(resized.shape) >= MIN_TEMPLATE_SIDE:
                mask = None
                if self.valid is not None:
                    mask = _resized(self.valid.astype(np.float32), scale) > 0.5
                template = orientation.apply(gradient_image(resized, mask))
            self._templates[key] = template
        return self._templates[key]

    def texture(self, scale: float) -> tuple[float, float]:
        """``texture_of`` the template at ``scale`` (turns change neither)."""
        key = round(scale, 6)
        if key not in self._textures:
            self._textures[key] = texture_of(self.template(scale, IDENTITY))
        return self._textures[key]

    def independent_pixels(self, scale: float) -> float:
        """How many independent pixels the query has at ``scale`` (see the module docstring)."""
        height, width = self.template(scale, IDENTITY).shape
        valid = float(self.valid.mean()) if self.valid is not None else 1.0
        cell, spikiness = self.texture(scale)
        return height * width * valid / (cell * spikiness)


def register(
    query: QueryPicture,
    scene: np.ndarray,
    scene_valid: np.ndarray | None,
    scales: Sequence[float],
    orientations: Sequence[Orientation] = (IDENTITY,),
) -> Registration | None:
    """The best placement of the ``query`` picture in the grey ``scene`` over ``scales`` (scene
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
            template = query.template(scale * COARSE_FACTOR, orientation)
            if template is None or not _fits(template, coarse_scene):
                continue
            _, margin, row, col = best_placement(template, coarse_scene, coarse_valid)
            centre = ((row + template.shape[0] / 2), (col + template.shape[1] / 2))
            ranked.append((margin, scale, orientation, centre))
        if not ranked:
            return None
        # By margin, not correlation: a smaller template correlates well in more places.
        _, scale, orientation, (row, col) = max(ranked, key=lambda trial: trial[0])
        centre = (row / COARSE_FACTOR, col / COARSE_FACTOR)
        if len(scales) > 1:
            scene_part = (scene_gradient, scene_valid)
            scale = _refined_scale(query, scene_part, scale, orientation, centre)
    else:
        [(scale, orientation)] = trials
    template = query.template(scale, orientation)
    if template is None or not _fits(template, scene_gradient):
        return None
    correlation, margin, row, col = best_placement(template, scene_gradient, scene_valid)
    height, width = template.shape
    return Registration(
        row,
        col,
        scale,
        orientation,
        correlation,
        margin,
        height,
        width,
        elsewhere=correlation - margin,
        independent_pixels=query.independent_pixels(scale),
    )


def _refined_scale(
    query: QueryPicture,
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
        template = query.template(trial, orientation)
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
        correlation = best_placement(template, crop, crop_valid)[0]
        if correlation > best:
            best, best_scale = correlation, trial
    return best_scale


def _fits(template: np.ndarray, scene: np.ndarray) -> bool:
    return template.shape[0] <= scene.shape[0] and template.shape[1] <= scene.shape[1]
