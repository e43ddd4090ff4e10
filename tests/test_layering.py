"""Dependencies point one way: irgraph <- passes <- backends <- frontend (docs/architecture.md).

Every import of every module (top level or inside a function) is read with ``ast``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("irgraph", "passes", "backends", "frontend")
FORBIDDEN = {"irgraph": {"passes", "backends", "frontend"},
             "passes": {"backends", "frontend"},
             "backends": {"frontend"},
             "frontend": set()}


def imported_packages(path: Path, package: str) -> set[tuple[str, int]]:
    """Top-level packages ``path`` imports, with line numbers (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(a.name.split(".")[0], node.lineno) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.add((package, node.lineno))       # relative: stays in its package
            elif node.module:
                found.add((node.module.split(".")[0], node.lineno))
    return found


# The one exemption: irgraph/__main__.py makes `python -m irgraph` the `irgraph` command, an
# application entry point that sits above every layer (it only launches frontend.cli);
# nothing imports it, so the layering of the library is unchanged.
ENTRY_POINTS = {ROOT / "irgraph" / "__main__.py"}


def modules():
    return [(pkg, p) for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]


def test_every_package_has_modules():
    assert {pkg for pkg, _ in modules()} == set(PACKAGES)


@pytest.mark.parametrize("pkg,path", modules(), ids=lambda v: str(v).replace(str(ROOT), ""))
def test_imports_point_one_way(pkg, path):
    if path in ENTRY_POINTS:
        assert {name for name, _ in imported_packages(path, pkg)} <= {"frontend"}, \
            f"{path.relative_to(ROOT)} must only launch frontend.cli"
        return
    bad = sorted((name, line) for name, line in imported_packages(path, pkg)
                 if name in FORBIDDEN[pkg])
    assert not bad, (f"{path.relative_to(ROOT)} ({pkg}) imports "
                     + ", ".join(f"{n} at line {line}" for n, line in bad))


def test_checker_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from frontend import nn\n    import backends.llvm as b\n")
    assert imported_packages(f, "irgraph") == {("frontend", 2), ("backends", 3)}
