"""The ``trainforge`` command line: parses, calls :mod:`trainforge` functions, prints."""
