"""kerasport: train in Keras, deploy elsewhere.

The core package stays free of TensorFlow so that `kerasport --help` and the serving process start fast.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kerasport")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
