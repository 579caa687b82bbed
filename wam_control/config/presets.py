"""Locate the shipped presets (config/*.yaml) in a source tree, a pip install or a colcon install."""

from __future__ import annotations

import sys
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[2]


def share_dir() -> Path:
    """The folder holding config/, models/ and launch/: the source tree, else <prefix>/share/wam_control."""
    if (_REPO_ROOT / "config").is_dir() and (_REPO_ROOT / "package.xml").is_file():
        return _REPO_ROOT
    for prefix in (Path(sys.prefix), Path(sys.base_prefix)):
        candidate = prefix / "share" / "wam_control"
        if candidate.is_dir():
            return candidate
    try:  # colcon / ament install
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("wam_control"))
    except Exception:  # ament_index missing, or the package is not in the index: fall through
        return _REPO_ROOT


def preset_path(name: str) -> Path:
    """`preset_path("fr3")` -> .../config/fr3.yaml; a path that exists is returned unchanged."""
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml") and as_path.exists():
        return as_path
    candidate = share_dir() / "config" / f"{name}.yaml"
    if not candidate.exists():
        available = sorted(p.stem for p in (share_dir() / "config").glob("*.yaml"))
        raise FileNotFoundError(
            f"no preset '{name}' (looked for {candidate}); available: {', '.join(available)}"
        )
    return candidate


def model_path(name: str) -> Path:
    return share_dir() / "models" / name
