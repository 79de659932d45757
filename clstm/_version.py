"""The version of clstm, in one place: pyproject.toml reads it (without importing clstm)
and ``clstm.__version__`` re-exports it."""
__version__ = "0.1.0"
