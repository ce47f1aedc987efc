"""Architecture rules enforced by scanning imports (DEVELOPERS.md, STYLE.md rules 1 and 8)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "kanal"

# kanal.protocol is pure: no I/O, clock, randomness or network library (STYLE.md rule 1).
FORBIDDEN_IN_PROTOCOL = {
    "asyncio",
    "socket",
    "ssl",
    "selectors",
    "time",
    "random",
    "secrets",
    "threading",
    "subprocess",
    "aiohttp",
    "uvloop",
    "redis",
    "websockets",
    "urllib.request",
    "http",
    "kanal.hub",
    "kanal.adapters",
    "kanal.transport",
    "kanal.server",
    "kanal.webhooks",
}
NETWORK_LIBRARIES = {"aiohttp", "httptools"}
# The WebSocket framing is sans-I/O like kanal.protocol, so it is tested by feeding it bytes.
FORBIDDEN_IN_FRAMES = {"asyncio", "socket", "ssl", "selectors", "uvloop", *NETWORK_LIBRARIES}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _violations(names: set[str], forbidden: set[str]) -> set[str]:
    return {n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden)}


def test_protocol_package_imports_no_io() -> None:
    files = sorted((SRC / "protocol").glob("*.py"))
    assert files, "kanal.protocol has no modules?"
    for path in files:
        bad = _violations(_imports(path), FORBIDDEN_IN_PROTOCOL)
        assert not bad, f"{path.name} imports {sorted(bad)}: kanal.protocol must stay pure"


def test_only_transport_imports_the_network_library() -> None:
    allowed = {"transport"}
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC)
        if relative.parts[0] in allowed:
            continue
        bad = _violations(_imports(path), NETWORK_LIBRARIES)
        assert not bad, f"{relative} imports {sorted(bad)}: only kanal.transport may"


def test_websocket_framing_is_sans_io() -> None:
    bad = _violations(_imports(SRC / "transport" / "frames.py"), FORBIDDEN_IN_FRAMES)
    assert not bad, f"transport/frames.py imports {sorted(bad)}: it must stay sans-I/O"


def test_layering_check_detects_a_violation() -> None:
    # Guard against a check that cannot fail.
    assert _violations({"asyncio.tasks", "orjson"}, FORBIDDEN_IN_PROTOCOL) == {"asyncio.tasks"}


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
