"""No module of onceflow imports another package's private names: ``from onceflow.x import
_y``, or anything from a private module ``onceflow.x._m``, is allowed only inside package
``onceflow.x`` (and its subpackages). A package's privates are for itself."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent / "onceflow"

#: known exceptions, each to be removed by making the name public where it is defined
KNOWN = {
    # the watermark duration parser, used by the runtime: rename to to_seconds
    "onceflow/runtime/operators.py: onceflow.api.watermarks._to_seconds",
}


def _package(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1])
    return ".".join(parts[:-1])


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _owner(module: str) -> str:
    """The package whose private name ``module`` (a dotted path) reaches: the package
    holding its first private component (``onceflow.connectors.kafka._common`` and
    ``onceflow.runtime.task._picklable`` are private to ``onceflow.connectors.kafka`` and
    ``onceflow.runtime``); ``module`` itself when nothing in it is private."""
    parts = module.split(".")
    for i, p in enumerate(parts):
        if _private(p):
            head = parts[:i]
            if not ROOT.parent.joinpath(*head).is_dir():  # a module: its package owns it
                head = head[:-1]
            return ".".join(head)
    return module


def violations() -> list[str]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        pkg = _package(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and node.module.startswith("onceflow"):
                targets = [(node.module, a.name) for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [(a.name, "") for a in node.names if a.name.startswith("onceflow")]
            else:
                continue
            for module, name in targets:
                full = f"{module}.{name}" if name else module
                owner = _owner(full)
                if owner == full:
                    continue  # nothing private
                if not (pkg == owner or pkg.startswith(owner + ".")) \
                        and f"{path.relative_to(ROOT.parent)}: {full}" not in KNOWN:
                    found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: {full}")
    return found


def test_no_module_imports_another_packages_private_names() -> None:
    assert violations() == []


def test_the_rule_finds_the_owner_of_a_private_name() -> None:
    assert _owner("onceflow.connectors.kafka._common.brokers") == "onceflow.connectors.kafka"
    assert _owner("onceflow.runtime.task._picklable") == "onceflow.runtime"
    assert _owner("onceflow._faults") == "onceflow"
    assert _owner("onceflow.checkpoint.storage") == "onceflow.checkpoint.storage"
