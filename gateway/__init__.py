"""ems-gateway: site energy management gateway for EV charging."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ems-gateway")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"
