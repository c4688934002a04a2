"""The ``lens`` extra: TransformerLens >= 4.3, < 5, imported only when asked for."""

from __future__ import annotations

from importlib import metadata
from types import ModuleType

from probes.errors import UserError

SUPPORTED = ((4, 3), (5, 0))  # [lowest, first unsupported) major.minor
INSTALL = "pip install 'fusionlens[lens]'"


def _major_minor(version: str) -> tuple[int, int]:
    parts = [int("".join(ch for ch in part if ch.isdigit()) or 0) for part in version.split(".")[:2]]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def require_transformer_lens() -> ModuleType:
    """The ``transformer_lens`` module, or one sentence naming the extra to install.

    >>> require_transformer_lens().__name__
    'transformer_lens'
    """
    try:
        import transformer_lens
    except ImportError as err:
        raise UserError(
            "probes.lens needs the TransformerLens extra, which is not installed: "
            f"{INSTALL} (transformer-lens>=4.3,<5)."
        ) from err
    version = metadata.version("transformer-lens")
    low, high = SUPPORTED
    if not low <= _major_minor(version) < high:
        raise UserError(
            f"probes.lens supports transformer-lens>=4.3,<5 but {version} is installed; "
            f"{INSTALL} installs a supported version."
        )
    return transformer_lens
