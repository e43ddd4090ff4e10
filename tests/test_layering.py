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


def layer_of(module: str) -> str:
    """The layer a dotted module name belongs to: ``irgraph.backends.llvm`` -> ``backends``,
    ``irgraph.ir`` -> ``irgraph``; a name outside the project (numpy) is returned whole."""
    parts = module.split(".")
    if parts[0] == "irgraph" and len(parts) > 1 and parts[1] in PACKAGES[1:]:
        return parts[1]
    return parts[0]


def imported_packages(path: Path, package: str) -> set[tuple[str, int]]:
    """Layers (or outside top-level packages) ``path`` imports, with line numbers (relative
    imports resolved: they stay in their layer). ``from irgraph import backends`` counts as the
    backends layer."""
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(layer_of(a.name), node.lineno) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.add((package, node.lineno))       # relative: stays in its package
            elif node.module:
                found.add((layer_of(node.module), node.lineno))
                if node.module == "irgraph":
                    found |= {(a.name, node.lineno) for a in node.names if a.name in PACKAGES[1:]}
    return found


# The exemptions: irgraph/__main__.py makes `python -m irgraph` the `irgraph` command, an
# application entry point that sits above every layer (it only launches frontend.cli);
# nothing imports it, so the layering of the library is unchanged.
ENTRY_POINTS = {ROOT / "irgraph" / "__main__.py"}
# and irgraph/__init__.py's facade (``ig.compile``, ``ig.nn``) reaches the frontend by name, with
# importlib inside ``__getattr__``, on first use: no import statement, so the walk above sees none.


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
    f.write_text("def f():\n    from irgraph.frontend import nn\n"
                 "    import irgraph.backends.llvm as b\n    from irgraph import passes\n")
    assert imported_packages(f, "irgraph") == {("frontend", 2), ("backends", 3), ("irgraph", 4),
                                               ("passes", 4)}


def test_no_module_imports_a_layer_by_its_bare_name():
    """The layers install under one package (irgraph.frontend, not frontend): a bare
    ``import frontend`` works only from a checkout and would load a second copy of the layer."""
    bad = []
    for pkg, path in modules() + [("tests", p) for p in sorted((ROOT / "tests").rglob("*.py"))] \
            + [("bench", p) for p in sorted((ROOT / "bench").rglob("*.py"))] \
            + [("examples", p) for p in sorted((ROOT / "examples").rglob("*.py"))]:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and not node.level
                     and node.module else [])
            bad += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                    if n.split(".")[0] in PACKAGES[1:]]
    assert not bad, "import the layers as irgraph.<layer>: " + ", ".join(bad)


def test_installed_packages_are_the_source_folders():
    """pyproject.toml lists every package of the four folders, each under irgraph."""
    import tomllib
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"irgraph" if pkg == "irgraph" else f"irgraph.{pkg}": ROOT / pkg for pkg in PACKAGES}
    assert {k: ROOT / v for k, v in conf["package-dir"].items()} == folders
    on_disk = {".".join((name,) + init.parent.relative_to(folder).parts)
               for name, folder in folders.items() for init in folder.rglob("__init__.py")}
    assert set(conf["packages"]) == on_disk


def test_facade_offers_the_frontend_lazily():
    import irgraph
    import irgraph.frontend as fe
    assert irgraph.compile is fe.compile and irgraph.nn is fe.nn and irgraph.F is fe.F
    assert irgraph.optim is fe.optim
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        irgraph.not_a_name
