"""``python -m geosearch``: the same as the ``geosearch`` command."""

from geosearch.cli import main

main()
