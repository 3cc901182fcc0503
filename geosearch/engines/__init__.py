"""Schedulers for the per-tile work: ``local`` (this machine) and, later, ``spark``."""
