"""Layers point one way: device/, cloud/ and wire/ never import eval/ or cli/, and cloud/ never imports device/.

Read from the source (every import statement, also those inside functions), so nothing is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tandemseg"
FORBIDDEN = {
    "device": ("tandemseg.eval", "tandemseg.cli", "tandemseg.cloud"),
    "cloud": ("tandemseg.eval", "tandemseg.cli", "tandemseg.device"),
    "wire": ("tandemseg.eval", "tandemseg.cli", "tandemseg.device", "tandemseg.cloud"),
}


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name an import statement of `path` names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_never_import_upper_ones(layer: str) -> None:
    offences = []
    for path in sorted((PACKAGE / layer).glob("*.py")):
        for name in imported_modules(path):
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[layer]):
                offences.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not offences, "\n".join(offences)


def test_the_check_sees_imports_inside_functions(tmp_path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from tandemseg.eval.evaluate import to_tensor\n")
    assert "tandemseg.eval.evaluate" in imported_modules(f)
