"""The nnsight versions the engine is tested with, checked without importing nnsight (an
nnsight outside the range may not even import the names the engine uses).

>>> check_version("0.8.1")
>>> check_version("0.9.0")
Traceback (most recent call last):
...
probes.errors.UserError: the nnsight engine needs nnsight>=0.8.1,<0.9 but this environment has nnsight 0.9.0; pip install 'nnsight>=0.8.1,<0.9'.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from probes.errors import UserError

SUPPORTED = ">=0.8.1,<0.9"  # tested at both ends: constraints-lowest.txt pins 0.8.1


def check_version(installed: str | None = None) -> None:
    """Refuse, in one sentence, an nnsight outside :data:`SUPPORTED` (``installed``: the
    version to judge; default: the installed one)."""
    if installed is None:
        try:
            installed = package_version("nnsight")
        except PackageNotFoundError:
            installed = "none"
    try:
        supported = Version(installed) in SpecifierSet(SUPPORTED)
    except InvalidVersion:
        supported = False
    if not supported:
        raise UserError(f"the nnsight engine needs nnsight{SUPPORTED} but this environment has "
                        f"nnsight {installed}; pip install 'nnsight{SUPPORTED}'.")
