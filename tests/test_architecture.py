"""The import graph keeps its layers (ARCHITECTURE.md, issue 8): arrows point down only.

Features (``mixer``, ``wallets``, ``otc``) are peers: none imports another. The shared layers
(``chains``, ``keys``, ``watch``, ``db`` and the base modules) import no feature and no shell.
Only the shells (``cli``, ``api``, ``web``) and ``app`` itself import the wiring in ``app``.
Read from the source with :mod:`ast`, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mixhouse"
FEATURES = {"mixer", "wallets", "otc"}
SHARED = {"chains", "keys", "watch", "db", "money", "errors", "config", "clock", "audit", "jobs", "unit"}
SHELLS = {"cli", "api", "web", "app", "__main__"}


def _imports() -> list[tuple[str, str, str]]:
    """``(importing top-level part, imported top-level part, file)`` for every mixhouse import."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        source = parts[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                pieces = name.split(".")
                if pieces[0] == "mixhouse" and len(pieces) > 1 and pieces[1] != source:
                    found.append((source, pieces[1], str(path.relative_to(PACKAGE))))
    return found


def test_the_graph_is_read() -> None:
    # The check below means nothing if the walk finds no imports at all.
    edges = {(a, b) for a, b, _ in _imports()}
    assert ("mixer", "chains") in edges
    assert ("app", "mixer") in edges


def test_features_do_not_import_one_another() -> None:
    bad = [(a, b, f) for a, b, f in _imports() if a in FEATURES and b in FEATURES]
    assert bad == []


def test_shared_layers_import_no_feature_nor_shell() -> None:
    bad = [(a, b, f) for a, b, f in _imports() if a in SHARED and (b in FEATURES or b in SHELLS)]
    assert bad == []


def test_only_shells_import_the_wiring() -> None:
    bad = [(a, b, f) for a, b, f in _imports() if b == "app" and a not in SHELLS]
    assert bad == []
