"""docker-compose.yml, Dockerfile, .env.example and the per-environment examples
(deploy/env/*.env.example) agree with each other and with the app.

No Docker engine is needed: the files are parsed (PyYAML for compose, a small strict parser
for the env examples, a line parser for the Dockerfile) and checked against
`oasis_site.environment.KNOWN_VARIABLES`, `read_environment` and the Prometheus scrape config.

.env.example format (parsed strictly by `parse_env_example`):

- ``# ==== Title ====`` starts a section; the section titled ``docker-compose only`` holds
  the variables only docker-compose.yml reads;
- ``NAME=value`` sets a variable, ``# NAME=value`` documents one left unset;
- every variable has at least one plain comment line directly above it, appears once, and
  has no quotes, ``export``, ``$`` or whitespace around its value.

deploy/env/<env>.env.example follow the same format and set only variables .env.example
documents, each in the same kind of section (app or ``docker-compose only``).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from oasis_site.environment import KNOWN_VARIABLES, read_environment
from trading.credentials import credentials_from_environment

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
ENV_DIR = ROOT / "deploy" / "env"
DOCKERIGNORE = ROOT / ".dockerignore"
GITIGNORE = ROOT / ".gitignore"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"

APP_SERVICES = ("web", "ingestor", "trader", "worker", "beat")
# Which OASIS_ENV each per-environment example runs (staging runs as production).
ENVIRONMENTS = {"dev": "dev", "stg": "prod", "prod": "prod"}
COMPOSE_ONLY_SECTION = "docker-compose only"
# Variables compose itself reads from .env (not interpolated in docker-compose.yml).
COMPOSE_OWN_VARIABLES = ("COMPOSE_PROFILES",)
# Variables compose must refuse to start without (`${NAME:?message}`).
REQUIRED_SECRETS = (
    "SECRET_KEY",
    "POSTGRES_PASSWORD",
    "POSTGRES_APP_PASSWORD",
    "MONGO_INITDB_ROOT_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
)
# Processes with work in flight when stopped: compose must give them time to finish it.
GRACEFUL_SERVICES = {"web": 10, "worker": 30, "ingestor": 30, "trader": 30}
# App variables the app containers deliberately do not receive, and why.
NOT_PASSED = {"OASIS_BROADCAST_RELAY_URL": "the stack always has Redis, which carries broadcasts"}
_CREDENTIAL = re.compile(r"_(API_KEY|API_SECRET|API_PASSWORD|SECRETS_FILE)$")

_SECTION = re.compile(r"^# ==== (?P<title>[^=]+?) ====$")
_ENTRY = re.compile(r"^(?P<commented># )?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")
# Anything that looks like an assignment, however written: must then match _ENTRY exactly.
_LOOKS_LIKE_ENTRY = re.compile(r"^(#\s*)?(export\s+)?[A-Za-z_][A-Za-z0-9_]*\s*=")
_SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|API_KEY")
_URL_CREDENTIALS = re.compile(r"://[^/@\s]*:[^/@\s]+@")
# Compose interpolation: $$ (a literal $), ${NAME}, ${NAME:-default} and friends, $NAME.
_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}$]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<invalid>))"
)


class EnvExampleError(ValueError):
    pass


class InterpolationError(ValueError):
    pass


@dataclass(frozen=True)
class Entry:
    name: str
    value: str
    active: bool  # NAME=value (set) rather than # NAME=value (documented, unset)
    section: str
    line: int

    @property
    def compose_only(self) -> bool:
        return self.section == COMPOSE_ONLY_SECTION


def parse_env_example(text: str, source: str = ".env.example") -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    section = ""
    described = False  # the previous line was a description comment
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{source} line {number}: {line!r}"
        if not line.strip():
            described = False
            continue
        if line != line.rstrip():
            raise EnvExampleError(f"{where}: trailing whitespace")
        if heading := _SECTION.match(line):
            section = heading["title"]
            described = False
            continue
        entry = _ENTRY.match(line)
        if entry is None:
            if _LOOKS_LIKE_ENTRY.match(line):
                raise EnvExampleError(f"{where}: write variables as NAME=value or # NAME=value")
            if not (line == "#" or line.startswith("# ")):
                raise EnvExampleError(f"{where}: neither a comment, a section nor NAME=value")
            described = True
            continue
        name, value = entry["name"], entry["value"]
        if not section:
            raise EnvExampleError(f"{where}: {name} is outside any '# ==== Title ====' section")
        if not described:
            raise EnvExampleError(f"{where}: {name} needs a description comment directly above it")
        if name in entries:
            raise EnvExampleError(f"{where}: {name} is already documented on line {entries[name].line}")
        if value != value.strip() or any(char in value for char in "\"'$`"):
            raise EnvExampleError(f"{where}: {name} needs a bare value: no quotes, $, ` or padding")
        entries[name] = Entry(name, value, entry["commented"] is None, section, number)
        described = False
    return entries


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Resolve compose's ${...} syntax the way `docker compose` does."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["invalid"] is not None:
            raise InterpolationError(f"unsupported interpolation at {match.start()} in {text!r}")
        name = match["braced"] or match["named"]
        value = variables.get(name)
        op, arg = match["op"], match["arg"] or ""
        unset_or_empty = not value if op and op.startswith(":") else value is None
        if op in (":-", "-"):
            return arg if unset_or_empty else str(value)
        if op in (":?", "?"):
            if unset_or_empty:
                raise InterpolationError(f"{name}: {arg}")
            return str(value)
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return value or ""

    return _INTERPOLATION.sub(replace, text)


def referenced_names(text: str) -> set[str]:
    names = set()
    for match in _INTERPOLATION.finditer(text):
        if match["invalid"] is not None:
            raise InterpolationError(f"unsupported interpolation at {match.start()} in {text!r}")
        if not match["escaped"]:
            names.add(match["braced"] or match["named"])
    return names


def strings_in(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for key, value in node.items():
            yield from strings_in(key)
            yield from strings_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings_in(item)


def environment_of(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's `environment:` block, as a mapping whether written as a map or a list."""
    block = service.get("environment") or {}
    if isinstance(block, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in block)
    return {str(name): "" if value is None else str(value) for name, value in block.items()}


