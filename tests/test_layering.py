"""The layering of kanal, enforced by scanning imports (docs/design.md, "Layers").

Each rule names a part of the tree and what it must not import, with the reason. The rules:
- ``kanal.protocol`` is pure: no I/O, clock, randomness, network library, or any other layer;
- only ``kanal.transport`` touches sockets, TLS and the HTTP/WebSocket libraries;
- the service, the hub and the in-process API know no transport (nor a composition root);
- the adapters (the cluster seam) know neither the hub, the service nor a transport;
- the app stores know neither the hub, the service, a transport nor a composition root;
- the worker's publisher holds no connections: no transport, no composition root, not even
  indirectly (a Celery worker importing it loads neither the transports nor aiohttp);
- ``transport/frames.py`` is sans-I/O like the protocol.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "kanal"

NETWORK = {"socket", "ssl", "selectors", "httptools", "aiohttp", "websockets", "http.client"}
COMPOSITION = {"kanal.server", "kanal.asgi", "kanal.cli", "kanal.workers"}
PROTOCOL_FORBIDDEN = {
    *NETWORK,
    *COMPOSITION,
    "asyncio",
    "time",
    "random",
    "secrets",
    "threading",
    "subprocess",
    "uvloop",
    "redis",
    "urllib.request",
    "http",
    "kanal.hub",
    "kanal.service",
    "kanal.adapters",
    "kanal.transport",
    "kanal.webhooks",
    "kanal.cluster",
}


@dataclass(frozen=True)
class Rule:
    where: str  # a package ("protocol/") or a module ("service.py") under src/kanal
    forbidden: frozenset[str]
    why: str

    def files(self) -> list[Path]:
        target = SRC / self.where
        return sorted(target.rglob("*.py")) if self.where.endswith("/") else [target]


RULES = [
    Rule("protocol/", frozenset(PROTOCOL_FORBIDDEN), "kanal.protocol must stay pure"),
    Rule("hub/", frozenset({*NETWORK, *COMPOSITION, "kanal.transport"}), "the hub owns no I/O"),
    Rule(
        "service.py",
        frozenset({*NETWORK, *COMPOSITION, "kanal.transport"}),
        "the service must not know HTTP or any transport",
    ),
    Rule(
        "realtime.py",
        frozenset({*NETWORK, *COMPOSITION, "kanal.transport"}),
        "the in-process API calls the service, never a transport",
    ),
    Rule(
        "publisher.py",
        frozenset({*NETWORK, *COMPOSITION, "kanal.transport", "kanal.webhooks"}),
        "a publisher holds no connections and sends no webhooks",
    ),
    Rule(
        "adapters/",
        frozenset({*COMPOSITION, "kanal.hub", "kanal.service", "kanal.transport"}),
        "the cluster seam knows nothing above it",
    ),
    Rule(
        "app_stores/",
        frozenset({*COMPOSITION, "kanal.hub", "kanal.service", "kanal.transport"}),
        "the app stores are read through kanal.apps.AppStore and know nothing above it",
    ),
    Rule(
        "transport/frames.py",
        frozenset({*NETWORK, "asyncio", "uvloop"}),
        "the WebSocket framing is sans-I/O, tested by feeding it bytes",
    ),
]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _violations(names: set[str], forbidden: frozenset[str] | set[str]) -> set[str]:
    return {n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden)}


def test_every_layer_rule_holds() -> None:
    problems = []
    for rule in RULES:
        files = rule.files()
        assert files and all(path.exists() for path in files), f"{rule.where} has no modules?"
        for path in files:
            bad = _violations(_imports(path), rule.forbidden)
            if bad:
                where = path.relative_to(SRC)
                problems.append(f"{where} imports {sorted(bad)}: {rule.why}")
    assert not problems, "\n".join(problems)


def test_only_transport_touches_sockets_and_network_libraries() -> None:
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC)
        if relative.parts[0] == "transport":
            continue
        bad = _violations(_imports(path), NETWORK)
        if bad:
            problems.append(f"{relative} imports {sorted(bad)}: only kanal.transport may")
    assert not problems, "\n".join(problems)


def test_importing_the_publisher_loads_no_transport() -> None:
    # What the module rule cannot see: the modules it imports, and theirs.
    probe = (
        "import sys, kanal.publisher\n"
        "print(' '.join(m for m in sys.modules if m.split('.')[0] in {'aiohttp', 'httptools'}"
        " or m.startswith(('kanal.transport', 'kanal.server', 'kanal.webhooks'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=SRC.parent
    ).stdout.split()
    assert loaded == [], f"kanal.publisher loads {loaded}"


def test_the_checks_can_fail() -> None:
    # Guard against rules that cannot fail.
    assert _violations({"asyncio.tasks", "orjson"}, PROTOCOL_FORBIDDEN) == {"asyncio.tasks"}
    hub_rule = next(rule for rule in RULES if rule.where == "hub/")
    assert _violations({"kanal.transport.http"}, hub_rule.forbidden) == {"kanal.transport.http"}
    assert _violations({"kanal.hubris"}, hub_rule.forbidden) == set()


def test_every_module_declares_all() -> None:
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "__main__.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        targets = {
            t.id
            for node in tree.body
            if isinstance(node, ast.Assign | ast.AnnAssign)
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(t, ast.Name)
        }
        assert "__all__" in targets, f"{path.relative_to(SRC)} has no __all__"
