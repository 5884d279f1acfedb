"""The export package's layering contract covers every module, so none escapes it unnoticed."""

from __future__ import annotations

import pkgutil
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - pytest brings tomli on Python 3.10
    import tomli as tomllib

import export

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _export_layers() -> list[list[str]]:
    config = tomllib.loads(PYPROJECT.read_text("utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    (layers,) = [
        c["layers"] for c in contracts if c["type"] == "layers" and "export" in c["layers"][0]
    ]
    return [re.split(r"\s*[|:]\s*", layer) for layer in layers]


def test_every_export_module_sits_in_one_layer() -> None:
    listed = [name for layer in _export_layers() for name in layer]
    assert len(listed) == len(set(listed)), "a module is listed in two layers"
    modules = {f"export.{m.name}" for m in pkgutil.iter_modules(export.__path__)}
    assert set(listed) == modules, (
        f"not in a layer: {sorted(modules - set(listed))}; "
        f"listed but gone: {sorted(set(listed) - modules)}"
    )


def test_the_commands_are_on_top_and_the_nets_and_data_at_the_bottom() -> None:
    layers = _export_layers()
    assert layers[0] == ["export.__main__"]
    # with the device texts, which training writes and the report reads
    assert set(layers[-1]) == {"export.models", "export.data", "export.devices"}