def env_files_of(service: Mapping[str, Any]) -> list[str]:
    value = service.get("env_file") or []
    items = value if isinstance(value, list) else [value]
    return [item["path"] if isinstance(item, Mapping) else str(item) for item in items]


def container_environment(service: Mapping[str, Any], dot_env: Mapping[str, str]) -> dict[str, str]:
    """What a service's process sees: its env_file (.env), overridden by `environment:`."""
    environ = dict(dot_env) if env_files_of(service) else {}
    environ.update({name: interpolate(value, dot_env) for name, value in environment_of(service).items()})
    return environ


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    stages: list[list[tuple[str, str]]] = []
    for instruction in instructions:
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    assert COMPOSE_FILE.is_file(), f"{COMPOSE_FILE} is missing"
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict), "docker-compose.yml must be a mapping"
    assert isinstance(document.get("services"), dict), "docker-compose.yml has no services"
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def documented() -> dict[str, Entry]:
    assert ENV_EXAMPLE.is_file(), f"{ENV_EXAMPLE} is missing"
    return parse_env_example(ENV_EXAMPLE.read_text())


@pytest.fixture(scope="module")
def example_values(documented: dict[str, Entry]) -> dict[str, str]:
    """The environment `cp .env.example .env` gives: the variables it sets."""
    return {entry.name: entry.value for entry in documented.values() if entry.active}


# What an operator fills in before `docker compose up`: throwaway test values.
TEST_SECRETS = {
    "SECRET_KEY": "test-only-" + "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOP",
    "POSTGRES_PASSWORD": "pg-test-password",
    "POSTGRES_APP_PASSWORD": "pg-app-test-password",
    "MONGO_INITDB_ROOT_PASSWORD": "mongo-test-password",
    "GRAFANA_ADMIN_PASSWORD": "grafana-test-password",
}


def env_example_path(environment: str) -> Path:
    return ENV_DIR / f"{environment}.env.example"


@pytest.fixture(scope="module")
def environment_examples() -> dict[str, dict[str, Entry]]:
    """deploy/env/<env>.env.example, parsed strictly, by environment name."""
    examples = {}
    for environment in ENVIRONMENTS:
        path = env_example_path(environment)
        assert path.is_file(), f"{path} is missing"
        examples[environment] = parse_env_example(path.read_text(), source=str(path.relative_to(ROOT)))
    return examples


def filled_in(entries: dict[str, Entry]) -> dict[str, str]:
    """An example copied to .env with its empty secrets filled in (test values)."""
    values = {entry.name: entry.value for entry in entries.values() if entry.active}
    return {**values, **{name: secret for name, secret in TEST_SECRETS.items() if not values.get(name)}}


@pytest.fixture(scope="module")
def prod_dot_env(environment_examples: dict[str, dict[str, Entry]]) -> dict[str, str]:
    """.env as an operator fills in deploy/env/prod.env.example, with throwaway test secrets."""
    return filled_in(environment_examples["prod"])


