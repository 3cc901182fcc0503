"""The protocol families of bench/quality.py, one module each; ``common`` is what they share."""
