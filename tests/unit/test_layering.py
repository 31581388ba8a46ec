"""The house's layering, written down and checked on every import of every module.

Which package may import which (read upwards: a package may import what it names and,
through them, everything below; nothing may import upwards or sideways unlisted):

    base       errors, logs, process, isolation, unixsock, sockdiag, fsutil, gcquiet (swapctl/*.py)
    protocol   <- base                       the Protocol V2 codec (pure)
    diff       <- protocol                   event-stream comparison (pure)
    probes     <- protocol                   traffic, auditor, load runner, crowd, and
                                             bulk/ (the benchmarks' traffic: probes.bulk
                                             is probes, so it may not import bench)
    handoff    <- protocol                   the handoff wire protocol and controller
    conformance <- handoff                   the handoff conformance suite (a relay checker)
    relay      <- handoff, protocol          the reference relay
    swap       <- relay, probes              the swap engine
    config     <- swap                       settings (types of the swap engine)
    supervise  <- swap                       supervisord and the process spawner
    legacy     <- swap                       takeover, bridge, restart
    daemon     <- legacy, config, supervise  swapctld
    playbook   <- daemon                     playbooks and drills
    demo       <- daemon
    bench      <- playbook, demo             benchmarks
    scenarios  <- bench, diff                scenario relays and capture (one layer:
    capture    <- scenarios                   capture and scenarios import each other)
    cli        <- everything; nothing imports cli (but swapctl/__main__.py)

Pure modules (no sockets, processes, threads or event loops, and importing only pure
swapctl modules): protocol/, diff/, probes/{audit,ident,latency,tracker}.py,
swap/{machine,timeline}.py, handoff/{manifest,messages}.py, daemon/recovery.py.

Every import counts, wherever it stands: module level, inside a function, or under
`if TYPE_CHECKING:` (a type-only import still ties the two modules' designs together).
A module importing `swapctl.a.b` is not counted as importing the package `swapctl.a`'s
`__init__` (that would tie every module of a package to its siblings).
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import swapctl

ROOT = Path(swapctl.__file__).parent
BASE = "base"

# package -> the packages it may import directly (the closure is allowed too)
MAY_IMPORT: dict[str, set[str]] = {
    BASE: set(),
    "protocol": {BASE},
    "diff": {"protocol"},
    "probes": {"protocol"},
    "handoff": {"protocol"},
    "relay": {"handoff", "protocol"},
    "swap": {"relay", "probes"},
    "config": {"swap"},
    "supervise": {"swap"},
    "legacy": {"swap"},
    "daemon": {"legacy", "config", "supervise"},
    "playbook": {"daemon"},
    "demo": {"daemon"},
    "bench": {"playbook", "demo"},
    "scenarios": {"bench", "diff", "capture"},
    "capture": {"scenarios"},
    "conformance": {"handoff"},
    "cli": {"bench", "scenarios", "capture", "conformance"},
    "__main__": {"cli"},
}

PURE_PACKAGES = ("protocol", "diff")
PURE_MODULES = ("probes.audit", "probes.ident", "probes.latency", "probes.tracker",
                "swap.machine", "swap.timeline", "handoff.manifest", "handoff.messages",
                "daemon.recovery")
FORBIDDEN = {"socket", "subprocess", "asyncio", "selectors", "select", "threading", "os",
             "multiprocessing", "signal"}

# TEMPORARY: import cycles the lead's rewrite of swap/, legacy/ and daemon/ removes
# (issue 12). `test_known_cycles_are_gone` fails while any of them exists; empty this set
# once they are gone. Never add to it: a new cycle is a design error to fix, not to list.


# ----- the import graph ----------------------------------------------------------------

def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    """Every swapctl module by its name below `swapctl` ("" is swapctl/__init__)."""
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(name: str, path: Path, node: ast.ImportFrom) -> str | None:
    """The absolute module an ImportFrom names (relative imports resolved)."""
    if not node.level:
        return node.module
    package = ["swapctl", *name.split(".")] if name else ["swapctl"]
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(name: str, path: Path) -> Iterator[tuple[str, int]]:
    """(absolute module name, line) of every import anywhere in the module, including
    `importlib.import_module("swapctl....")` with a literal name."""
    known = {f"swapctl.{m}" if m else "swapctl" for m in modules()}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(name, path, node)
            if module is None:
                continue
            for alias in node.names:  # `from swapctl.pkg import module` names a module
                sub = f"{module}.{alias.name}"
                yield (sub if sub in known else module), node.lineno
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.args[0].value, node.lineno


@cache
def graph() -> dict[str, dict[str, int]]:
    """module -> {swapctl module it imports: line of the first such import}."""
    mods = modules()
    out: dict[str, dict[str, int]] = {}
    for name, path in mods.items():
        edges: dict[str, int] = {}
        for target, line in _targets(name, path):
            if target != "swapctl" and not target.startswith("swapctl."):
                continue
            short = target.removeprefix("swapctl").removeprefix(".")
            if short in mods and short != name:
                edges.setdefault(short, line)
        out[name] = edges
    return out


def stdlib_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def package_of(module: str) -> str:
    head = module.split(".", maxsplit=1)[0]
    return head if head in MAY_IMPORT and head != BASE else BASE


@cache
def allowed(package: str) -> frozenset[str]:
    """The package itself and everything it may import, directly or through others."""
    seen, todo = {package}, [package]
    while todo:
        for below in MAY_IMPORT[todo.pop()]:
            if below not in seen:
                seen.add(below)
                todo.append(below)
    return frozenset(seen)


def chain(start: str, goal: str) -> list[str]:
    """The shortest import chain from `start` to `goal` (breadth first)."""
    edges = graph()
    parent: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        here = queue.popleft()
        if here == goal:
            break
        for nxt in edges[here]:
            if nxt not in parent:
                parent[nxt] = here
                queue.append(nxt)
    path: list[str] = []
    node: str | None = goal
    while node is not None:
        path.append(node)
        node = parent[node]
    return path[::-1]


def reachable(start: str) -> set[str]:
    edges, seen, todo = graph(), {start}, [start]
    while todo:
        for nxt in edges[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen - {start}


def cycles() -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(edges[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(frozenset(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(edges[child])))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def _show(component: frozenset[str]) -> str:
    edges = graph()
    links = [f"{a} -> {b} (line {edges[a][b]})" for a in sorted(component)
             for b in sorted(edges[a]) if b in component]
    return "; ".join(links)


# ----- the tests --------------------------------------------------------------------

def test_the_walk_sees_the_whole_package() -> None:
    """Guards the checks below against passing vacuously (a broken walk sees nothing)."""
    edges = graph()
    assert len(edges) > 100
    assert "swap.machine" in edges["daemon.recovery"]
    assert "relay.server" in reachable("cli")
    unknown = sorted({m.split(".")[0] for m in edges if package_of(m) == BASE}
                     - {"", "errors", "logs", "process", "isolation", "unixsock", "sockdiag",
                        "fsutil", "gcquiet"})
    assert not unknown, (f"modules {unknown} are in no layer: add their package to "
                         "MAY_IMPORT (and to the table in this module's docstring)")


def test_imports_point_down_the_layers() -> None:
    """Every module, and everything it imports transitively, stays within its layer."""
    wrong: list[str] = []
    for module in sorted(graph()):
        package = package_of(module)
        for reached in sorted(reachable(module)):
            if package_of(reached) not in allowed(package):
                wrong.append(f"{package} may not import {package_of(reached)}: "
                             + " -> ".join(chain(module, reached)))
    # report each offending direct import once, by its shortest chain
    direct = sorted({w for w in wrong if w.count(" -> ") == 1})
    assert not wrong, "upward or unlisted imports:\n  " + "\n  ".join(direct or wrong[:20])


def test_nothing_imports_cli() -> None:
    users = sorted(m for m, edges in graph().items()
                   if package_of(m) not in ("cli", "__main__")
                   and any(package_of(t) == "cli" for t in edges))
    assert not users, f"{users} import swapctl.cli: the CLI is the top layer"


def test_no_import_cycles() -> None:
    new = cycles()
    assert not new, "import cycles (break them; never list them):\n  " + "\n  ".join(
        _show(c) for c in new)


def _pure_modules() -> list[str]:
    names = [m for m in modules() if m.split(".")[0] in PURE_PACKAGES]
    return names + [m for m in PURE_MODULES if m in modules()]


def test_pure_modules_do_no_io() -> None:
    """A pure module imports no I/O from the standard library, and imports only
    swapctl modules that are pure themselves (checked transitively)."""
    pure = _pure_modules()
    assert set(PURE_MODULES) <= set(pure), "a pure module was moved: update PURE_MODULES"
    mods = modules()
    for module in pure:
        for reached in sorted({module} | reachable(module)):
            bad = stdlib_imports(mods[reached]) & FORBIDDEN
            where = " -> ".join(chain(module, reached))
            assert not bad, f"{where} imports {sorted(bad)}: keep I/O out of the pure core"