# --- the .env.example parser is strict --------------------------------------------------


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("# ==== S ====\n# Described.\nexport FOO=1\n", "NAME=value or # NAME=value"),
        ("# ==== S ====\n# Described.\n#FOO=1\n", "NAME=value or # NAME=value"),
        ("# ==== S ====\n# Described.\nFOO = 1\n", "NAME=value or # NAME=value"),
        ("# ==== S ====\n# Described.\nFOO='1'\n", "bare value"),
        ("# ==== S ====\n# Described.\nFOO=a$B\n", "bare value"),
        ("# ==== S ====\nFOO=1\n", "description comment"),
        ("# ==== S ====\n# Described.\n\nFOO=1\n", "description comment"),
        ("# Described.\nFOO=1\n", "outside any"),
        ("# ==== S ====\n# A.\nFOO=1\n# B.\n# FOO=2\n", "already documented"),
        ("# ==== S ====\nnot a comment\n", "neither a comment"),
    ],
)
def test_env_example_parser_rejects_malformed_lines(text: str, complaint: str) -> None:
    with pytest.raises(EnvExampleError, match=re.escape(complaint)):
        parse_env_example(text)


def test_env_example_parser_reads_set_and_documented_variables() -> None:
    entries = parse_env_example(
        "# ==== A ====\n# Set.\nFOO=1\n\n# ==== docker-compose only ====\n# U.\n# BAR=\n"
    )
    assert entries["FOO"] == Entry("FOO", "1", True, "A", 3)
    assert entries["BAR"] == Entry("BAR", "", False, COMPOSE_ONLY_SECTION, 7)
    assert entries["BAR"].compose_only


def test_interpolation_follows_compose_rules() -> None:
    assert interpolate("a${X}b$X$$X${Y:-d}${Z-e}", {"X": "1", "Z": ""}) == "a1b1$Xd"
    assert referenced_names("$${A} ${B:?m} $C") == {"B", "C"}
    with pytest.raises(InterpolationError, match="X: needed"):
        interpolate("${X:?needed}", {"X": ""})


# --- .env.example documents exactly the known variables ---------------------------------


def test_env_example_is_well_formed() -> None:
    assert ENV_EXAMPLE.is_file(), f"{ENV_EXAMPLE} is missing"
    try:
        parse_env_example(ENV_EXAMPLE.read_text())
    except EnvExampleError as exc:
        pytest.fail(str(exc))


def test_env_example_documents_every_known_variable(documented: dict[str, Entry]) -> None:
    missing = [name for name in KNOWN_VARIABLES if name not in documented]
    assert not missing, f".env.example does not document: {', '.join(missing)}"
    misplaced = [name for name in KNOWN_VARIABLES if documented[name].compose_only]
    assert not misplaced, f"app variables in the '{COMPOSE_ONLY_SECTION}' section: {misplaced}"


def test_env_example_documents_nothing_unknown(documented: dict[str, Entry]) -> None:
    unknown = [e.name for e in documented.values() if not e.compose_only and e.name not in KNOWN_VARIABLES]
    assert not unknown, (
        f".env.example documents variables the app does not read: {unknown}; add them to "
        f"KNOWN_VARIABLES or move them to the '{COMPOSE_ONLY_SECTION}' section"
    )
    compose_only = [e.name for e in documented.values() if e.compose_only]
    assert compose_only, f".env.example has no '# ==== {COMPOSE_ONLY_SECTION} ====' section"


def test_compose_only_variables_are_used_by_compose(compose: dict[str, Any], documented: dict[str, Entry]):
    used = {name for text in strings_in(compose) for name in referenced_names(text)}
    used |= set(COMPOSE_OWN_VARIABLES)
    for service in compose["services"].values():
        used |= set(environment_of(service))
    unused = [e.name for e in documented.values() if e.compose_only and e.name not in used]
    assert not unused, f"compose-only variables docker-compose.yml never uses: {unused}"


def test_env_example_holds_no_secrets(documented: dict[str, Entry]) -> None:
    for entry in documented.values():
        if _SECRET_NAME.search(entry.name):
            assert entry.value == "", f"{entry.name} must be empty in .env.example (line {entry.line})"
        assert not _URL_CREDENTIALS.search(entry.value), (
            f"{entry.name} on line {entry.line} carries credentials in its URL; use a placeholder"
        )


def test_env_example_as_is_is_a_valid_dev_environment(example_values: dict[str, str], tmp_path: Path):
    env = read_environment(example_values, base_dir=tmp_path)
    assert env.name == "dev", "cp .env.example .env must give a dev environment"
    assert not env.is_prod


# --- docker-compose.yml -----------------------------------------------------------------


