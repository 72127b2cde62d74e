"""Every Python block of README.md and docs/*.md is complete, and runs.

Complete: every name a block uses is imported or defined in it, so a reader can paste it
as it is. Runs: the block is executed as a module of its own, then its ``main()`` and its
``test_*(autojump_clock)`` functions, if it has any, are run too — in virtual time, or,
for a block that needs a database peer, on the real clock for a moment against the test
server. Blocks after a ``% example: <name>`` comment are run by the tests of their own
page (tests/test_logging.py, tests/test_telemetry.py); here they are checked complete.
Doctest blocks (``>>>``) run in tests/test_cron.py.

And every program of the docs that runs a job sets logging up first.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import re
import symtable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from pg_support import query, require_postgres

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = sorted(p for p in (ROOT / "docs" / "examples").glob("*.py") if "test_" not in p.name)
BLOCK = re.compile(
    r"^(?:% example: (?P<example>\S+)\n)?```python\n(?P<code>.*?)^```$", re.M | re.S
)


def blocks(*, runnable: bool = False) -> list[Any]:
    """The Python blocks of the pages; ``runnable``: only those this module runs."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for number, match in enumerate(BLOCK.finditer(text), 1):
            code = match["code"]
            if code.lstrip().startswith(">>>") or (runnable and match["example"]):
                continue
            found.append(
                pytest.param(code, match["example"], id=f"{page.name}-{number}"),
            )
    return found


def undefined_names(code: str) -> set[str]:
    """Names the code reads as globals that it neither defines nor imports."""
    table = symtable.symtable(code, "<block>", "exec")
    defined = {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()}
    used = {s.get_name() for s in table.get_symbols() if s.is_referenced()}

    def walk(scope: symtable.SymbolTable) -> None:
        for child in scope.get_children():
            used.update(s.get_name() for s in child.get_symbols() if s.is_global())
            walk(child)

    walk(table)
    return used - defined - set(dir(builtins))


def test_the_pages_have_python_blocks() -> None:
    ids = [p.id for p in blocks()]
    for page in ("README.md", "quickstart.md", "cluster.md", "events.md", "testing.md"):
        assert any(i.startswith(page) for i in ids), page


@pytest.mark.parametrize(("code", "example"), blocks())
def test_a_block_is_complete(code: str, example: str | None) -> None:
    assert undefined_names(code) == set()


@pytest.mark.parametrize(("code", "example"), blocks(runnable=True))
def test_a_block_runs(code: str, example: None, monkeypatch: pytest.MonkeyPatch) -> None:
    namespace: dict[str, Any] = {"__name__": "docs_block"}
    exec(compile(code, "<block>", "exec"), namespace)
    main = namespace.get("main")
    if inspect.iscoroutinefunction(main):
        if "PostgresPeer" in code:
            run_with_postgres(main, monkeypatch)
        else:
            clock = trio.testing.MockClock(autojump_threshold=0)
            trio.run(run_for, main, 4 * 3600, clock=clock)
    for name, fn in namespace.items():
        if name.startswith("test_") and inspect.iscoroutinefunction(fn):
            clock = trio.testing.MockClock(autojump_threshold=0)
            trio.run(fn, clock, clock=clock)


async def run_for(main: Any, seconds: float) -> None:
    with trio.move_on_after(seconds):
        await main()


def run_with_postgres(main: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = require_postgres()
    monkeypatch.setenv("DATABASE_URL", dsn)
    table = "public.periodic_peers"
    existed = query(dsn, "SELECT to_regclass(%s) IS NOT NULL", (table,)) == [(True,)]
    try:
        trio.run(run_for, main, 1.5)  # real time: the peer's calls run in threads
    finally:
        if not existed:
            query(dsn, f"DROP TABLE IF EXISTS {table}, {table}_members")


# -- logging first ----------------------------------------------------------------------------


def programs() -> list[Any]:
    found = [
        pytest.param(p.read_text(encoding="utf-8"), id=p.name)
        for p in EXAMPLES
        if "trio.run(" in p.read_text(encoding="utf-8")
    ]
    found += [
        pytest.param(p.values[0], id=p.id) for p in blocks() if "trio.run(" in str(p.values[0])
    ]
    return found


def main_block(tree: ast.Module) -> ast.If | None:
    for node in tree.body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            return node
    return None


@pytest.mark.parametrize("source", programs())
def test_a_program_that_runs_a_job_sets_logging_up_first(source: str) -> None:
    block = main_block(ast.parse(source))
    assert block is not None, "trio.run outside an `if __name__ == '__main__':` block"
    first = block.body[0]
    assert isinstance(first, ast.Expr)
    assert ast.unparse(first.value).startswith("logging.basicConfig("), ast.unparse(first)


def test_every_example_program_is_a_program() -> None:
    # The ones the pages show as an application (not only as definitions) can be run.
    runnable = {p.name for p in EXAMPLES if main_block(ast.parse(p.read_text())) is not None}
    assert runnable >= {"quickstart.py", "demo.py", "cluster_rollup.py", "cleanup_app.py"}
