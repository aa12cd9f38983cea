"""The import graph of radjax flows one way and holds no cycle (walked with ast, nothing run).

Layers, lowest first: ``radjax`` itself (package init, sharding, assets, registry, checkpoint)
< ``nn`` < ``models`` < {``convert``, ``data``, ``metrics``} < ``train`` < ``papers``. A module
may import its own package and any lower layer; the three middle packages are peers that never
import one another, and no paper imports another. Function-level imports count too. The
launchers (``experiments/``, ``benchmarks/run.py``, the end-to-end fixtures) name no paper:
they find papers by name through ``radjax.registry``.
"""

import ast
import pathlib

import pytest

from radjax import registry

ROOT = pathlib.Path(__file__).resolve().parents[2]
RANK = {"": 0, "nn": 1, "models": 2, "convert": 3, "data": 3, "metrics": 3, "train": 4, "papers": 5}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: pathlib.Path) -> set[str]:
    """Absolute names of every module ``path`` imports, at any depth."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def radjax_graph() -> dict[str, set[str]]:
    """module -> the radjax modules it imports (names that are modules, not attributes)."""
    files = {_module_name(p): p for p in (ROOT / "radjax").rglob("*.py")}
    return {
        name: {m for m in _imported(p) if m in files and m != name} for name, p in files.items()
    }


def layer(module: str) -> str:
    """'' for top-level radjax modules, else the subpackage (``nn``, ``models``, ...)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANK) else ""


def back_edges(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in graph.items():
        src = layer(module)
        for target in targets:
            dst = layer(target)
            if src == dst == "papers":
                a, b = module.split(".")[2:3], target.split(".")[2:3]
                if a and b and a != b:
                    bad.append(f"{module} -> {target} (a paper imports another paper)")
            elif src != dst and RANK[dst] >= RANK[src]:
                bad.append(f"{module} -> {target} ({src or 'radjax'} may not import {dst})")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_import_runs_against_the_flow():
    bad = back_edges(radjax_graph())
    assert not bad, "imports against the flow:\n  " + "\n  ".join(bad)


def test_no_import_cycle():
    found = cycles(radjax_graph())
    assert not found, "import cycles:\n  " + "\n  ".join(" -> ".join(c) for c in found)


def test_the_checks_catch_planted_mistakes():
    graph = radjax_graph()
    assert "radjax.models.llama" in graph and "radjax.papers.radfm.model" in graph
    planted = {k: set(v) for k, v in graph.items()}
    planted["radjax.models.llama"].add("radjax.train.generation")  # models -> train
    planted["radjax.metrics.text"].add("radjax.convert.bert")  # peer -> peer
    planted["radjax.papers.radfm.model"].add("radjax.papers.rp3d_diag.model")  # paper -> paper
    planted["radjax.nn.attention"].add("radjax.nn.kv_cache")  # kv_cache imports attention
    assert len(back_edges(planted)) == 3
    assert any("radjax.nn.attention" in c for c in cycles(planted))


@pytest.mark.parametrize("where", ["experiments", "benchmarks/run.py", "tests/e2e/conftest.py"])
def test_launchers_name_no_paper(where):
    paths = [ROOT / where] if where.endswith(".py") else sorted((ROOT / where).rglob("*.py"))
    assert paths and registry.names()
    named = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            words = []
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                words = [node.value]
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                words = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            named += [
                f"{path.relative_to(ROOT)}:{node.lineno}: {w[:80]!r}"
                for w in words
                if any(p in w for p in registry.names())
            ]
    assert not named, "a launcher names a paper:\n  " + "\n  ".join(named)


def test_demo_and_benchmarks_find_papers_by_name():
    from benchmarks import run
    from experiments import sections

    names = [d.name for d in sections.demos()]
    assert {"rp3d_diag_late", "rp3d_diag_late_ke", "radfm", "llava_med", "uni_med"} <= set(names)
    assert all(d.module == f"configs.{d.module.split('.')[1]}" for d in sections.demos())
    assert {"rp3d", "decoder", "radfm"} <= {b.name for b in run.discover()}
