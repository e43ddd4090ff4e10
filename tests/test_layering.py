"""Dependencies point one way: irgraph <- passes <- backends <- frontend (docs/architecture.md).

Every import of every module (top level or inside a function) is read with ``ast``.
"""
from __future__ import annotations

import ast
import functools
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


# ---------------------------------------------------------------------------------------------
# The module import graph: no cycles, no private names taken from another module.
#
# Nodes are the modules of the four layers by their installed names (frontend/nn.py is
# irgraph.frontend.nn, a package is its __init__). Every import statement is an edge, at top level
# or inside a function (a function-level import is a dependency too, only a later one):
#
# * ``import a.b.c`` and ``from a.b import c`` where a.b.c is a module are edges to a.b.c;
#   ``from a.b import name`` of any other name is an edge to a.b (for a package, its __init__);
#   relative imports are resolved against the importing module's package.
# * The parent packages Python initializes on the way are not edges. So a package __init__ that
#   imports its submodules (a facade: irgraph.frontend, frontend.nn, frontend.functional) is no
#   cycle; it is one when a submodule imports the package back for a name that is not a
#   submodule (``from . import Tensor``, ``from irgraph.frontend import compile``).
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def parsed(path: Path) -> ast.Module:
    """The syntax tree of a source file, read once per test session."""
    return ast.parse(path.read_text(), str(path))


def module_name(pkg: str, path: Path, root: Path = ROOT) -> str:
    """The dotted name a source file installs as: ``frontend/nn.py`` -> ``irgraph.frontend.nn``,
    ``passes/autodiff/__init__.py`` -> ``irgraph.passes.autodiff``."""
    parts = path.relative_to(root / pkg).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("irgraph",) + (() if pkg == "irgraph" else (pkg,)) + parts)


def project_modules() -> dict[str, Path]:
    """Every module of the four layers by its installed dotted name."""
    return {module_name(pkg, p): p for pkg, p in modules()}


def _package_of(name: str, path: Path) -> str:
    """The package a relative import in module ``name`` (file ``path``) starts from."""
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _from_base(node: ast.ImportFrom, name: str, path: Path) -> str:
    """The absolute module of ``from <base> import ...`` (a relative base resolved)."""
    if not node.level:
        return node.module
    base = _package_of(name, path)
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{node.module}" if node.module else base


def import_edges(name: str, path: Path, known) -> list[tuple[str, int]]:
    """The modules among ``known`` that module ``name`` (file ``path``) imports, each with the
    line of the import (the rules of the section comment above)."""
    found = []
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name in known]
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(node, name, path)
            for a in node.names:
                if f"{base}.{a.name}" in known:
                    found.append((f"{base}.{a.name}", node.lineno))
                elif base in known:
                    found.append((base, node.lineno))
    return found


def import_graph(known=None):
    """The directed graph of ``import_edges`` over ``known`` (default: the whole project, built
    once); each edge keeps the line of its first import."""
    if known is None:
        return _project_graph()
    import networkx as nx
    g = nx.DiGraph()
    g.add_nodes_from(known)
    for name, path in known.items():
        for target, line in import_edges(name, path, known):
            if not g.has_edge(name, target):
                g.add_edge(name, target, line=line)
    return g


@functools.lru_cache(maxsize=None)
def _project_graph():
    return import_graph(project_modules())


def import_cycles(g) -> list[list[str]]:
    """One cycle (a list of modules, each importing the next, the last the first) per strongly
    connected group of modules that import each other; empty when the graph is a DAG."""
    import networkx as nx
    found = []
    for group in nx.strongly_connected_components(g):
        first = min(group)
        if len(group) > 1 or g.has_edge(first, first):
            found.append([a for a, _ in nx.find_cycle(g.subgraph(group), first)])
    return sorted(found)


def describe_cycle(g, cycle: list[str]) -> str:
    return " -> ".join(f"{a} (line {g.edges[a, b]['line']})"
                       for a, b in zip(cycle, cycle[1:] + cycle[:1])) + f" -> {cycle[0]}"


def test_import_graph_has_no_cycle():
    """No module imports itself through others; the report names each cycle with the line of
    every import in it."""
    g = import_graph()
    bad = import_cycles(g)
    assert not bad, f"{len(bad)} import cycle(s):\n" + "\n".join(describe_cycle(g, c) for c in bad)


def _fake_project(tmp_path, files: dict[str, str]) -> dict[str, Path]:
    """Modules of a made-up layer ``frontend`` under ``tmp_path`` ({relative file: source})."""
    known = {}
    for rel, src in files.items():
        p = tmp_path / "frontend" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(src)
        known[module_name("frontend", p, tmp_path)] = p
    return known


