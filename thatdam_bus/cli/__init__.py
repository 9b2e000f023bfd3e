"""Command-line entry points: ``thatdam`` (up, tail) and ``bus-tail``."""
