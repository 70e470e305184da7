"""Prometheus and Grafana as code (deploy/prometheus, deploy/grafana) agree with the code.

- promtool (Debian's `prometheus` package) checks the scrape config and the rules and runs the
  rule unit tests: absent, these tests skip, unless OASIS_REQUIRE_SERVICES=1 (CI), where they fail.
- Every PromQL expression, in alert and recording rules and in dashboard panels, names only
  metrics the code exports (read from prometheus_client's registry), recorded series, or the
  series Prometheus makes itself; every alert has a severity, a runbook section, and a promtool
  test that fires it and one that does not.
- Every dashboard parses, has a uid, a title and panels, and queries the provisioned data source.
- docs/metrics.md documents exactly the `oasis_*` metrics the code exports.
- The validators fail on broken copies (bad input must fail CI, not pass it silently).
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from oasis_site.environment import read_environment

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
DATASOURCES = sorted((GRAFANA_DIR / "provisioning" / "datasources").glob("*.yml"))
DASHBOARD_PROVIDERS = sorted((GRAFANA_DIR / "provisioning" / "dashboards").glob("*.yml"))
METRICS_DOC = ROOT / "docs" / "metrics.md"
COMPOSE_FILE = ROOT / "docker-compose.yml"

# Every module that defines metrics at import time (the Django apps' ready() register the
# scrape-time collectors; django-prometheus's HTTP metrics appear with its middleware).
METRIC_MODULES = (
    "marketdata.ingest.metrics",
    "rules.evaluation",
    "trading.metrics",
    "trading.drift",
    "oasis_site.consumers",
    "oasis_site.broadcast",
)
# Series Prometheus writes itself, whatever the target exports.
PROMETHEUS_SERIES = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds"})
THIRD_PARTY_PREFIXES = ("django_", "process_", "python_")
SEVERITIES = frozenset({"critical", "warning"})
# The processes the issue names, and their metrics ports (the commands' defaults, see below).
SCRAPED_JOBS = ("web", "ingest", "trade", "worker")

# --- PromQL: the metric names an expression reads ------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_NUMBER_OR_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:e[+-]?\d+)?|(?:\d+[smhdwy])+|Inf|NaN|inf|nan)$")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}
    | {"sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values"}
    | {"group", "inf", "nan", "Inf", "NaN"}
)


def metric_names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, labels, keywords or numbers).

    A deliberately small reader, not a parser: strings, label matchers, ranges, grouping clauses
    and Grafana variables are removed, then every identifier not followed by `(` is a metric.
    promtool (below) parses the rules for real; dashboards have no other check.
    """
    text = _STRING.sub(" ", expr)
    text = _VARIABLE.sub(" ", text)
    previous = None
    while previous != text:  # nested braces in matchers never happen; ranges and groups nest once
        previous = text
        text = _GROUPING.sub(" ", _RANGE.sub(" ", _MATCHERS.sub(" ", text)))
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name in _KEYWORDS or _NUMBER_OR_DURATION.match(name):
            continue
        names.add(name)
    return names


# --- what the code exports -------------------------------------------------------------------


def exposition_names(name: str, kind: str) -> set[str]:
    """The sample names a metric family appears under in the text format."""
    if kind == "counter":
        return {f"{name}_total", f"{name}_created"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_count", f"{name}_sum", f"{name}_created"}
    if kind == "summary":
        return {name, f"{name}_count", f"{name}_sum", f"{name}_created"}
    if kind == "info":
        return {f"{name}_info"}
    return {name}


_METRIC_CLASSES = {
    "Counter": "counter",
    "Gauge": "gauge",
    "Histogram": "histogram",
    "Summary": "summary",
    "Info": "info",
    "Enum": "stateset",
    "CounterMetricFamily": "counter",
    "GaugeMetricFamily": "gauge",
    "HistogramMetricFamily": "histogram",
    "SummaryMetricFamily": "summary",
}
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_SKIPPED_DIRECTORIES = frozenset({".venv", ".git", "node_modules", "tests", "migrations", "var", "static"})


def _project_sources(root: Path) -> Iterator[Path]:
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [name for name in subdirectories if name not in _SKIPPED_DIRECTORIES]
        yield from (Path(directory) / name for name in files if name.endswith(".py"))


def defined_families(root: Path = ROOT) -> dict[str, str]:
    """Every metric the project's source defines, read from the code ({family name: type}):
    prometheus_client's `Counter("name", "help", ...)` and friends, and the `*MetricFamily`s of
    scrape-time collectors. Read statically, so the answer depends neither on which modules a
    test run happened to import nor on metrics tests register for themselves."""
    families: dict[str, str] = {}
    for path in _project_sources(root):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Call) or len(node.args) < 2:  # name and help: not collections.Counter
                continue
            function = (
                node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            )
            first = node.args[0]
            if function not in _METRIC_CLASSES or not isinstance(first, ast.Constant):
                continue
            if not isinstance(first.value, str) or not _METRIC_NAME.match(first.value):
                continue
            kind = _METRIC_CLASSES[function]
            # prometheus_client drops a counter's _total from the family name (and adds it back).
            name = first.value.removesuffix("_total") if kind == "counter" else first.value
            families[name] = kind
    return families


