"""Every code reference in docs/ resolves (the math guide must not point at renamed code).

A reference is an inline code span in one of three forms (docs/README.md explains them):

    `minivae.module.attr.chain`               the longest importable module prefix imports and
                                              the rest is a chain of getattr
    `tests/test_x.py::test_name`              the file exists and defines test_name (or
                                              Class.method), found with ast (nothing is run)
    `scripts/x.py`, `scripts/x.py::C5`        the file exists; a claim id (or a function name)
                                              occurs in it as a string literal (or a def)

Any inline span that starts with ``minivae.``, ``tests/`` or ``scripts/`` must be one of these
forms, so a typo cannot hide a reference from the check.  Relative markdown links between the
docs must point at existing files and headings.  Nothing heavy is imported: the whole check is a
few imports of minivae modules and some ast parsing.
"""
import ast
import functools
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DOC_FILES = sorted(DOCS.glob("*.md"))

CODE_SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")
PYTHON_REF = re.compile(r"minivae(?:\.[A-Za-z_]\w*)+")
FILE_REF = re.compile(r"(tests|scripts)/[\w/]+\.py(?:::[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)?")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _strip_fences(text):
    """The text with fenced and indented code blocks blanked out (line numbers kept)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append("")
        elif fenced or line.startswith("    "):
            out.append("")
        else:
            out.append(line)
    return "\n".join(out)


def references(text):
    """(kind, reference) for every inline code span that looks like a code reference."""
    refs = []
    for m in CODE_SPAN.finditer(_strip_fences(text)):
        span = m.group(1).strip()
        if span.startswith("minivae."):
            refs.append(("python", span))
        elif span.startswith(("tests/", "scripts/")):
            refs.append(("file", span))
    return refs


def all_references():
    return [(doc.name, kind, ref) for doc in DOC_FILES for kind, ref in references(doc.read_text())]


def resolve_python(ref):
    """Import the longest importable prefix of a dotted name, then getattr the rest."""
    if not PYTHON_REF.fullmatch(ref):
        raise AssertionError(f"{ref!r} is not a dotted name minivae.module.attr")
    parts = ref.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError as e:
            if e.name is not None and not ".".join(parts[:i]).startswith(e.name):
                raise                                   # a real import error inside minivae
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                raise AssertionError(f"{ref!r}: {'.'.join(parts[:parts.index(attr)])} has no "
                                     f"attribute {attr!r}")
            obj = getattr(obj, attr)
        return obj
    raise AssertionError(f"{ref!r}: no importable module prefix")


@functools.lru_cache(maxsize=None)
def _parse(path):
    return ast.parse(Path(path).read_text(), filename=str(path))


def _defined(tree, dotted):
    """Is dotted ('name' or 'Class.method') a function or class defined at top level of tree?"""
    node_types = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    body = tree.body
    for name in dotted.split("."):
        found = [n for n in body if isinstance(n, node_types) and n.name == name]
        if not found:
            return False
        body = found[0].body
    return True


def _string_constants(tree):
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def resolve_file(ref):
    if not FILE_REF.fullmatch(ref):
        raise AssertionError(f"{ref!r} is not tests/<file>.py::<name> or scripts/<file>.py[::<claim>]")
    path, _, name = ref.partition("::")
    full = ROOT / path
    if not full.is_file():
        raise AssertionError(f"{ref!r}: no file {path}")
    if not name:
        return
    tree = _parse(full)
    if _defined(tree, name):
        return
    if path.startswith("scripts/"):
        # a claim id ("C5", "IWAE"): a string literal exactly equal to it
        if name not in _string_constants(tree):
            raise AssertionError(f"{ref!r}: claim id {name} is not a string in {path}")
        return
    raise AssertionError(f"{ref!r}: {path} defines no {name}")


def resolve(kind, ref):
    return resolve_python(ref) if kind == "python" else resolve_file(ref)


# ----------------------------------------------------------------------------- the checks
def test_the_docs_exist_and_hold_references():
    names = {d.name for d in DOC_FILES}
    assert {"README.md", "guide.md"} <= names
    assert len(all_references()) > 100


def test_every_code_reference_resolves():
    failures = []
    seen = set()
    for doc, kind, ref in all_references():
        if ref in seen:
            continue
        seen.add(ref)
        try:
            resolve(kind, ref)
        except AssertionError as e:
            failures.append(f"{doc}: {e}")
    assert not failures, "unresolved references:\n" + "\n".join(failures)


def _anchors(text):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in _strip_fences(text).splitlines():
        m = re.match(r"#+\s+(.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def test_relative_links_between_docs_resolve():
    failures = []
    for doc in DOC_FILES:
        for target in MD_LINK.findall(_strip_fences(doc.read_text())):
            if re.match(r"[a-z]+:", target):
                continue                                   # http(s), mailto
            path, _, anchor = target.partition("#")
            file = (doc.parent / path) if path else doc
            if not file.is_file():
                failures.append(f"{doc.name}: link to missing {target}")
            elif anchor and anchor not in _anchors(file.read_text()):
                failures.append(f"{doc.name}: no heading #{anchor} in {file.name}")
    assert not failures, "\n".join(failures)


def test_every_claim_has_a_section_and_a_check():
    """C1-C12 each have a heading in guide.md, and each section cites a test or a script claim."""
    text = (DOCS / "guide.md").read_text()
    sections = re.split(r"^## ", text, flags=re.M)
    for i in range(1, 13):
        sec = [s for s in sections if re.match(rf"C{i}\.", s)]
        assert len(sec) == 1, f"guide.md needs one section '## C{i}. ...'"
        kinds = {ref.split("/")[0] for kind, ref in references(sec[0]) if kind == "file"}
        assert "tests" in kinds or "scripts" in kinds, f"C{i} cites no test or script claim"


# ----------------------------------------------------------------------------- the checker itself
@pytest.mark.parametrize("kind,ref", [
    ("python", "minivae.distributions.kl_standard_normal_backwards"),     # renamed function
    ("python", "minivae.layers.Linear.backwards"),                         # renamed method
    ("python", "minivae.no_such_module.f"),                                # missing module
    ("python", "minivae.distributions.kl_standard_normal(mu)"),            # not a dotted name
    ("file", "tests/test_layers.py::test_linear_backward_dx2"),            # renamed test
    ("file", "tests/test_no_such_file.py::test_x"),                        # missing file
    ("file", "tests/test_layers.py::test_linear_backward_dx extra"),       # malformed
    ("file", "scripts/no_such_script.py"),
    ("file", "scripts/derivation.py::C13"),                                # no such claim
    ("file", "scripts/derivation.py::C1x"),
])
def test_a_broken_reference_is_reported(kind, ref):
    with pytest.raises(AssertionError):
        resolve(kind, ref)


def test_references_are_found_in_inline_code_only():
    text = ("See `minivae.layers.Linear` and `tests/test_layers.py::test_linear_backward_dx`;\n"
            "`mu` is not a reference, nor is this block:\n\n```python\nminivae.nothing\n```\n"
            "    `minivae.indented.block`\n")
    assert references(text) == [("python", "minivae.layers.Linear"),
                                ("file", "tests/test_layers.py::test_linear_backward_dx")]
    for kind, ref in references(text):
        resolve(kind, ref)
