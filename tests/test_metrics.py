"""The metrics functions: bounded labels, the right series moved, exposition over real HTTP."""

from __future__ import annotations

import json
import logging
import re
import socket
import urllib.request
from pathlib import Path

import pytest

from imageserver import metrics
from imageserver.config import MetricsSettings, Settings, load_settings
from imageserver.embedded_redis import free_port
from imageserver.errors import ConfigError
from imageserver.service.auth import StoreHealth
from imageserver.stage_times import StageTimes

DASHBOARD = Path(__file__).resolve().parents[1] / "etc" / "grafana-imageserver.json"


def value(role: str, name: str, **labels: str) -> float:
    found = metrics.REGISTRIES[role].get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_labels_come_only_from_known_sets() -> None:
    assert metrics.request_type("jpeg") == "jpeg"
    assert metrics.request_type("x" * 300) == "other"
    assert metrics.request_type("") == metrics.request_type(None) == "unparsed"
    assert metrics.outcome(None) == "ok"
    assert {"busy", "timeout", "access_denied", "file_missing"} <= metrics.OUTCOMES
    assert metrics.outcome("access_denied") == "access_denied"
    assert metrics.outcome("made-up code from a worker") == "other"


def test_a_manager_request_is_counted_with_its_latency() -> None:
    ok = {"component": "manager", "type": "jpeg", "outcome": "ok"}
    denied = {**ok, "outcome": "session_invalid"}
    before = value("manager", "imageserver_requests_total", **ok)
    before_denied = value("manager", "imageserver_requests_total", **denied)
    latency = {"component": "manager", "type": "jpeg"}
    seconds_before = value("manager", "imageserver_request_seconds_count", **latency)
    metrics.manager_request("jpeg", None, 0.02)
    metrics.manager_request("jpeg", "session_invalid", 0.001)
    assert value("manager", "imageserver_requests_total", **ok) == before + 1
    assert value("manager", "imageserver_requests_total", **denied) == before_denied + 1
    assert value("manager", "imageserver_request_seconds_count", **latency) == seconds_before + 2
    bucket = {**latency, "le": "0.025"}
    assert value("manager", "imageserver_request_seconds_bucket", **bucket) >= 2
    # roles are apart: the gateway's registry saw nothing of it
    assert value("web", "imageserver_requests_total", **{**ok, "component": "manager"}) == 0


def test_stage_times_and_cache_tiers_are_observed() -> None:
    def count(stage: str) -> float:
        return value("manager", "imageserver_stage_seconds_count", stage=stage)

    def answers(source: str, tier: str) -> float:
        return value("manager", "imageserver_cache_answers_total", source=source, tier=tier)

    decode, encode = count("decode"), count("encode")
    redis_hits, computed = answers("shared", "redis"), answers("file", "computed")
    metrics.observe_stage_times(StageTimes({"decode": 0.004, "encode": 0.001}, "file"))
    metrics.observe_stage_times(StageTimes({"encode": 0.002}, "shared"))
    metrics.observe_stage_times(StageTimes({"sneaky": 1.0}, "nowhere"))
    assert (count("decode"), count("encode")) == (decode + 1, encode + 2)
    assert count("sneaky") == 0
    assert answers("file", "computed") == computed + 1
    assert answers("shared", "redis") == redis_hits + 1
    small = value("manager", "imageserver_stage_seconds_bucket", stage="encode", le="0.0025")
    assert small >= 2  # the stage buckets resolve milliseconds


def test_manager_gauges_and_redis_errors() -> None:
    metrics.manager_state(workers=3, pending=7, index_waiting=1)
    assert value("manager", "imageserver_workers") == 3
    assert value("manager", "imageserver_pending_requests") == 7
    assert value("manager", "imageserver_index_jobs_waiting") == 1
    before = value("manager", "imageserver_redis_errors_total", store="session")
    metrics.redis_error("session")
    assert value("manager", "imageserver_redis_errors_total", store="session") == before + 1


def test_each_failed_session_store_command_is_a_redis_error() -> None:
    before = value("manager", "imageserver_redis_errors_total", store="session")
    health = StoreHealth()
    health.down("connection refused")
    health.down("connection refused")  # logged once, counted twice
    assert value("manager", "imageserver_redis_errors_total", store="session") == before + 2


