"""drip: an email drip-course pipeline."""

# The package version (pyproject.toml reads it from here). A literal, not
# importlib.metadata: that import alone cost 0.1-0.2 s of every `drip` command's start-up.
__version__ = "0.1.0"
