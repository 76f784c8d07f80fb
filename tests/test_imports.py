"""The house's shape, checked: no import circle inside ``edge_asd`` or ``trainer``, and no import from
a stage of the data flow to a later one (audio -> front end -> scoring -> decision -> events ->
service -> CLI; the trainer above the whole device package, benchmarks above both). Every import
counts, also those inside functions: a lazy import still ties the two modules together.

A new module must be given its stage here; the test says so when one is missing."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STAGES = [
    ("base", ["edge_asd", "edge_asd.errors"]),
    ("audio", ["edge_asd.audio"]),
    ("frontend", ["edge_asd.frontend"]),
    ("scoring", ["edge_asd.scoring"]),
    ("decision", ["edge_asd.decision"]),
    ("events", ["edge_asd.events"]),
    ("service", ["edge_asd.config", "edge_asd.service", "edge_asd.remote", "edge_asd.signing"]),
    ("cli", ["edge_asd.cli", "edge_asd.__main__"]),
    ("trainer", ["trainer"]),
]
"""Stages in data-flow order; a name stands for the module and everything below it."""



def modules() -> dict[str, Path]:
    out = {}
    for package in ("edge_asd", "trainer"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                # A module's own package (its __init__) is not an edge: importing a.b runs a first.
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def stage_of(name: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(STAGES):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    if best is None:
        pytest.fail(f"{name} has no stage: add it to STAGES in {__file__}")
    return best[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(set(graph) | {w for ws in graph.values() for w in ws}):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_no_import_reaches_up_the_data_flow():
    graph = import_graph()
    upward = sorted(f"{a} ({STAGES[stage_of(a)][0]}) imports {b} ({STAGES[stage_of(b)][0]})"
                    for a, targets in graph.items() for b in targets
                    if stage_of(b) > stage_of(a))
    assert upward == []


def test_the_checks_see_a_circle_and_an_upward_import():
    graph = {"edge_asd.decision.alarm": {"edge_asd.decision.calibration"}, "edge_asd.decision.calibration": {"edge_asd.decision.alarm", "edge_asd.events"}}
    assert cycles(graph) == [["edge_asd.decision.alarm", "edge_asd.decision.calibration"]]
    assert stage_of("edge_asd.events") > stage_of("edge_asd.decision.calibration") > stage_of("edge_asd.scoring.bundle")
    assert stage_of("edge_asd.audio.sources") < stage_of("edge_asd.frontend.aot") < stage_of("trainer.export")


def test_every_stage_says_what_it_takes_and_gives_and_old_module_names_still_import():
    import importlib

    for package in ("audio", "frontend", "scoring", "decision", "events", "cli"):
        module = importlib.import_module(f"edge_asd.{package}")
        assert module.__doc__ and len(module.__doc__.strip()) > 40, package
    from edge_asd import _MOVED

    for old, new in _MOVED.items():
        assert importlib.import_module(f"edge_asd.{old}") is importlib.import_module(f"edge_asd.{new}")
    assert not any((ROOT / "edge_asd" / f"{old}.py").exists() for old in _MOVED)
