"""The version of geosearch (also in pyproject.toml); ``geosearch.__version__``."""

__version__ = "0.1.0"
