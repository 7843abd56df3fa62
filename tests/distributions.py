"""Installed-looking test distributions: a dist-info folder with entry points, on sys.path."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

from tokenomy.model.registry import ENTRY_POINT_GROUP

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tokenomy_energy"


def install_distribution(site: Path, monkeypatch, name: str, entry_points: dict[str, str],
                         modules: dict[str, str] | None = None) -> Path:
    """Write ``name``'s metadata and modules into ``site`` and put ``site`` on sys.path.

    ``importlib.metadata`` then lists ``entry_points`` in the group
    ``tokenomy.extensions``, as it would for a package installed with pip.
    """
    site.mkdir(parents=True, exist_ok=True)
    dist_info = site / f"{name.replace('-', '_')}-0.1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n", encoding="utf-8")
    lines = [f"[{ENTRY_POINT_GROUP}]"] + [f"{key} = {value}" for key, value in entry_points.items()]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for module, text in (modules or {}).items():
        (site / f"{module}.py").write_text(text, encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    return site


def install_example(site: Path, monkeypatch) -> Path:
    """Install the example extension's metadata from its pyproject.toml; its code stays in examples/."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    install_distribution(site, monkeypatch, project["name"],
                         project["entry-points"][ENTRY_POINT_GROUP])
    monkeypatch.syspath_prepend(str(EXAMPLE))
    return site