def test_graph_resolves_modules_names_and_relative_imports(tmp_path):
    known = _fake_project(tmp_path, {
        "__init__.py": "from . import nn\nfrom .tracing import Tensor\n",
        "nn.py": "from .layers import Linear\n",
        "layers.py": "import numpy as np\n\ndef f():\n    from irgraph.frontend import tracing\n",
        "tracing.py": "",
        "onnx/__init__.py": "from ..tracing import Tensor\nfrom .. import nn\n"})
    g = import_graph(known)
    f = "irgraph.frontend"
    assert set(g.edges) == {(f, f"{f}.nn"), (f, f"{f}.tracing"), (f"{f}.nn", f"{f}.layers"),
                            (f"{f}.layers", f"{f}.tracing"), (f"{f}.onnx", f"{f}.tracing"),
                            (f"{f}.onnx", f"{f}.nn")}
    assert g.edges[f"{f}.layers", f"{f}.tracing"]["line"] == 4
    assert import_cycles(g) == []       # a facade __init__ importing its submodules


def test_a_submodule_importing_its_package_back_is_a_cycle(tmp_path):
    known = _fake_project(tmp_path, {
        "__init__.py": "from .nn import Linear\nfrom .compiler import compile\n",
        "nn.py": "def f():\n    from . import compile\n",     # a name, not a module
        "compiler.py": "", "a.py": "import irgraph.frontend.b\n", "b.py": "from .a import x\n"})
    g = import_graph(known)
    f = "irgraph.frontend"
    assert import_cycles(g) == [[f, f"{f}.nn"], [f"{f}.a", f"{f}.b"]]
    assert describe_cycle(g, [f"{f}.a", f"{f}.b"]) == \
        f"{f}.a (line 1) -> {f}.b (line 1) -> {f}.a"


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(name: str, path: Path, known) -> list[str]:
    """Private names (``_x``, not dunders) that module ``name`` takes from another module of
    ``known``: ``from m import _x`` (absolute or relative) and ``m._x`` where ``m`` is bound by an
    import of this file to a module (``import a.b as m``, ``from a import m``, ``import a.b``
    then ``a.b._x``). A private submodule belongs to its package: any module inside that
    package (``from . import _impl``, ``from .. import _impl``) may import it."""
    tree = parsed(path)
    own_package = _package_of(name, path)
    bound: dict[str, str] = {}          # local name -> the module it is bound to
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname and a.name in known:
                    bound[a.asname] = a.name
                elif not a.asname:             # import a.b.c binds a
                    bound[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = _from_base(node, name, path)
            for a in node.names:
                if f"{base}.{a.name}" in known:
                    bound[a.asname or a.name] = f"{base}.{a.name}"
                    if _is_private(a.name) and not f"{own_package}.".startswith(f"{base}."):
                        bad.append(f"line {node.lineno}: from {base} import {a.name}")
                elif base in known and base != name and _is_private(a.name):
                    bad.append(f"line {node.lineno}: from {base} import {a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            chain, v = [], node.value
            while isinstance(v, ast.Attribute):
                chain.append(v.attr)
                v = v.value
            if isinstance(v, ast.Name) and v.id in bound:
                target = ".".join([bound[v.id]] + chain[::-1])
                if target in known and target != name:
                    bad.append(f"line {node.lineno}: {ast.unparse(node)}")
    return sorted(bad, key=lambda s: (int(s.split()[1].rstrip(":")), s))


def test_no_private_names_across_modules():
    """A name with a leading underscore belongs to its module: another module that needs it
    needs a public name, in the module that owns the fact."""
    known = project_modules()
    bad = [f"{path.relative_to(ROOT)} {use}" for name, path in known.items()
           for use in private_uses(name, path, known)]
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def test_private_names_checker(tmp_path):
    known = _fake_project(tmp_path, {
        "__init__.py": "", "_impl.py": "", "tracing.py": "",
        "core.py": "def _own():\n    pass\n\n_own()\n",
        "user.py": ("from .tracing import _CURRENT, Tensor\n"
                    "from irgraph.frontend import _impl, core as c\n"
                    "import irgraph.frontend.tracing\nimport numpy as np\n"
                    "def f(x):\n    np._x, x._private, c.__name__\n"
                    "    return c._own(), irgraph.frontend.tracing._state\n"),
        "sub/__init__.py": "from .. import _impl\n"})
    uses = {n: private_uses(n, p, known) for n, p in known.items()}
    assert uses["irgraph.frontend.user"] == [
        "line 1: from irgraph.frontend.tracing import _CURRENT",
        "line 7: c._own", "line 7: irgraph.frontend.tracing._state"]
    # a package's own private submodule, and a module's own names, are its business
    assert uses["irgraph.frontend"] == uses["irgraph.frontend.core"] == []
    assert uses["irgraph.frontend.sub"] == []
    outside = _fake_project(tmp_path / "other", {"__init__.py": "", "_impl.py": "",
                                                 "x.py": "from irgraph.frontend import _impl\n"})
    p = outside["irgraph.frontend.x"]
    assert private_uses("irgraph.passes.x", p, {**known, "irgraph.passes.x": p}) == [
        "line 1: from irgraph.frontend import _impl"]
