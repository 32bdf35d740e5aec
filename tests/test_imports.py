"""The house's import contract, read from the source (ast): cli -> alexmodel -> alexdata -> pipelines, no import
running back up, and no module importing another's private name."""

import ast
from pathlib import Path

import pytest
from conftest import ROOT

LAYERS = ("pipelines", "alexdata", "alexmodel", "cli")  # each may import only the ones before it
MODULES = sorted(p for pkg in LAYERS[:3] for p in (ROOT / pkg).rglob("*.py")) + [ROOT / "cli.py"]


def _imports(path: Path):
    """(module imported, names taken from it, line) of every import in `path`, the ones inside functions too."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((a.name, [], node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, [a.name for a in node.names], node.lineno


def problems(path: Path, root: Path = ROOT) -> list[str]:
    """What `path` (a module under `root`) breaks of the contract, one line each."""
    rel = path.relative_to(root)
    mine, here = LAYERS.index(rel.parts[0].removesuffix(".py")), ".".join(rel.with_suffix("").parts)
    out = []
    for module, names, line in _imports(path):
        top = module.split(".")[0]
        if top not in LAYERS:
            continue
        if LAYERS.index(top) > mine:
            out.append(f"{rel}:{line} imports {module}, a layer above")
        private = [n for n in names if n.startswith("_")]
        if private and module != here:
            out.append(f"{rel}:{line} imports {', '.join(private)} from {module}")
    return out


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_down_the_layers_and_take_no_private_name(path):
    assert problems(path) == []


def test_tests_take_no_private_name_and_share_through_conftest_only():
    found = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for module, names, line in _imports(path):
            rel = path.relative_to(ROOT)
            if module.startswith("test_"):
                found.append(f"{rel}:{line} imports the test module {module} (shared fixtures: conftest.py)")
            private = [n for n in names if n.startswith("_")]
            if private and module.split(".")[0] in LAYERS:
                found.append(f"{rel}:{line} imports {', '.join(private)} from {module}")
    assert found == []


def test_the_contract_catches_what_it_forbids(tmp_path):
    """A module that breaks both rules is named twice (a check that cannot fail proves nothing)."""
    bad = tmp_path / "alexdata" / "bad.py"
    bad.parent.mkdir()
    bad.write_text(
        "from pipelines.common import read\n\ndef f():\n    from alexmodel.train import train\n"
        "    from alexdata.files import _create_fresh\n"
    )
    assert problems(bad, tmp_path) == [
        "alexdata/bad.py:4 imports alexmodel.train, a layer above",
        "alexdata/bad.py:5 imports _create_fresh from alexdata.files",
    ]


def test_the_readmes_layout_names_every_module():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    layout = layout[: layout.index("```", layout.index("```") + 3)]
    missing = [str(p.relative_to(ROOT)) for p in MODULES if p.name != "__init__.py" and p.name not in layout]
    assert missing == []


def test_the_command_line_imports_neither_torch_nor_dali():
    """cli.py reads its options from the config dataclasses (alexmodel/config.py, pipelines/config.py) at import,
    and `alexnet --help` stays instant: importing it loads no torch and no DALI (alexmodel's package exports
    torch's names lazily)."""
    import subprocess
    import sys

    code = "import sys, cli; print(sorted(m for m in ('torch', 'nvidia.dali') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_test_files_follow_the_modules():
    """Each test file is named after the module (or package) it tests, test_<module>.py, or is an end-to-end file
    of the command line, test_cli_*.py; test_style.py and this file keep the house."""
    names = {p.stem for p in MODULES} | set(LAYERS[:3]) | {"check_stages"}
    house = {"test_style", "test_imports"}
    odd = [
        p.name
        for p in sorted((ROOT / "tests").glob("test_*.py"))
        if p.stem not in house and not p.stem.startswith("test_cli_") and p.stem.removeprefix("test_") not in names
    ]
    assert odd == []
