"""Convolutional features: the shipped TFLite MobileNet v1 by default, or Keras applications.

TensorFlow is imported only inside the Keras loader, when such a model actually runs; the
default model runs on ai-edge-litert's interpreter (a few MB, no TensorFlow).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from geosearch.errors import ModelError
from geosearch.features.base import TileBatch
from geosearch.sources import file_sha256

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
INPUT_SIZE = 224


@dataclass(frozen=True)
class KerasBackbone:
    """A Keras application used as a feature extractor (no top, global average pooling)."""

    constructor: str  # attribute of keras.applications
    preprocess_module: str  # module of keras.applications holding preprocess_input
    cache_file: str  # the ImageNet "notop" weights file Keras downloads into its cache
    dim: int


KERAS_BACKBONES = {
    "vgg16": KerasBackbone(
        "VGG16", "vgg16", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", 512
    ),
    "resnet50": KerasBackbone(
        "ResNet50", "resnet50", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", 2048
    ),
    "efficientnetb0": KerasBackbone(
        "EfficientNetB0", "efficientnet", "efficientnetb0_notop.h5", 1280
    ),
}
TFLITE_MODELS = {"mobilenet_v1": "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"}


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weights (``$KERAS_HOME/models``, default ~/.keras/models)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null meanwhile (C++ logging bypasses Python)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _resized_rgb(batch: TileBatch) -> np.ndarray:
    """(n, 224, 224, 3) uint8: each tile's RGB composite resized for the network."""
    out = np.empty((len(batch), INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    for i in range(len(batch)):
        image = Image.fromarray(batch.rgb_uint8(i), "RGB")
        out[i] = np.asarray(image.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR))
    return out


class TfliteCnnExtractor:
    """A quantised TFLite embedding model run with ai-edge-litert, in batches."""

    name = "cnn"
    band_use = "rgb"
    # Centred only: scaling each of its dimensions to unit variance amplifies the many quiet
    # ones, where noise lives (EuroSAT mAP@R 0.44 centred, 0.26 standardised in the fused
    # vector: bench/README.md "Kinds of places")
    standardisation = "centred"

    def __init__(self, model: str, threads: int, batch_size: int) -> None:
        self.model_path = MODELS_DIR / TFLITE_MODELS[model]
        if not self.model_path.is_file():
            raise ModelError(
                f"model file {self.model_path} is missing: reinstall geosearch "
                "(it ships inside the package)"
            )
        self.model = model
        self.threads = threads or os.cpu_count() or 1
        self.batch_size = batch_size
        self.weights_checksum = file_sha256(self.model_path)[:16]
        self.version = f"{model}-{self.weights_checksum}"
        self.dim = 1024
        self._interpreter = None

    def _load(self):
        from ai_edge_litert.interpreter import Interpreter

        with _native_stderr_silenced():  # the runtime prints an INFO line on stderr
            interpreter = Interpreter(model_path=str(self.model_path), num_threads=self.threads)
        self._input = interpreter.get_input_details()[0]
        self._output = interpreter.get_output_details()[0]
        self._batch = 0
        return interpreter

    def extract(self, batch: TileBatch) -> np.ndarray:
        if self._interpreter is None:
            self._interpreter = self._load()
        images = _resized_rgb(batch)
        out = np.empty((len(batch), self.dim), dtype=np.float32)
        for start in range(0, len(batch), self.batch_size):
            chunk = images[start : start + self.batch_size]
            out[start : start + len(chunk)] = self._run(chunk)
        return out

    def _run(self, images: np.ndarray) -> np.ndarray:
        interpreter = self._interpreter
        if self._batch != len(images):
            interpreter.resize_tensor_input(self._input["index"], list(images.shape))
            with _native_stderr_silenced():  # XNNPACK announces itself here
                interpreter.allocate_tensors()
            self._batch = len(images)
        interpreter.set_tensor(self._input["index"], images)
        interpreter.invoke()
        raw = interpreter.get_tensor(self._output["index"]).reshape(len(images), -1)
        scale, zero_point = self._output["quantization"]
        return (raw.astype(np.float32) - zero_point) * scale


class KerasCnnExtractor:
    """A Keras application with ImageNet weights, from a file, the Keras cache or a download."""

    name = "cnn"
    band_use = "rgb"
    # Centred only: scaling each of its dimensions to unit variance amplifies the many quiet
    # ones, where noise lives (EuroSAT mAP@R 0.44 centred, 0.26 standardised in the fused
    # vector: bench/README.md "Kinds of places")
    standardisation = "centred"

    def __init__(
        self, model: str, weights: Path | None, download: bool, threads: int, batch_size: int
    ) -> None:
        self.model = model
        self.backbone = KERAS_BACKBONES[model]
        self.weights_path = self._weights_file(weights, download)
        self.threads = threads
        self.batch_size = batch_size
        self._network = None
        if self.weights_path is None:  # download into the Keras cache now, then use that file
            self._network = self._load()
            self.weights_path = keras_cache_dir() / self.backbone.cache_file
        self.weights_checksum = file_sha256(self.weights_path)[:16]
        self.version = f"{model}-{self.weights_checksum}"
        self.dim = self.backbone.dim

    def _weights_file(self, configured: Path | None, download: bool) -> Path | None:
        """The weights file to load; None means let Keras download them now."""
        if configured is not None:
            path = Path(configured).expanduser()
            if not path.is_file():
                raise ModelError(
                    f"features.cnn.weights: {path} does not exist (the {self.model} ImageNet "
                    f"weights file {self.backbone.cache_file})"
                )
            return path
        cached = keras_cache_dir() / self.backbone.cache_file
        if cached.is_file():
            return cached
        if download:
            return None
        raise ModelError(
            f"{self.model} needs its ImageNet weights {self.backbone.cache_file}: put the file "
            f"in {keras_cache_dir()} or set features.cnn.weights to its path "
            "(or allow features.cnn.download when online)"
        )

    def _load(self):
        # GDAL (pyogrio's, which creates databases) before TensorFlow: TensorFlow brings its own
        # SQLite without R-tree support, and libraries loaded after it would bind to that one.
        import pyogrio  # noqa: F401

        try:
            import keras
        except ImportError:
            raise ModelError(
                f"the {self.model} model needs TensorFlow: pip install 'geosearch[keras]'"
            ) from None
        import tensorflow as tf

        if self.threads:
            tf.config.threading.set_intra_op_parallelism_threads(self.threads)
        constructor = getattr(keras.applications, self.backbone.constructor)
        weights = str(self.weights_path) if self.weights_path else "imagenet"
        try:
            network = constructor(
                include_top=False,
                weights=weights,
                pooling="avg",
                input_shape=(INPUT_SIZE, INPUT_SIZE, 3),
            )
        except Exception as exc:  # download failure, wrong or damaged file
            where = self.weights_path or keras_cache_dir() / self.backbone.cache_file
            raise ModelError(
                f"cannot load {self.model} ImageNet weights ({where}): {str(exc).splitlines()[0]}"
                f"; put {self.backbone.cache_file} in {keras_cache_dir()} or set "
                "features.cnn.weights"
            ) from None
        module = getattr(keras.applications, self.backbone.preprocess_module)
        self._preprocess = module.preprocess_input
        return network

    def extract(self, batch: TileBatch) -> np.ndarray:
        if self._network is None:
            self._network = self._load()
        images = self._preprocess(_resized_rgb(batch).astype(np.float32))
        features = self._network.predict(images, batch_size=self.batch_size, verbose=0)
        return np.asarray(features, dtype=np.float32)


@lru_cache(maxsize=4)
def cnn_extractor(
    model: str, weights: Path | None, download: bool, threads: int, batch_size: int
) -> TfliteCnnExtractor | KerasCnnExtractor:
    """The CNN extractor for these settings, loaded once per process."""
    if model in TFLITE_MODELS:
        return TfliteCnnExtractor(model, threads, batch_size)
    return KerasCnnExtractor(model, weights, download, threads, batch_size)
