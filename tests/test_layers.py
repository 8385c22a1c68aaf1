"""dd_core's packages import only those below them in docs/ARCHITECTURE.md's table of packages, and
never Prefect nor the project's Prefect side (``tasks``, ``flows``, ``deployments``) or ``bench``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The one import that crosses the order, as the document says: box merging's defaults live in the
# torch-free settings of multi-transform inference.
CROSSINGS = {("ensemble", "dd_core.tta.settings")}
NEVER_IMPORTED = {"prefect", "tasks", "flows", "deployments", "bench"}
_IMPORTING_CALLS = {"importlib.import_module", "import_module", "__import__", "lazy_exports"}


def documented_order() -> list[str]:
    """The packages (``storage``) and modules (``method``) of the table, lowest first."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    table = text[text.index("The packages of `dd_core`, lowest first."):text.index("One import crosses this order")]
    return [name.removesuffix("/").removesuffix(".py") for name in re.findall(r"^\| `([\w./]+)` \|", table, re.M)]


def _typing_only(tree: ast.AST) -> set[int]:
    """The nodes in the body of an ``if TYPE_CHECKING:`` (not its ``else``): never run."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            skipped |= {id(n) for statement in node.body for n in ast.walk(statement)}
    return skipped


def runtime_imports(path: Path, module: str) -> list[str]:
    """What ``path`` (the module ``module``) imports when it runs, anywhere in it: ``import``,
    ``from ... import`` (relative ones resolved; ``from a import b`` gives ``a.b``), and the modules
    named by string in ``importlib.import_module``, ``__import__`` and ``lazy_exports`` calls."""
    tree = ast.parse(path.read_text())
    skipped = _typing_only(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found += [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in _IMPORTING_CALLS:
            arguments = [*node.args, *(keyword.value for keyword in node.keywords)]
            found += [n.value for argument in arguments for n in ast.walk(argument)
                      if isinstance(n, ast.Constant) and isinstance(n.value, str) and re.fullmatch(r"[\w.]+", n.value)]
    return found


def _modules() -> list[tuple[Path, str]]:
    return [(path, ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"))
            for path in sorted((ROOT / "dd_core").rglob("*.py"))]


def _unit(module: str) -> str | None:
    """``dd_core.pseudo.infer`` -> ``pseudo``; None for ``dd_core`` itself and other packages."""
    parts = module.split(".")
    return parts[1] if parts[0] == "dd_core" and len(parts) > 1 else None


def _declared(unit: str | None, imported: str) -> bool:
    return any(unit == crossing and (imported == target or imported.startswith(target + "."))
               for crossing, target in CROSSINGS)


def test_every_package_of_dd_core_is_in_the_table_once():
    order = documented_order()
    units = {p.name if p.is_dir() else p.stem for p in (ROOT / "dd_core").iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__")}
    assert sorted(order) == sorted(units)


def test_no_import_points_down_the_table():
    rank = {name: i for i, name in enumerate(documented_order())}
    downward = []
    for path, module in _modules():
        if _unit(module) is None:
            continue
        for imported in runtime_imports(path, module):
            below = _unit(imported)
            if below is None or below == _unit(module) or _declared(_unit(module), imported):
                continue
            if rank[below] > rank[_unit(module)]:
                downward.append(f"{module} imports {imported}")
    assert downward == []


def test_dd_core_never_imports_prefect_nor_the_flows():
    found = [f"{module} imports {imported}" for path, module in _modules()
             for imported in runtime_imports(path, module) if imported.split(".")[0] in NEVER_IMPORTED]
    assert found == []


def test_every_way_of_importing_is_seen(tmp_path):
    """Function-level, relative, package-attribute and by-name imports count; type-checking ones do not."""
    source = tmp_path / "m.py"
    source.write_text(
        "import importlib\nfrom typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from dd_core.method import label\nelse:\n    from dd_core.config import RunConfig\n"
        "if not TYPE_CHECKING:\n    import dd_core.report\n"
        "from dd_core import pseudo\nfrom ..train import loop\nfrom . import lock\n"
        "def f():\n    from dd_core.pseudo.infer import ShardJob\n    import dd_core.ops.stop as stop\n"
        "    importlib.import_module('dd_core.evaluate.coco')\n    __import__('prefect')\n"
        "    lazy_exports('dd_core.storage', {'dd_core.tta.model': ['MultiTransformModel']})\n")
    found = runtime_imports(source, "dd_core.storage.m")
    assert "dd_core.method.label" not in found
    assert {"dd_core.config.RunConfig", "dd_core.report", "dd_core.pseudo", "dd_core.train.loop",
            "dd_core.storage.lock", "dd_core.pseudo.infer.ShardJob", "dd_core.ops.stop", "dd_core.evaluate.coco",
            "prefect", "dd_core.tta.model"} <= set(found)