def registered_families() -> dict[str, str]:
    """The families in prometheus_client's registry once the metric modules are imported (and
    django-prometheus's HTTP metrics, created with its middleware). Collectors are described, not
    collected (collecting would read Redis and the database)."""
    from django_prometheus.middleware import Metrics

    for module in METRIC_MODULES:
        importlib.import_module(module)
    Metrics.get_instance()
    families: dict[str, str] = {}
    for collector in list(REGISTRY._collector_to_names):
        describe = getattr(collector, "describe", None)
        for family in describe() if describe is not None else collector.collect():
            families[family.name] = family.type
    return families


def recorded_names(rule_files: Iterable[Path]) -> set[str]:
    return {
        rule["record"]
        for path in rule_files
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", [])
        for rule in group.get("rules", [])
        if "record" in rule
    }


@pytest.fixture(scope="module")
def families() -> dict[str, str]:
    """What the processes export: the project's metrics, and the libraries' (django-prometheus,
    prometheus_client's process and Python collectors) as registered."""
    libraries = {
        name: kind for name, kind in registered_families().items() if name.startswith(THIRD_PARTY_PREFIXES)
    }
    return {**libraries, **defined_families()}


@pytest.fixture(scope="module")
def known_series(families: dict[str, str]) -> frozenset[str]:
    names = {sample for name, kind in families.items() for sample in exposition_names(name, kind)}
    return frozenset(names | recorded_names(RULE_FILES) | PROMETHEUS_SERIES)


# --- validators (also run on broken copies below) -------------------------------------------


def runbook_anchors(path: Path) -> set[str]:
    """GitHub's anchors for a Markdown file's headings."""
    anchors = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def rule_problems(path: Path, known: frozenset[str], *, root: Path = ROOT) -> list[str]:
    """What is wrong with one rule file, beyond what promtool checks: unknown metrics, alerts
    without a severity, a summary or a runbook section that exists."""
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        return [f"{path.name}: not YAML: {exc}"]
    if (
        not isinstance(document, dict)
        or not isinstance(document.get("groups"), list)
        or not document["groups"]
    ):
        return [f"{path.name}: no groups"]
    problems = []
    for group in document["groups"]:
        rules = group.get("rules") if isinstance(group, dict) else None
        if not isinstance(rules, list) or not rules:
            problems.append(f"{path.name}: group {group!r} has no rules")
            continue
        for rule in rules:
            name = rule.get("alert") or rule.get("record")
            if ("alert" in rule) == ("record" in rule):
                problems.append(f"{path.name}: a rule must be an alert or a record: {rule!r}")
                continue
            expr = str(rule.get("expr") or "")
            if not expr.strip():
                problems.append(f"{path.name}: {name} has no expr")
            for metric in sorted(metric_names_in(expr) - known):
                problems.append(f"{path.name}: {name} reads {metric}, which no process exports")
            if "alert" not in rule:
                continue
            severity = (rule.get("labels") or {}).get("severity")
            if severity not in SEVERITIES:
                problems.append(f"{path.name}: {name} needs severity {sorted(SEVERITIES)}; has {severity!r}")
            annotations = rule.get("annotations") or {}
            if not annotations.get("summary"):
                problems.append(f"{path.name}: {name} has no summary")
            runbook = str(annotations.get("runbook_url") or "")
            document_path, _, anchor = runbook.partition("#")
            if not document_path.startswith("docs/runbooks/") or not anchor:
                problems.append(f"{path.name}: {name} needs runbook_url docs/runbooks/<file>.md#<section>")
            elif not (root / document_path).is_file():
                problems.append(f"{path.name}: {name}'s runbook {document_path} does not exist")
            elif anchor not in runbook_anchors(root / document_path):
                problems.append(f"{path.name}: {name}'s runbook {document_path} has no section #{anchor}")
    return problems


