"""deploy/: the Dockerfile, the Compose file, the systemd unit and the Kubernetes manifest,
checked field by field without Docker, systemd or a cluster (none runs where the tests run).

What they must agree with is read from kanal itself, so a change of kanal's defaults breaks
these tests instead of the deployments: the stop timeouts exceed the longest graceful stop
that kanal's settings allow (:func:`stop_budget`), the health check is run against a real
node, the commands are parsed by kanal's own command line, the open-files limits are at least
what kanal warns below. The YAML files are read with tests/block_yaml.py (a strict subset
reader; PyYAML is not in the locks) and, where PyYAML can be imported, compared with it.
"""

from __future__ import annotations

import asyncio
import configparser
import dataclasses
import json
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kanal.cli import build_parser
from kanal.config import ServerSettings, WebhookSettings
from kanal.process import FEW_OPEN_FILES
from kanal.settings import ConfigError, load_config
from tests.block_yaml import YamlSubsetError, load_all
from tests.conftest import StartServer

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CONFIG_PATH = "/etc/kanal/kanal.toml"  # where every deploy/ file puts the configuration
#: Seconds beyond the longest graceful stop that every stop timeout leaves: the interpreter's
#: exit, signal delivery, a webhook attempt that started just before the deadline.
MARGIN = 10.0


def stop_budget() -> float:
    """The longest a graceful stop may take with kanal's default settings: the sum of every
    setting that bounds one of its phases, read from kanal (``[server] shutdown_timeout`` and
    any ``drain_*`` setting, then ``[webhooks] shutdown_timeout``; docs/deployment.md, "How
    long a stop takes")."""
    server = ServerSettings()
    phases = {
        f"server.{f.name}": float(getattr(server, f.name))
        for f in dataclasses.fields(server)
        if f.name == "shutdown_timeout" or f.name.startswith("drain_")
    }
    phases["webhooks.shutdown_timeout"] = WebhookSettings().shutdown_timeout
    assert "server.shutdown_timeout" in phases, phases  # renamed? then update this sum
    return sum(phases.values())


def serve_args(argv: list[str]) -> Any:
    """``argv`` (after the program) as ``kanal`` parses it; it must be ``serve``."""
    args = build_parser().parse_args(argv)
    assert args.command == "serve", argv
    return args


def seconds(text: str) -> float:
    """``45``, ``45s``, ``1min``, ``1m30s``: a systemd time span or a Compose duration."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60}
    parts = re.findall(r"(\d+)\s*([a-z]*)", text)
    assert parts and "".join(n + u for n, u in parts) == text.replace(" ", ""), text
    return sum(int(number) * units[unit] for number, unit in parts)


# --- the Dockerfile --------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def dockerfile() -> list[Instruction]:
    """The instructions of deploy/Dockerfile: continuation lines joined, comments dropped
    (also between continuation lines, as Docker does)."""
    instructions: list[Instruction] = []
    pending = ""
    for line in (DEPLOY / "Dockerfile").read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += " " + stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            keyword, _, arguments = pending.strip().partition(" ")
            instructions.append(Instruction(keyword.upper(), arguments.strip()))
            pending = ""
    assert not pending, "the Dockerfile ends inside a continuation"
    return instructions


def final_stage() -> list[Instruction]:
    instructions = dockerfile()
    last_from = max(i for i, item in enumerate(instructions) if item.keyword == "FROM")
    return instructions[last_from:]


def only(keyword: str, instructions: list[Instruction]) -> Instruction:
    [found] = [item for item in instructions if item.keyword == keyword]
    return found


def exec_form(arguments: str) -> list[str]:
    """A JSON array (exec form): no shell between Docker and the process, so the process
    gets the stop signal itself."""
    argv = json.loads(arguments)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), arguments
    return argv


def healthcheck() -> tuple[dict[str, str], list[str]]:
    """HEALTHCHECK's ``--option=value`` pairs and its exec-form command."""
    options, _, command = only("HEALTHCHECK", final_stage()).arguments.partition("CMD ")
    pairs = dict(option.removeprefix("--").split("=", 1) for option in options.split())
    return pairs, exec_form(command)


def image_uid() -> int:
    user = only("USER", final_stage()).arguments
    uid = user.split(":")[0]
    assert uid.isdigit(), f"USER {user}: numeric, so that runAsNonRoot can check it"
    return int(uid)


