"""The code maps of the docs name every module, so a newcomer's map does not drift from the code."""

from __future__ import annotations

import pytest

from tests.support.cli import ROOT


def _map(page: str, heading: str) -> str:
    """The first fenced block after ``heading`` on a docs page."""
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    assert heading in text, f"docs/{page} lost its section {heading!r}"
    return text.split(heading, 1)[1].split("```", 2)[1]


def _modules(package: str, *, subpackages_by_name: bool) -> list[str]:
    """What a map of ``package`` must name: every module file, or, for a package whose map names
    its subpackages as a whole, its top-level modules and ``<subpackage>/``."""
    root = ROOT / package
    names = []
    for path in sorted(root.rglob("*.py")):
        inner = path.relative_to(root).parts
        if subpackages_by_name and len(inner) > 1:
            names.append(f"{inner[0]}/")
        elif path.name != "__init__.py":
            names.append(path.name)
    for path in sorted(p for p in root.iterdir() if (p / "__init__.py").is_file()):
        names.append(f"{path.name}/")
    return sorted(set(names))


@pytest.mark.parametrize(
    ("package", "page", "heading", "by_name"),
    [
        ("service", "architecture.md", "## Layers of the service", False),
        ("export", "offline.md", "### Where the code lives", True),
    ],
)
def test_every_module_is_on_its_map(package: str, page: str, heading: str, by_name: bool) -> None:
    block = _map(page, heading)
    names = _modules(package, subpackages_by_name=by_name)
    assert len(names) > 10  # the walk found the package
    missing = [name for name in names if name not in block]
    assert not missing, f"docs/{page} ({heading}) does not name: {missing}"


def test_a_module_the_map_lacks_is_reported() -> None:
    """The check can fail: a map without one of the service's modules names it."""
    block = _map("architecture.md", "## Layers of the service").replace("polling.py", "")
    names = _modules("service", subpackages_by_name=False)
    assert [name for name in names if name not in block] == ["polling.py"]