def alerts_in(rule_files: Iterable[Path]) -> list[str]:
    return [
        rule["alert"]
        for path in rule_files
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def alert_test_cases(test_files: Iterable[Path]) -> Iterator[tuple[str, bool]]:
    """(alert name, fires?) for every alert_rule_test of promtool's unit test files."""
    for path in test_files:
        for test in yaml.safe_load(path.read_text()).get("tests", []):
            for case in test.get("alert_rule_test", []):
                yield case["alertname"], bool(case.get("exp_alerts"))


def dashboard_problems(path: Path, known: frozenset[str], datasource_uids: set[str]) -> list[str]:
    try:
        board = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        return [f"{path.name}: not JSON: {exc}"]
    if not isinstance(board, dict):
        return [f"{path.name}: not a dashboard object"]
    problems = [f"{path.name}: no {key}" for key in ("uid", "title") if not str(board.get(key) or "").strip()]
    panels = board.get("panels")
    if not isinstance(panels, list) or not panels:
        return [*problems, f"{path.name}: no panels"]
    ids = [panel.get("id") for panel in panels if isinstance(panel, dict)]
    if len(ids) != len(set(ids)):
        problems.append(f"{path.name}: panel ids repeat: {ids}")
    for panel in panels:
        if not isinstance(panel, dict):
            problems.append(f"{path.name}: a panel is not an object: {panel!r}")
            continue
        where = f"{path.name}: panel {panel.get('title')!r}"
        if panel.get("type") in ("row", "text"):
            continue
        if not str(panel.get("title") or "").strip():
            where = f"{path.name}: panel {panel.get('id')}"
            problems.append(f"{where} has no title")
        if not isinstance(panel.get("gridPos"), dict):
            problems.append(f"{where} has no gridPos")
        targets = panel.get("targets")
        if not isinstance(targets, list) or not targets:
            problems.append(f"{where} has no targets")
            continue
        for target in targets:
            expr = str(target.get("expr") or "")
            if not expr.strip():
                problems.append(f"{where} has a target without expr")
                continue
            for metric in sorted(metric_names_in(expr) - known):
                problems.append(f"{where} reads {metric}, which no process exports")
            source = target.get("datasource") or panel.get("datasource") or {}
            if source.get("uid") not in datasource_uids:
                problems.append(f"{where} queries data source {source.get('uid')!r}, not a provisioned one")
    return problems


def provisioned_datasource_uids(paths: Iterable[Path]) -> set[str]:
    return {
        str(source["uid"])
        for path in paths
        for source in yaml.safe_load(path.read_text()).get("datasources", [])
        if source.get("type") == "prometheus"
    }


# --- the PromQL reader ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('up{job=~"web|ingest"} == 0', {"up"}),
        (
            "histogram_quantile(0.95, sum by (tf, le) (rate(oasis_ingest_latency_seconds_bucket[10m])))",
            {"oasis_ingest_latency_seconds_bucket"},
        ),
        (
            "sum by (exchange) (increase(oasis_ingest_ws_reconnects_total[10m])) > 5",
            {"oasis_ingest_ws_reconnects_total"},
        ),
        ("a:b:c / on (mode) group_left (x) other_metric offset 5m", {"a:b:c", "other_metric"}),
        ("rate(x_total[$__rate_interval]) * 1e3 + 2h", {"x_total"}),
        ('count(y{l="sum(z)"}) and topk(3, w)', {"y", "w"}),
        ("max(q) unless bool_metric", {"q", "bool_metric"}),
    ],
)
def test_promql_reader_finds_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names_in(expr) == names


# --- the code's metrics: named oasis_* and documented ------------------------------------------