def test_dockerfile_builds_from_the_locked_requirements_on_python_slim() -> None:
    instructions = dockerfile()
    bases = [item.arguments.split()[0] for item in instructions if item.keyword == "FROM"]
    assert bases and set(bases) == {"python:3.11-slim"}
    runs = [item.arguments for item in instructions if item.keyword == "RUN"]
    [locked] = [run for run in runs if "--require-hashes" in run]
    lock = re.search(r"-r (\S+)", locked)
    assert lock is not None and lock[1] == "requirements/runtime.txt"
    assert (ROOT / lock[1]).is_file() and "--no-deps" in locked
    [package] = [run for run in runs if re.search(r"--no-build-isolation \.(\s|$)", run)]
    assert "--no-deps" in package  # everything it needs came from the lock
    copied = " ".join(item.arguments for item in instructions if item.keyword == "COPY")
    for needed in ("requirements/runtime.txt", "pyproject.toml", "src"):
        assert needed in copied and (ROOT / needed).exists()


def test_dockerfile_runs_kanal_serve_as_a_user_on_all_interfaces() -> None:
    stage = final_stage()
    assert image_uid() != 0
    argv = exec_form(only("CMD", stage).arguments)
    assert argv[0] == "kanal"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["scripts"]["kanal"] == "kanal.cli:main"
    args = serve_args(argv[1:])
    assert (args.host, args.config) == ("0.0.0.0", CONFIG_PATH)
    assert only("STOPSIGNAL", stage).arguments == "SIGTERM"
    assert only("EXPOSE", stage).arguments.split() == [str(ServerSettings().port)]
    options, _ = healthcheck()
    assert seconds(options["timeout"]) > 2  # the urlopen timeout of the check itself


async def test_the_healthcheck_passes_on_a_ready_node_and_fails_while_it_drains(
    start_server: StartServer,
) -> None:
    _, argv = healthcheck()
    assert argv[0] == "python"
    server = await start_server()

    async def check() -> int:
        env = {"KANAL_PORT": str(server.port), "PATH": ""}
        process = await asyncio.create_subprocess_exec(
            sys.executable, *argv[1:], env=env, stderr=asyncio.subprocess.DEVNULL
        )
        return await asyncio.wait_for(process.wait(), 10)

    assert await check() == 0
    server.server.readiness.draining = True  # what SIGTERM does first: /ready says 503
    assert await check() != 0


async def test_the_probe_paths_are_what_kanal_answers(start_server: StartServer) -> None:
    import aiohttp

    container = kubernetes_container()
    ready_path = container["readinessProbe"]["httpGet"]["path"]
    live_path = container["livenessProbe"]["httpGet"]["path"]
    server = await start_server()
    async with aiohttp.ClientSession() as session:

        async def status(path: str) -> int:
            async with session.get(server.base_url + path) as response:
                return response.status

        assert (await status(ready_path), await status(live_path)) == (200, 200)
        server.server.readiness.draining = True
        # Draining takes the pod out of the Service, but is no reason to restart it.
        assert (await status(ready_path), await status(live_path)) == (503, 200)


# --- deploy/kanal.toml -----------------------------------------------------------------------


def test_the_template_config_is_refused_until_the_credentials_are_replaced(
    tmp_path: Path,
) -> None:
    template = (DEPLOY / "kanal.toml").read_text(encoding="utf-8")
    with pytest.raises(ConfigError, match=r"apps\[0\]\.key: must be non-empty without spaces"):
        load_config(str(DEPLOY / "kanal.toml"), {}, {})
    edited = re.sub(r'(?m)^(key|secret) = ".*"$', r'\1 = "\1-of-mine-0123456789"', template)
    path = tmp_path / "kanal.toml"
    path.write_text(edited, encoding="utf-8")
    config = load_config(str(path), {}, {})
    assert config.server.port == ServerSettings().port  # what the deploy/ files expose
    assert config.apps[0].secret == "secret-of-mine-0123456789"


# --- docker-compose.yml ----------------------------------------------------------------------


