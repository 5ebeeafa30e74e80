"""MkDocs hook: lay out ``ganserve.clients`` where the API reference's loader looks.

The distribution maps top-level folders into one namespace (pyproject.toml's
``package-dir``: ``clients/`` is ``ganserve.clients``). The import system follows that
mapping, but mkdocstrings' static loader (griffe) finds submodules as folders under the
package, and there is no ``ganserve/clients/``. So before the build this hook lays out
``build/docs-api/ganserve/``: links to every entry of ``ganserve/`` plus ``clients`` ->
``clients/``; mkdocs.yml points the Python handler's ``paths`` at ``build/docs-api``.
Nothing is copied, and nothing is imported: the reference is read from the sources.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority

LAYOUT = "build/docs-api"
MAPPED = {"clients": "clients"}  # ganserve.<name> -> folder, as in pyproject's package-dir


@event_priority(100)  # before mkdocstrings' on_config, which resolves the handler's paths
def on_config(config: Any, **kwargs: Any) -> Any:
    root = Path(config.config_file_path).resolve().parent
    package = root / LAYOUT / "ganserve"
    if package.exists():
        shutil.rmtree(package)
    package.mkdir(parents=True)
    links = {entry.name: entry for entry in (root / "ganserve").iterdir()}
    links.update({name: root / folder for name, folder in MAPPED.items()})
    for name, target in links.items():
        if name != "__pycache__":
            (package / name).symlink_to(os.path.relpath(target, package))
    return config