def test_metric_definitions_are_read_from_the_source(tmp_path: Path) -> None:
    package = tmp_path / "app"
    (package / "tests").mkdir(parents=True)
    (package / "metrics.py").write_text(
        "import collections\n"
        "from prometheus_client import Counter, Histogram\n"
        "from prometheus_client.core import GaugeMetricFamily\n"
        'A = Counter("app_orders_total", "Orders.", ["status"])\n'
        'B = Histogram("app_latency_seconds", "Latency.")\n'
        'C = collections.Counter("not a metric")\n'
        'D = GaugeMetricFamily("app_depth", "", labels=["queue"])\n'
    )
    (package / "tests" / "test_metrics.py").write_text('X = Counter("app_test_only_total", "In a test.")\n')
    assert defined_families(tmp_path) == {
        "app_orders": "counter",
        "app_latency_seconds": "histogram",
        "app_depth": "gauge",
    }


def test_the_source_reading_finds_every_registered_metric() -> None:
    """The static reading misses nothing the imported modules register (a name built at run
    time, say, would be missed)."""
    registered = {name for name in registered_families() if name.startswith("oasis_")}
    assert registered
    missed = sorted(registered - set(defined_families()))
    assert not missed, f"metrics registered but not found in the source: {missed}"


def test_application_metrics_are_named_oasis() -> None:
    ours = defined_families()
    assert ours, "no metric definition found in the source"
    misnamed = sorted(name for name in ours if not name.startswith("oasis_"))
    assert not misnamed, f"metrics must be named oasis_*: {misnamed}"


def documented_metrics(text: str) -> set[str]:
    """The metric names of docs/metrics.md's tables: the first cell, in backquotes."""
    return set(re.findall(r"^\|\s*`(oasis_[a-z0-9_]+)`\s*\|", text, flags=re.MULTILINE))


def test_metrics_doc_documents_exactly_the_exported_metrics(families: dict[str, str]) -> None:
    text = METRICS_DOC.read_text()
    documented = documented_metrics(text)
    exported_names = {
        (f"{name}_total" if kind == "counter" else name)
        for name, kind in families.items()
        if name.startswith("oasis_")
    }
    missing = sorted(exported_names - documented)
    assert not missing, f"docs/metrics.md does not document: {missing}"
    stale = sorted(documented - exported_names)
    assert not stale, f"docs/metrics.md documents metrics the code no longer exports: {stale}"


def test_metrics_doc_names_every_alert() -> None:
    text = METRICS_DOC.read_text()
    missing = [alert for alert in alerts_in(RULE_FILES) if alert not in text]
    assert not missing, f"docs/metrics.md does not say which metrics these alerts use: {missing}"


# --- Prometheus: scrape config, rules, unit tests ---------------------------------------------


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool missing: apt-get install prometheus (Debian ships promtool in it)"
        if os.environ.get("OASIS_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_accepts_the_scrape_config_and_its_rules() -> None:
    result = run_promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(RULE_FILES)} rule files found" in result.stdout + result.stderr


