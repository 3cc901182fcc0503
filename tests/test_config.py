"""config.yaml: the shipped file is valid and equals the defaults; bad files get clear errors."""

from __future__ import annotations

import pytest

from geosearch.config import Settings, load_settings
from geosearch.errors import ConfigError
from tests.conftest import ROOT


def test_shipped_config_documents_exactly_the_defaults():
    assert load_settings(ROOT / "config.yaml") == Settings()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tile_sise: 128\n", "unknown setting 'tile_sise'"),
        ("features:\n  cnn:\n    model: alexnet\n", "features.cnn.model: Input should be"),
        ("bands:\n  rgb: [1, 2]\n", "bands.rgb: Value error, give exactly three bands"),
        ("max_nodata_fraction: 2\n", "max_nodata_fraction: Input should be less than or equal"),
        ("[1, 2]\n", "expected a mapping"),
        ("a: [\n", "not valid YAML at line"),
        ("!!python/object/apply:os.system ['true']\n", "not valid YAML"),
    ],
)
def test_bad_config_is_one_clear_message(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_overrides_are_validated_too():
    assert Settings().with_overrides({"tile_size": 128}).tile_size == 128
    with pytest.raises(ConfigError, match="tile_size"):
        Settings().with_overrides({"tile_size": 0})
