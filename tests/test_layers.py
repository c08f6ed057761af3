"""Dependencies run one way: commands -> recipes -> models / loaders.

Read from the source (every ``import`` and ``from ... import`` statement, at any
depth, lazy ones included), so a layer that reaches up fails here whatever
the tests happen to import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what each layer may not import
FORBIDDEN = {
    "loaders": ("signstream.models", "signstream.recipes", "signstream.tools", "signstream.benchmarks"),
    "models": ("signstream.recipes", "signstream.tools", "signstream.benchmarks"),
    "recipes": ("signstream.tools", "signstream.benchmarks"),
    "tools": ("signstream.benchmarks",),
}


def imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_layer_imports_a_layer_above_it(layer):
    found = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / layer).rglob("*.py"))
        for name in imported_modules(path)
        if any(name == up or name.startswith(up + ".") for up in FORBIDDEN[layer])
    ]
    assert not found, "\n".join(found)


def test_the_check_sees_lazy_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from signstream.tools.wer import x\n    import signstream.recipes.scoring\n")
    assert imported_modules(src) == ["signstream.tools.wer", "signstream.recipes.scoring"]
