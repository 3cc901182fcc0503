"""Keras backbones: weights from a configured file (made here), clear errors when missing."""

from __future__ import annotations

import numpy as np
import pytest

import geosearch
from geosearch.config import Settings
from geosearch.features.cnn import KERAS_BACKBONES
from geosearch.store import Store
from tests.conftest import textured, write_geotiff

keras = pytest.importorskip(
    "keras", reason="the keras extra (tensorflow) is installed by make test"
)


@pytest.fixture(scope="module")
def efficientnet_weights(tmp_path_factory):
    """Real EfficientNetB0 weights (random init, saved by Keras) standing in for ImageNet ones."""
    path = tmp_path_factory.mktemp("weights") / "efficientnetb0_notop.weights.h5"
    model = keras.applications.EfficientNetB0(
        include_top=False, weights=None, pooling="avg", input_shape=(224, 224, 3)
    )
    model.save_weights(path)
    return path


def test_keras_model_runs_from_a_configured_weights_file(tmp_path, efficientnet_weights):
    folder = tmp_path / "tiles"
    for seed in range(3):
        write_geotiff(folder / f"t{seed}.tif", textured((3, 96, 96), seed=seed))
    settings = Settings().with_overrides(
        {
            "features.cnn.model": "efficientnetb0",
            "features.cnn.weights": str(efficientnet_weights),
            "vectors.raw_features": True,  # kept, to look at the network's output below
        }
    )
    db = tmp_path / "db.gpkg"
    report = geosearch.ingest([folder], db, settings)
    assert report.tiles_added == 3
    facts = geosearch.info(db, settings)
    cnn = next(e for e in facts["extractors"] if e["name"] == "cnn")
    assert cnn["dim"] == KERAS_BACKBONES["efficientnetb0"].dim == 1280
    assert cnn["version"].startswith("efficientnetb0-")
    with Store(db) as store:
        _, raw = store.vectors(column="features")
    assert raw.shape == (3, 3 * 15 + 3 * 16 * 16 + 1280) and np.isfinite(raw).all()
    assert raw[:, -1280:].std(axis=0).max() > 0  # the network responds to its input
    [result] = geosearch.similar(db, [folder / "t0.tif"], top=2, settings=settings)
    assert len(result.matches) == 2


def test_missing_weights_offline_name_the_file_and_where_it_goes(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    settings = Settings().with_overrides(
        {"features.cnn.model": "vgg16", "features.cnn.download": False}
    )
    raster = write_geotiff(tmp_path / "t.tif", textured((3, 64, 64), seed=1))
    with pytest.raises(geosearch.ModelError) as caught:
        geosearch.ingest([raster], tmp_path / "db.gpkg", settings)
    message = str(caught.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "keras-home" / "models") in message and "features.cnn.weights" in message


def test_configured_weights_path_that_does_not_exist(tmp_path):
    settings = Settings().with_overrides(
        {"features.cnn.model": "resnet50", "features.cnn.weights": str(tmp_path / "nope.h5")}
    )
    raster = write_geotiff(tmp_path / "t.tif", textured((3, 64, 64), seed=1))
    with pytest.raises(geosearch.ModelError, match="nope.h5 does not exist"):
        geosearch.ingest([raster], tmp_path / "db.gpkg", settings)