def test_every_service_has_an_image_or_a_build(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert "image" in service or "build" in service, f"service {name} has neither image nor build"


def test_third_party_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "build" in service:
            continue
        image = str(service["image"])
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert "@sha256:" in image or (tag and tag != "latest" and re.search(r"\d", tag)), (
            f"service {name} uses an unpinned image {image!r}"
        )


def test_every_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        healthcheck = service.get("healthcheck")
        assert isinstance(healthcheck, dict), f"service {name} has no healthcheck"
        assert not healthcheck.get("disable"), f"service {name} disables its healthcheck"
        test = healthcheck.get("test")
        assert test, f"service {name}'s healthcheck has no test"
        if isinstance(test, list):
            assert test[0] in ("CMD", "CMD-SHELL"), f"service {name}'s healthcheck: [CMD, ...]; got {test}"
            assert len(test) > 1, f"service {name}'s healthcheck test runs nothing: {test}"


def test_depends_on_waits_for_healthy_services(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"service {name}: depends_on must be a map with conditions"
        for target, options in depends_on.items():
            assert target in services, f"service {name} depends on unknown service {target}"
            assert target != name, f"service {name} depends on itself"
            condition = (options or {}).get("condition")
            assert condition == "service_healthy", (
                f"service {name} must wait for {target} with condition: service_healthy; got {condition}"
            )


def test_no_service_reads_dot_env_whole(services: dict[str, dict[str, Any]]) -> None:
    """.env holds the superuser, root and Grafana passwords: a container gets only the variables
    its `environment:` names, never the whole file."""
    for name, service in services.items():
        assert not env_files_of(service), f"service {name} reads {env_files_of(service)} whole"


def test_environment_variables_are_documented(compose: dict[str, Any], documented: dict[str, Entry]) -> None:
    for name, service in compose["services"].items():
        for variable in environment_of(service):
            assert variable in documented, (
                f"service {name} sets {variable}, which .env.example does not document"
            )
    for text in strings_in(compose):
        for variable in referenced_names(text):
            assert variable in documented, (
                f"docker-compose.yml interpolates ${{{variable}}}, which .env.example does not document"
            )


def test_required_secrets_stop_compose_when_missing(compose: dict[str, Any], prod_dot_env: dict[str, str]):
    texts = list(strings_in(compose))
    for secret in REQUIRED_SECRETS:
        references = [ref for text in texts for ref in re.findall(r"\$\{" + secret + r"[^}]*\}", text)]
        assert references, f"docker-compose.yml never uses {secret}"
        for reference in references:
            assert reference.startswith("${" + secret + ":?"), (
                f"{reference} must be written ${{{secret}:?message}} so compose refuses to start without it"
            )
        for empty in ({k: v for k, v in prod_dot_env.items() if k != secret}, {**prod_dot_env, secret: ""}):
            with pytest.raises(InterpolationError, match=secret):
                interpolate("\n".join(texts), empty)


def test_app_services_run_prod_with_redis_and_database(services: dict[str, dict[str, Any]]) -> None:
    for name in APP_SERVICES:
        assert name in services, f"docker-compose.yml has no {name} service"
        environment = environment_of(services[name])
        # A .env without OASIS_ENV or DEBUG runs production, debug off.
        assert interpolate(environment.get("OASIS_ENV", ""), {}) == "prod", (
            f"{name}: OASIS_ENV defaults to prod"
        )
        assert interpolate(environment.get("DEBUG", "on"), {}) in ("", "0", "false"), f"{name}: DEBUG off"
        assert environment.get("REDIS_URL", "").startswith("redis://redis:"), f"{name}: REDIS_URL -> redis"
        assert environment.get("DATABASE_URL", "").startswith("postgres://"), (
            f"{name}: DATABASE_URL -> postgres"
        )
        assert "@timescaledb:5432/" in environment["DATABASE_URL"], f"{name}: DATABASE_URL -> timescaledb"
        assert "build" in services[name], f"{name} must run the image built from the Dockerfile"


def test_app_services_get_a_valid_prod_environment(
    services: dict[str, dict[str, Any]], prod_dot_env: dict[str, str], tmp_path: Path
) -> None:
    for name in APP_SERVICES:
        env = read_environment(container_environment(services[name], prod_dot_env), base_dir=tmp_path)
        assert env.is_prod, f"{name} does not run with OASIS_ENV=prod"
        assert not env.debug, f"{name} runs with DEBUG on"
        assert env.database["HOST"] == "timescaledb", f"{name}: {env.database}"
        # The application's role, never the bootstrap superuser (deploy/timescaledb/200-oasis-roles.sh).
        assert env.database["USER"] == prod_dot_env["POSTGRES_APP_USER"], f"{name}: database role"
        assert env.database["USER"] != prod_dot_env["POSTGRES_USER"], f"{name} connects as the superuser"
        assert env.database["PASSWORD"] == prod_dot_env["POSTGRES_APP_PASSWORD"], f"{name}: database password"
        assert env.database["NAME"] == prod_dot_env["POSTGRES_DB"], f"{name}: database name"
        assert env.redis_url == "redis://redis:6379/0", f"{name}: {env.redis_url}"
        assert env.mongo_url is not None, f"{name} has no MONGO_URL"
        assert "@mongo:27017/" in env.mongo_url, f"{name}: MONGO_URL must point at the mongo service"
        # "web" appended: Prometheus scrapes web:8000/metrics with that Host header.
        assert env.allowed_hosts == ["desk.example.com", "web"], f"{name}: ALLOWED_HOSTS from .env, and web"


def test_web_serves_on_all_interfaces_published_on_loopback(services: dict[str, dict[str, Any]]) -> None:
    web = services["web"]
    assert environment_of(web).get("OASIS_BIND") == "0.0.0.0", "web must set OASIS_BIND=0.0.0.0"
    assert web.get("ports") == ["127.0.0.1:8000:8000"], f"web must publish 127.0.0.1:8000:8000 only: {web}"
    command = web["command"]
    command_text = command if isinstance(command, str) else shlex.join(command)
    assert "manage.py serve" in command_text, f"web must run manage.py serve; runs {command_text}"
    assert "manage.py migrate" in command_text, f"web must migrate before serving; runs {command_text}"
    assert "/healthz" in " ".join(strings_in(web["healthcheck"]["test"])), "web healthcheck must hit /healthz"
    assert environment_of(web).get("OASIS_PORT") == "8000", "web must pin OASIS_PORT to the published 8000"
    for name, service in services.items():
        if name != "web":
            assert not service.get("ports"), f"only web may publish ports; {name} does"


def test_celery_services(services: dict[str, dict[str, Any]]) -> None:
    worker, beat = services["worker"], services["beat"]
    assert shlex.join(worker["command"]).startswith("celery -A oasis_site worker"), worker["command"]
    assert shlex.join(beat["command"]).startswith("celery -A oasis_site beat"), beat["command"]
    assert "inspect ping" in " ".join(strings_in(worker["healthcheck"]["test"])), "worker healthcheck pings"
    assert "web" in worker.get("depends_on", {}), "worker must wait for web, which applies migrations"
    schedule = beat["command"][beat["command"].index("--schedule") + 1]
    mounts = [str(volume).split(":")[1] for volume in beat.get("volumes", [])]
    assert any(schedule.startswith(mount.rstrip("/") + "/") for mount in mounts), (
        f"beat's schedule {schedule} must live in a volume; mounts: {mounts}"
    )


def test_data_lives_in_named_volumes(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared = set(compose.get("volumes") or {})
    for name in ("timescaledb", "redis", "mongo", "beat"):
        sources = [str(volume).split(":")[0] for volume in services[name].get("volumes", [])]
        named = [source for source in sources if not source.startswith((".", "/"))]
        assert named, f"service {name} keeps its data in no named volume: {sources}"
        for source in named:
            assert source in declared, f"service {name} uses volume {source}, not declared under volumes:"


def test_timescaledb_init_script_creates_the_extension(services: dict[str, dict[str, Any]]) -> None:
    mounts = [str(volume).split(":") for volume in services["timescaledb"].get("volumes", [])]
    init = [parts for parts in mounts if parts[1].startswith("/docker-entrypoint-initdb.d/")]
    assert init, f"timescaledb mounts nothing into /docker-entrypoint-initdb.d: {mounts}"
    script = ROOT / init[0][0]
    assert script.is_file(), f"{script} is missing"
    assert "CREATE EXTENSION IF NOT EXISTS timescaledb" in script.read_text(), f"{script}"
    healthcheck = " ".join(strings_in(services["timescaledb"]["healthcheck"]["test"]))
    assert "pg_isready" in healthcheck, "timescaledb healthcheck must use pg_isready"


# --- Dockerfile -------------------------------------------------------------------------


def test_build_contexts_have_a_hardened_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    built = {name: service["build"] for name, service in services.items() if "build" in service}
    assert set(APP_SERVICES) <= set(built), f"app services must be built: {sorted(built)}"
    for name, build in built.items():
        context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
        dockerfile = context / (
            "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        )
        assert dockerfile.is_file(), f"service {name} builds from {dockerfile}, which is missing"
        stages = dockerfile_stages(dockerfile.read_text())
        assert len(stages) >= 2, f"{dockerfile} must be multi-stage"
        final = stages[-1]
        users = [arguments for keyword, arguments in final if keyword == "USER"]
        assert users, f"{dockerfile}: the final stage must set USER"
        user = users[-1].split(":")[0]
        assert user not in ("root", "0"), f"{dockerfile}: the final stage runs as {user}"
        healthchecks = [arguments for keyword, arguments in final if keyword == "HEALTHCHECK"]
        assert healthchecks, f"{dockerfile}: the final stage must declare a HEALTHCHECK"
        assert healthchecks[-1].upper() != "NONE", f"{dockerfile}: HEALTHCHECK NONE"
        assert "/healthz" in healthchecks[-1], f"{dockerfile}: HEALTHCHECK must hit /healthz"
        env = " ".join(arguments for keyword, arguments in final if keyword == "ENV")
        assert re.search(r"(^|\s)OASIS_ENV=prod(\s|$)", env), (
            f"{dockerfile}: final stage needs ENV OASIS_ENV=prod"
        )
        assert ("EXPOSE", "8000") in final, f"{dockerfile}: the final stage must EXPOSE 8000"
        assert ("CMD", '["python", "manage.py", "serve"]') in final, f"{dockerfile}: CMD must serve"
        for keyword, arguments in final:
            assert not (keyword in ("ENV", "ARG") and _SECRET_NAME.search(arguments)), (
                f"{dockerfile}: no secrets in layers: {keyword} {arguments}"
            )


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    assert DOCKERIGNORE.is_file(), f"{DOCKERIGNORE} is missing"
    patterns = {line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip()}
    for required in (".env", ".venv", "var", ".git"):
        assert required in patterns, f".dockerignore must exclude {required}"


# --- per-environment examples (deploy/env) ----------------------------------------------------


def test_environment_examples_are_exactly_the_known_environments() -> None:
    found = {path.name.removesuffix(".env.example") for path in ENV_DIR.glob("*.env.example")}
    assert found == set(ENVIRONMENTS), f"deploy/env holds examples for {sorted(found)}"


def test_environment_examples_use_only_documented_variables(
    environment_examples: dict[str, dict[str, Entry]], documented: dict[str, Entry]
) -> None:
    for environment, entries in environment_examples.items():
        for entry in entries.values():
            where = f"{environment}.env.example line {entry.line}: {entry.name}"
            assert entry.name in documented, f"{where} is not documented in .env.example"
            assert entry.compose_only == documented[entry.name].compose_only, (
                f"{where} is in section {entry.section!r}; "
                f".env.example has it in {documented[entry.name].section!r}"
            )
            if not entry.compose_only:
                assert entry.name in KNOWN_VARIABLES, f"{where} is not in KNOWN_VARIABLES"


def test_environment_examples_hold_no_secrets(environment_examples: dict[str, dict[str, Entry]]) -> None:
    for environment, entries in environment_examples.items():
        for entry in entries.values():
            where = f"{environment}.env.example line {entry.line}"
            if _SECRET_NAME.search(entry.name) or entry.name in TEST_SECRETS:
                assert entry.value == "", f"{where}: {entry.name} must be left empty"
            assert not _URL_CREDENTIALS.search(entry.value), f"{where}: {entry.name} carries credentials"
            assert not (_CREDENTIAL.search(entry.name) and entry.active), (
                f"{where}: {entry.name} is set: exchange keys are never part of an example"
            )


def test_environment_examples_differ_where_environments_differ(
    environment_examples: dict[str, dict[str, Entry]], services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    hosts: dict[str, list[str]] = {}
    for environment, expected_name in ENVIRONMENTS.items():
        dot_env = filled_in(environment_examples[environment])
        for name in APP_SERVICES:
            try:
                env = read_environment(container_environment(services[name], dot_env), base_dir=tmp_path)
            except ValueError as exc:
                pytest.fail(f"{environment}.env.example: {name} would refuse to start: {exc}")
            assert env.name == expected_name, f"{environment}: {name} runs OASIS_ENV={env.name}"
            assert env.debug == (environment == "dev"), f"{environment}: {name} has DEBUG={env.debug}"
            # Dry-run unless deliberately chosen: no example gives the trader a key.
            assert (
                credentials_from_environment(container_environment(services[name], dot_env), env.exchange)
                is None
            )
        for variable in ("OASIS_ENV", "DEBUG", "ALLOWED_HOSTS", "OASIS_LOG_LEVEL", "OASIS_LOG_FORMAT"):
            assert environment_examples[environment].get(variable, Entry("", "", False, "", 0)).active, (
                f"{environment}.env.example must set {variable} (environments differ in it)"
            )
        hosts[environment] = [h.strip() for h in dot_env["ALLOWED_HOSTS"].split(",")]
    assert not set(hosts["stg"]) & set(hosts["prod"]), f"staging and production share hosts: {hosts}"


def test_compose_profiles_of_the_examples_exist(
    environment_examples: dict[str, dict[str, Entry]], services: dict[str, dict[str, Any]]
) -> None:
    declared = {profile for service in services.values() for profile in service.get("profiles", [])}
    for environment, entries in environment_examples.items():
        entry = entries.get("COMPOSE_PROFILES")
        chosen = {p.strip() for p in entry.value.split(",") if p.strip()} if entry and entry.active else set()
        assert chosen <= declared, f"{environment}.env.example: profiles {chosen - declared} are not declared"
        # The simulator is the dev exchange only.
        assert ("sim" in chosen) == (environment == "dev"), (
            f"{environment}: COMPOSE_PROFILES={sorted(chosen)}"
        )
        if entries.get("OASIS_EXCHANGE") and entries["OASIS_EXCHANGE"].value == "sim":
            assert "sim" in chosen, f"{environment}: OASIS_EXCHANGE=sim without the sim profile"


def test_gitignore_keeps_filled_environment_files_out() -> None:
    patterns = {line.strip() for line in GITIGNORE.read_text().splitlines()}
    for required in (".env", ".env.*", "!.env.example", "deploy/env/*.env"):
        assert required in patterns, f".gitignore must contain {required}"
    assert "deploy/env/*.env" in DOCKERIGNORE.read_text().splitlines(), (
        ".dockerignore must exclude deploy/env/*.env"
    )


# --- app services: environment, dependencies, stopping, metrics -------------------------------


def test_app_services_get_only_known_variables(services: dict[str, dict[str, Any]]) -> None:
    for name in APP_SERVICES:
        environment = environment_of(services[name])
        unknown = sorted(set(environment) - set(KNOWN_VARIABLES))
        assert not unknown, f"app service {name} gets variables the app does not read: {unknown}"
        missing = sorted(set(KNOWN_VARIABLES) - set(environment) - set(NOT_PASSED))
        if name != "trader":
            missing = [variable for variable in missing if not _CREDENTIAL.search(variable)]
        assert not missing, f"app service {name} never receives {missing}: setting them in .env does nothing"
        credentials = sorted(variable for variable in environment if _CREDENTIAL.search(variable))
        assert name == "trader" or not credentials, f"exchange keys reach {name}, not only the trader"


def test_app_services_depend_on_what_they_use(
    services: dict[str, dict[str, Any]], prod_dot_env: dict[str, str]
) -> None:
    for name in APP_SERVICES:
        depends_on = services[name].get("depends_on", {})
        environ = container_environment(services[name], prod_dot_env)
        for variable in ("DATABASE_URL", "REDIS_URL", "MONGO_URL"):
            if not environ.get(variable):
                continue
            host = re.sub(r"^[a-z+]+://(?:[^@/]*@)?", "", environ[variable]).split(":")[0].split("/")[0]
            assert host in services, f"{name}: {variable} points at {host}, not a compose service"
            assert (depends_on.get(host) or {}).get("condition") == "service_healthy", (
                f"{name} uses {host} ({variable}) but does not wait for it to be healthy"
            )
        if name != "web":
            # web applies the migrations before it turns healthy (decision 0008).
            uses_schema = name in ("worker", "ingestor", "trader")
            assert not uses_schema or "web" in depends_on, f"{name} must wait for web (migrations)"


def duration_seconds(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", str(text))
    assert parts, f"not a compose duration: {text!r}"
    assert "".join(a + b for a, b in parts) == str(text), f"not a compose duration: {text!r}"
    return sum(float(amount) * units[unit] for amount, unit in parts)


def test_long_running_services_stop_gracefully(services: dict[str, dict[str, Any]]) -> None:
    for name, minimum in GRACEFUL_SERVICES.items():
        grace = services[name].get("stop_grace_period")
        assert grace, f"{name} has no stop_grace_period: compose kills it after 10 s"
        assert duration_seconds(grace) >= minimum, f"{name}: stop_grace_period {grace} < {minimum}s"
    for name in ("ingestor", "trader"):
        # Both drain on SIGTERM (manage.py ingest/trade install the handler).
        assert services[name].get("stop_signal") == "SIGTERM", f"{name} must stop on SIGTERM"
        assert services[name].get("init") is True, f"{name}: init forwards the signal to the command"


def command_text(service: Mapping[str, Any]) -> str:
    command = service.get("command", "")
    return command if isinstance(command, str) else " ".join(str(part) for part in command)


def metrics_ports(name: str, service: Mapping[str, Any], environ: Mapping[str, str]) -> list[int]:
    """The /metrics ports a service's processes listen on (none: it exposes no metrics)."""
    command = command_text(service)
    if name == "web":
        return [int(environ["OASIS_PORT"])]
    if match := re.search(r"--metrics-port[ =](\d+)", command):
        return [int(match[1])] if int(match[1]) else []
    if " worker " in f" {command} ":
        concurrency = int(re.search(r"--concurrency[ =](\d+)", command)[1])  # type: ignore[index]
        base = int(environ.get("OASIS_WORKER_METRICS_PORT") or 9103)
        return [base + index for index in range(concurrency)]
    return []


def test_ingestor_and_trader_run_their_commands_with_metrics(services: dict[str, dict[str, Any]]) -> None:
    for name, command in (("ingestor", "manage.py ingest"), ("trader", "manage.py trade")):
        text = command_text(services[name])
        assert command in text, f"{name} must run {command}; runs {text}"
        ports = metrics_ports(name, services[name], {})
        assert ports, f"{name} must serve /metrics (--metrics-port)"
        healthcheck = " ".join(strings_in(services[name]["healthcheck"]["test"]))
        assert f"127.0.0.1:{ports[0]}/metrics" in healthcheck, f"{name}'s healthcheck must read its /metrics"
    trader = services["trader"]
    assert trader.get("scale", 1) == 1, "one execution loop: the trader runs one container"
    assert "deploy" not in trader or trader["deploy"].get("replicas", 1) == 1, "trader replicas must be 1"
    assert "--once" not in command_text(trader), "the trader runs the loop, not one cycle"


def test_prometheus_scrapes_every_service_that_exposes_metrics(
    services: dict[str, dict[str, Any]], prod_dot_env: dict[str, str]
) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    exposing = 0
    for name, service in services.items():
        environ = container_environment(service, prod_dot_env)
        ports = metrics_ports(name, service, environ)
        exposing += bool(ports)
        networks = service.get("networks") or {}
        aliases = {alias for options in networks.values() for alias in (options or {}).get("aliases", [])}
        for port in ports:
            scraped = {f"{host}:{port}" for host in {name, *aliases}} & targets
            assert scraped, f"{name} serves /metrics on {port}; prometheus.yml scrapes none of {targets}"
    assert exposing >= 4, "web, ingestor, trader and worker expose metrics"


# --- TimescaleDB roles --------------------------------------------------------------------------


def test_timescaledb_creates_roles_from_the_environment(services: dict[str, dict[str, Any]]) -> None:
    timescaledb = services["timescaledb"]
    mounts = [str(volume).split(":") for volume in timescaledb.get("volumes", [])]
    init = sorted(
        (parts[1], parts[0]) for parts in mounts if parts[1].startswith("/docker-entrypoint-initdb.d/")
    )
    names = [target.rsplit("/", 1)[1] for target, _ in init]
    assert any(n.endswith(".sql") for n in names), f"no SQL init script (the extension): {names}"
    assert any(n.endswith(".sh") for n in names), (
        f"no shell init script (roles from the environment): {names}"
    )
    scripts = {target: (ROOT / source).read_text() for target, source in init}
    extension = next(t for t, text in scripts.items() if "CREATE EXTENSION IF NOT EXISTS timescaledb" in text)
    roles = next(t for t, text in scripts.items() if "POSTGRES_APP_PASSWORD" in text)
    assert extension < roles, "the extension must exist before the roles (the app role cannot create it)"
    text = scripts[roles]
    for variable in (
        "POSTGRES_APP_USER",
        "POSTGRES_APP_PASSWORD",
        "POSTGRES_READONLY_USER",
        "POSTGRES_READONLY_PASSWORD",
    ):
        assert variable in text, f"{roles} must read {variable}"
        assert variable in environment_of(timescaledb), f"timescaledb must receive {variable}"
    assert not re.search(r"PASSWORD\s+'", text), f"{roles}: a literal password"
    assert "NOSUPERUSER" in text, f"{roles}: the application role must not be a superuser"
    assert "default_transaction_read_only" in text, f"{roles}: the read-only role must be read-only"
    assert "ALTER DEFAULT PRIVILEGES" in text, f"{roles}: the read-only role must see future tables"
    for target, script in scripts.items():
        # Tables and their indexes are the migrations': nothing creates them before the app.
        statements = "\n".join(
            line for line in script.splitlines() if not line.lstrip().startswith(("--", "#"))
        )
        assert not re.search(r"CREATE\s+(UNIQUE\s+)?(TABLE|INDEX)", statements, re.IGNORECASE), f"{target}"
