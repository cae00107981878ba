"""drip: an email drip-course pipeline."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("drip")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
