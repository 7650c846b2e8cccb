"""The README's Python example runs as written, and its layout is the package's."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PACKAGE = ROOT / "minivae"
# imports made inside a function, upward in the layout on purpose (see the README)
LAZY_UPWARD = {("backend", "philox"), ("data", "plots"), ("train", "parallel"), ("sweep", "cli")}


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    for code in blocks:
        exec(compile(code, str(README), "exec"), {})


def layout():
    """The modules of the README's layout block, in its order."""
    text = README.read_text()
    block = text[text.index("## Layout"):]
    block = block[block.index("```\nminivae/\n"):]
    block = block[:block.index("\nscripts/")]
    names = []
    for line in block.splitlines()[1:]:
        m = re.match(r"  (\S.*?)(?:\s{2,}|$)", line)
        if m:
            names += [n.strip().rstrip("/").removesuffix(".py") for n in m.group(1).split(",")]
    return names


def package_imports():
    """(module, imported module, inside a function?) for every import within the package."""
    out = set()
    for f in PACKAGE.rglob("*.py"):
        rel = f.relative_to(PACKAGE).parts
        me = rel[0].removesuffix(".py")
        tree = ast.parse(f.read_text())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level == 0:
                continue
            if node.level == 1 and len(rel) > 1:        # a relative import inside a subpackage
                continue
            first = (node.module or "").split(".")[0]
            for t in ([first] if first else [a.name for a in node.names]):
                if t != me:
                    out.add((me, t, id(node) not in top))
    return out


def test_the_layout_lists_every_module_in_dependency_order():
    """Every module appears once; each imports only modules listed above it, but for the
    README's named lazy imports, which are made inside functions."""
    names = layout()
    assert len(names) == len(set(names)), names
    modules = {p.name.removesuffix(".py") for p in PACKAGE.iterdir()
               if (p.suffix == ".py" or (p / "__init__.py").exists())
               and p.name not in ("__init__.py", "__main__.py", "errors.py")}
    assert set(names) == modules, set(names) ^ modules
    pos = {n: i for i, n in enumerate(names)}
    upward = {(me, t, lazy) for me, t, lazy in package_imports()
              if me in pos and t in pos and pos[t] > pos[me]}
    assert {(me, t) for me, t, _ in upward} == LAZY_UPWARD, upward
    assert all(lazy for _, _, lazy in upward), upward
    text = README.read_text()
    for me, t in LAZY_UPWARD:
        assert f"{me} -> {t}" in text