def test_compose_waits_longer_than_a_graceful_stop() -> None:
    [document] = load_all((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    service = document["services"]["kanal"]
    assert seconds(service["stop_grace_period"]) >= stop_budget() + MARGIN
    assert service["stop_signal"] == "SIGTERM"
    build = service["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    [volume] = service["volumes"]
    source, target, mode = volume.split(":")
    assert (DEPLOY / source).is_file() and (target, mode) == (CONFIG_PATH, "ro")
    port = str(ServerSettings().port)
    assert service["ports"] == [f"{port}:{port}"]
    nofile = service["ulimits"]["nofile"]
    assert min(nofile["soft"], nofile["hard"]) >= FEW_OPEN_FILES


# --- kanal.service (systemd) -----------------------------------------------------------------


def systemd_service() -> configparser.SectionProxy:
    # strict=False: systemd allows a key more than once; optionxform keeps the keys' case.
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "kanal.service").read_text(encoding="utf-8"))
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    return unit["Service"]


def test_systemd_stops_with_sigterm_and_waits_longer_than_a_graceful_stop() -> None:
    service = systemd_service()
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"  # the parent forwards SIGTERM to --workers itself
    assert seconds(service["TimeoutStopSec"]) >= stop_budget() + MARGIN
    assert int(service["LimitNOFILE"]) >= FEW_OPEN_FILES
    assert service["Restart"] == "on-failure"
    assert service["User"] not in ("", "root", "0")
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/bin/kanal")
    assert serve_args(argv[1:]).config == CONFIG_PATH


# --- kubernetes.yaml -------------------------------------------------------------------------


def kubernetes() -> dict[str, dict[str, Any]]:
    documents = load_all((DEPLOY / "kubernetes.yaml").read_text(encoding="utf-8"))
    return {document["kind"]: document for document in documents}


def kubernetes_container() -> dict[str, Any]:
    [container] = kubernetes()["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def test_kubernetes_grace_period_covers_the_prestop_sleep_and_a_graceful_stop() -> None:
    pod = kubernetes()["Deployment"]["spec"]["template"]["spec"]
    container = kubernetes_container()
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2
    pre_stop = float(command[1])
    assert 0 < pre_stop <= 15  # long enough for endpoint removal, not a stop of its own
    # The grace period runs from the pod's deletion: preStop first, then SIGTERM.
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + stop_budget() + MARGIN


def test_kubernetes_probes_runs_as_the_image_user_and_reads_the_secret() -> None:
    documents = kubernetes()
    pod_template = documents["Deployment"]["spec"]["template"]
    pod, container = pod_template["spec"], kubernetes_container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_uid()
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"requests", "limits"} <= set(container["resources"])

    [port] = container["ports"]
    assert port["containerPort"] == ServerSettings().port
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == port["name"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"

    args = serve_args(container["command"][1:])
    assert container["command"][0] == "kanal" and args.host == "0.0.0.0"
    [mount] = container["volumeMounts"]
    assert f"{mount['mountPath']}/kanal.toml" == args.config == CONFIG_PATH
    [volume] = pod["volumes"]
    assert volume["name"] == mount["name"] and volume["secret"]["secretName"]

    service = documents["Service"]["spec"]
    assert service["selector"] == pod_template["metadata"]["labels"]
    assert [p["targetPort"] for p in service["ports"]] == [port["name"]]


# --- the YAML reader -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["kubernetes.yaml", "docker-compose.yml"])
def test_the_subset_reader_agrees_with_pyyaml(name: str) -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not in the locks; compared when present")
    text = (DEPLOY / name).read_text(encoding="utf-8")
    assert load_all(text) == list(yaml.safe_load_all(text))


def test_the_subset_reader_reads_block_yaml() -> None:
    text = "a: 1\nb:\n- x\n- {\"k\": [1]}\nc:\n  d: 'it''s'\n  e: \"6001:6001\"  # note\n---\n- f\n"
    assert load_all(text) == [
        {"a": 1, "b": ["x", {"k": [1]}], "c": {"d": "it's", "e": "6001:6001"}},
        ["f"],
    ]


@pytest.mark.parametrize(
    "text",
    [
        "a:\n\tb: 1\n",  # a tab
        "a: &x 1\nb: *x\n",  # anchors and aliases
        "a: |\n  text\n",  # block scalar
        "a: yes\n",  # a boolean in YAML 1.1, a string in 1.2
        "a: 6001:6001\n",  # sexagesimal in YAML 1.1
        "a: 010\n",  # octal in YAML 1.1
        "a: 1\n  b: 2\n",  # bad indentation
        "a: 1\na: 2\n",  # a duplicate key
        "a: [1, 2\n",  # not JSON
    ],
)
def test_the_subset_reader_refuses_what_it_does_not_understand(text: str) -> None:
    with pytest.raises(YamlSubsetError):
        load_all(text)