def test_gateway_counts_routes_statuses_and_chain_waits() -> None:
    route = {"route": "/api/v1/image", "status": "503"}
    before = value("web", "imageserver_http_requests_total", **route)
    metrics.gateway_http_request("/api/v1/image", 503, 0.2)
    assert value("web", "imageserver_http_requests_total", **route) == before + 1
    chain = {"component": "web", "type": "meta", "outcome": "busy"}
    before = value("web", "imageserver_requests_total", **chain)
    metrics.gateway_chain_request("meta", "busy", 0.01)
    assert value("web", "imageserver_requests_total", **chain) == before + 1


def test_broker_functions_set_their_series() -> None:
    metrics.broker_queue_depth(5)
    metrics.broker_nodes(healthy=2, total=3)
    metrics.broker_node_in_flight("node-a", 4)
    resent = value("broker", "imageserver_broker_resent_total")
    lost = value("broker", "imageserver_broker_nodes_lost_total")
    metrics.broker_resent()
    metrics.broker_node_lost()
    metrics.broker_request("jpeg", "timeout", 3.0)
    assert value("broker", "imageserver_broker_queue_depth") == 5
    assert value("broker", "imageserver_broker_nodes", state="healthy") == 2
    assert value("broker", "imageserver_broker_nodes", state="total") == 3
    assert value("broker", "imageserver_broker_node_in_flight", node="node-a") == 4
    assert value("broker", "imageserver_broker_resent_total") == resent + 1
    assert value("broker", "imageserver_broker_nodes_lost_total") == lost + 1
    timeouts = {"component": "broker", "type": "jpeg", "outcome": "timeout"}
    assert value("broker", "imageserver_requests_total", **timeouts) >= 1
    metrics.broker_node_removed("node-a")
    metrics.broker_node_removed("node-a")  # twice is harmless
    found = metrics.REGISTRIES["broker"].get_sample_value(
        "imageserver_broker_node_in_flight", {"node": "node-a"}
    )
    assert found is None


def test_the_exposition_serves_one_role_over_http() -> None:
    address = f"127.0.0.1:{free_port('127.0.0.1')}"
    metrics.broker_queue_depth(9)
    assert metrics.start_metrics_server(address, "broker") is True
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert "imageserver_broker_queue_depth 9.0" in text
    assert "imageserver_stage_seconds" not in text  # the manager's, not the broker's
    assert "process_cpu_seconds_total" in text


def test_a_port_in_use_warns_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with caplog.at_level(logging.WARNING, logger="imageserver.metrics"):
            assert metrics.start_metrics_server(address, "manager") is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and address in warnings[0].getMessage()


def test_no_address_serves_nothing_and_an_unknown_role_is_a_bug() -> None:
    assert metrics.start_metrics_server("", "web") is False
    with pytest.raises(ValueError, match="unknown metrics role"):
        metrics.start_metrics_server("127.0.0.1:1", "zygote")


def test_metrics_addresses_are_checked_when_loaded(tmp_path: Path) -> None:
    assert Settings().metrics == MetricsSettings(
        "127.0.0.1:9310", "127.0.0.1:9311", "127.0.0.1:9312"
    )
    config = tmp_path / "imageserver.toml"
    config.write_text('[metrics]\nmanager = "[::1]:9400"\nweb = ""\n')
    loaded = load_settings(config).metrics
    assert (loaded.manager, loaded.web, loaded.broker) == ("[::1]:9400", "", "127.0.0.1:9310")
    for bad in ("9311", "localhost:", "host:http", "host:70000", "host:0"):
        config.write_text(f'[metrics]\nbroker = "{bad}"\n')
        with pytest.raises(ConfigError, match=r"\[metrics\] broker must be HOST:PORT"):
            load_settings(config)


def test_the_grafana_dashboard_draws_only_metrics_that_exist() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    defined = {
        family.name for registry in metrics.REGISTRIES.values() for family in registry.collect()
    }
    drawn = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            for name in re.findall(r"imageserver_\w+", target["expr"]):
                drawn.add(re.sub(r"_(total|bucket|count|sum)$", "", name))
    assert drawn <= defined, drawn - defined
    assert {"imageserver_stage_seconds", "imageserver_broker_node_in_flight"} <= drawn
