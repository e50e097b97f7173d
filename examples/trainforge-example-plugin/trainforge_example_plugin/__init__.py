"""trainforge-example-plugin: a residual MLP, the Lion optimizer and the two-moons dataset.

Each module is registered under the ``trainforge`` entry-point group (see ``pyproject.toml``).
"""

__version__ = "0.1.0"
