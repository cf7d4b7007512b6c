"""The gateway's metrics: HTTP requests by route and status, its waits on the chain, served on
the metrics address and not on the public HTTP port."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from world import WebWorld, started_world

from imageserver.embedded_redis import free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Metered:
    world: WebWorld
    address: str
    """The gateway's metrics address."""


@pytest.fixture(scope="module")
def metered(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Metered]:
    """`web_world` with the gateway's metrics on a free port and the other roles' off."""
    address = f"127.0.0.1:{free_port('127.0.0.1')}"
    config = f'[metrics]\nbroker = ""\nmanager = ""\nweb = "{address}"\n'
    with started_world(
        sample_dir, tmp_path_factory.mktemp("redis"), esafs=(62101, 62102), extra_config=config
    ) as world:
        yield Metered(world, address)


def scrape(metered: Metered) -> Samples:
    with urllib.request.urlopen(f"http://{metered.address}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_routes_statuses_and_chain_waits_are_counted(metered: Metered) -> None:
    world = metered.world
    before = scrape(metered)
    assert world.api("image", path=str(world.cbf), size=256).status == 200
    assert world.api("image", path=str(world.cbf.with_name("gone.cbf"))).status == 404
    assert world.api("whoami", token="not-a-session").status == 401
    assert world.get("/api/v1/whoami").status == 401  # no token: never reaches the chain
    assert world.get("/no/such/page").status == 404
    after = scrape(metered)

    def moved(name: str, **labels: str) -> float:
        key = frozenset(labels.items())
        return after.get((name, key), 0.0) - before.get((name, key), 0.0)

    http = "imageserver_http_requests_total"
    assert moved(http, route="/api/v1/image", status="200") == 1
    assert moved(http, route="/api/v1/image", status="404") == 1
    assert moved(http, route="/api/v1/whoami", status="401") == 2
    assert moved(http, route="unmatched", status="404") == 1
    assert moved("imageserver_http_request_seconds_count", route="/api/v1/image") == 2

    chain = {"component": "web", "type": "jpeg"}
    assert moved("imageserver_requests_total", **chain, outcome="ok") == 1
    assert moved("imageserver_requests_total", **chain, outcome="file_missing") == 1
    whoami = {"component": "web", "type": "whoami", "outcome": "session_invalid"}
    assert moved("imageserver_requests_total", **whoami) == 1
    assert moved("imageserver_request_seconds_count", **chain) == 2


def test_metrics_are_not_on_the_public_port(metered: Metered) -> None:
    assert metered.world.get("/metrics").status == 404