def test_promtool_accepts_the_rules() -> None:
    assert RULE_FILES, "deploy/prometheus/rules has no rule files"
    result = run_promtool("check", "rules", *(str(path.relative_to(PROMETHEUS_DIR)) for path in RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "deploy/prometheus/tests has no promtool tests"
    result = run_promtool("test", "rules", *(str(path.relative_to(PROMETHEUS_DIR)) for path in RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_refuses_a_malformed_rule(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    text = (PROMETHEUS_DIR / "rules" / "alerts.yml").read_text()
    broken.write_text(text.replace("> 0.3", "> > 0.3", 1))
    assert broken.read_text() != text
    result = run_promtool("check", "rules", str(broken))
    assert result.returncode != 0
    assert "broken.yml" in result.stdout + result.stderr


def test_promtool_fails_a_unit_test_whose_alert_no_longer_fires(tmp_path: Path) -> None:
    shutil.copytree(PROMETHEUS_DIR / "rules", tmp_path / "rules")
    shutil.copytree(PROMETHEUS_DIR / "tests", tmp_path / "tests")
    alerts = tmp_path / "rules" / "alerts.yml"
    alerts.write_text(
        alerts.read_text().replace(
            "oasis_ingest_buffer_lag_seconds > 60", "oasis_ingest_buffer_lag_seconds > 600"
        )
    )
    result = run_promtool("test", "rules", "tests/market_data_test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "OasisBufferStale" in result.stdout + result.stderr


def test_rules_read_only_exported_metrics_and_have_severity_and_runbook(known_series: frozenset[str]) -> None:
    problems = [problem for path in RULE_FILES for problem in rule_problems(path, known_series)]
    assert not problems, "\n".join(problems)


def test_the_issue_alerts_exist() -> None:
    alerts = set(alerts_in(RULE_FILES))
    required = {
        "OasisIngestLatencyHigh",
        "OasisPostCloseLatencyHigh",
        "OasisOrderRejectionRatioHigh",
        "OasisBufferStale",
        "OasisReconnectStorm",
        "OasisGapsOpen",
        "OasisDriftOverTolerance",
        "OasisKillSwitchEngaged",
    }
    assert required <= alerts, f"missing alerts: {sorted(required - alerts)}"
    assert len(alerts) == len(alerts_in(RULE_FILES)), "an alert name repeats"


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not() -> None:
    cases = set(alert_test_cases(RULE_TESTS))
    for alert in alerts_in(RULE_FILES):
        assert (alert, True) in cases, f"no promtool test fires {alert}"
        assert (alert, False) in cases, f"no promtool test checks that {alert} stays quiet"


@pytest.mark.parametrize(
    ("edit", "complaint"),
    [
        (
            lambda t: t.replace(
                "oasis_ingest_buffer_lag_seconds > 60", "oasis_ingest_bufer_lag_seconds > 60"
            ),
            "reads oasis_ingest_bufer_lag_seconds",
        ),
        (lambda t: t.replace("severity: warning", "severity: page", 1), "needs severity"),
        (
            lambda t: t.replace("alerts.md#oasisbufferstale", "alerts.md#nosuchsection"),
            "has no section #nosuchsection",
        ),
        (
            lambda t: t.replace("docs/runbooks/alerts.md#oasisgapsopen", "https://wiki.example/gaps"),
            "needs runbook_url",
        ),
        (lambda t: t.replace("groups:", "groups: [", 1), "not YAML"),
        (lambda t: "groups: []\n", "no groups"),
    ],
)
def test_rule_validator_rejects_broken_copies(
    tmp_path: Path, known_series: frozenset[str], edit: Any, complaint: str
) -> None:
    original = (PROMETHEUS_DIR / "rules" / "alerts.yml").read_text()
    broken = tmp_path / "alerts.yml"
    broken.write_text(edit(original))
    assert broken.read_text() != original
    problems = rule_problems(broken, known_series)
    assert any(complaint in problem for problem in problems), problems


def scrape_targets() -> dict[str, list[str]]:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    return {
        job["job_name"]: [target for static in job.get("static_configs", []) for target in static["targets"]]
        for job in config["scrape_configs"]
    }


def command_default(command_module: str, option: str) -> Any:
    from django.core.management.base import BaseCommand

    command: BaseCommand = importlib.import_module(command_module).Command()
    parser = command.create_parser("manage.py", command_module.rsplit(".", 1)[-1])
    return parser.get_default(option)


def test_one_scrape_config_covers_every_process_on_its_port(tmp_path: Path) -> None:
    targets = scrape_targets()
    assert set(SCRAPED_JOBS) <= set(targets), f"jobs: {sorted(targets)}"
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    services = compose["services"]
    # web: the port compose serves on (OASIS_PORT), under the service's name.
    assert targets["web"] == [f"web:{compose['x-app-environment']['OASIS_PORT']}"]
    # ingest and trade: the ports their commands listen on by default.
    assert targets["ingest"] == [
        f"ingest:{command_default('marketdata.management.commands.ingest', 'metrics_port')}"
    ]
    assert targets["trade"] == [
        f"trade:{command_default('trading.management.commands.trade', 'metrics_port')}"
    ]
    # worker: OASIS_WORKER_METRICS_PORT + i for each of compose's --concurrency pool processes.
    command = services["worker"]["command"]
    concurrency = int(command[command.index("--concurrency") + 1])
    base = read_environment({"OASIS_ENV": "dev"}, base_dir=tmp_path).worker_metrics_port
    assert targets["worker"] == [f"worker:{base + i}" for i in range(concurrency)]
    assert read_environment({"OASIS_ENV": "test"}, base_dir=tmp_path).worker_metrics_port == 0, "off in tests"


# --- Grafana -------------------------------------------------------------------------------------


def test_grafana_provisions_the_prometheus_data_source_and_the_dashboards() -> None:
    assert DATASOURCES, "deploy/grafana/provisioning/datasources is empty"
    sources = [source for path in DATASOURCES for source in yaml.safe_load(path.read_text())["datasources"]]
    prometheus = [source for source in sources if source["type"] == "prometheus"]
    assert len(prometheus) == 1, sources
    assert prometheus[0]["uid"], "dashboards refer to the data source by uid"
    assert prometheus[0]["url"] == "http://prometheus:9090", "the compose service prometheus, on its port"
    assert DASHBOARD_PROVIDERS, "deploy/grafana/provisioning/dashboards is empty"
    providers = [p for path in DASHBOARD_PROVIDERS for p in yaml.safe_load(path.read_text())["providers"]]
    mounts = {
        str(volume).split(":")[1]: str(volume).split(":")[0]
        for volume in yaml.safe_load(COMPOSE_FILE.read_text())["services"]["grafana"]["volumes"]
    }
    for provider in providers:
        path = provider["options"]["path"]
        assert path in mounts, f"provider {provider['name']} reads {path}, which compose does not mount"
        assert (ROOT / mounts[path]).resolve() == (GRAFANA_DIR / "dashboards").resolve()


def test_dashboards_are_valid_and_read_only_exported_metrics(known_series: frozenset[str]) -> None:
    assert {path.stem for path in DASHBOARDS} >= {"service-levels", "market-data", "trading", "operations"}
    uids = provisioned_datasource_uids(DATASOURCES)
    problems = [problem for path in DASHBOARDS for problem in dashboard_problems(path, known_series, uids)]
    assert not problems, "\n".join(problems)
    dashboard_uids = [json.loads(path.read_text())["uid"] for path in DASHBOARDS]
    assert len(dashboard_uids) == len(set(dashboard_uids)), f"dashboard uids repeat: {dashboard_uids}"


def test_dashboards_show_every_alerting_metric(known_series: frozenset[str]) -> None:
    """What an alert watches, a dashboard shows: the on-call sees the figure the alert fired on."""
    shown = {
        metric
        for path in DASHBOARDS
        for panel in json.loads(path.read_text())["panels"]
        for target in panel.get("targets", [])
        for metric in metric_names_in(target["expr"])
    }
    watched = {
        metric
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
        for metric in metric_names_in(rule["expr"])
    }
    missing = sorted(watched - shown - {"up"})
    assert not missing, f"alerts watch series no dashboard shows: {missing}"


def _edit_board(board: dict[str, Any], how: str) -> str:
    if how == "no uid":
        del board["uid"]
    elif how == "no panels":
        board["panels"] = []
    elif how == "unknown metric":
        board["panels"][0]["targets"][0]["expr"] = "rate(oasis_no_such_metric_total[5m])"
    elif how == "no expr":
        board["panels"][0]["targets"][0]["expr"] = ""
    elif how == "other data source":
        board["panels"][0]["targets"][0]["datasource"] = {"type": "prometheus", "uid": "elsewhere"}
    elif how == "repeated panel id":
        board["panels"][1]["id"] = board["panels"][0]["id"]
    return json.dumps(board)


@pytest.mark.parametrize(
    ("how", "complaint"),
    [
        ("no uid", "no uid"),
        ("no panels", "no panels"),
        ("unknown metric", "reads oasis_no_such_metric_total"),
        ("no expr", "without expr"),
        ("other data source", "not a provisioned one"),
        ("repeated panel id", "panel ids repeat"),
        ("not json", "not JSON"),
    ],
)
def test_dashboard_validator_rejects_broken_copies(
    tmp_path: Path, known_series: frozenset[str], how: str, complaint: str
) -> None:
    source = GRAFANA_DIR / "dashboards" / "service-levels.json"
    broken = tmp_path / "broken.json"
    if how == "not json":
        broken.write_text(source.read_text()[:-20])
    else:
        broken.write_text(_edit_board(json.loads(source.read_text()), how))
    problems = dashboard_problems(broken, known_series, provisioned_datasource_uids(DATASOURCES))
    assert any(complaint in problem for problem in problems), problems
