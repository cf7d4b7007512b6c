"""The manager's metrics on the real chain: requests in, its HTTP exposition scraped.

Good and bad requests go through the proxy to the manager and a real worker; the scrape must
show them counted by type and outcome, the worker's stage times observed, and where the
cache answered from.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from chain import IS_ROOT, Chain, ground, login_name, place_file, running_chain
from prometheus_client.parser import text_string_to_metric_families

from imageserver.embedded_redis import free_port
from imageserver.sampledata.dataset import PILATUS_CBF

ESAF = 61901
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_config(manager: str) -> str:
    """Every role's metrics off but the manager's, on a free port of its own."""
    return f'[metrics]\nbroker = ""\nmanager = "{manager}"\nweb = ""\n'


@dataclass
class MetricsWorld:
    chain: Chain
    address: str
    user: str
    esaf: int
    cbf: Path

    def scrape(self) -> Samples:
        with urllib.request.urlopen(f"http://{self.address}/metrics", timeout=10) as response:
            text = response.read().decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def world(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsWorld]:
    with ground(tmp_path_factory.mktemp("redis")) as base:
        if IS_ROOT:
            user = f"ismet{os.urandom(3).hex()}"
            base.accounts.add_user(user)
            gid, esaf = base.accounts.add_esaf_group(ESAF), ESAF
        else:
            user, gid, esaf = login_name(), os.getgid(), 0
        cbf = place_file(sample_dir / PILATUS_CBF, base.data / "m" / PILATUS_CBF, gid=gid)
        os.chown(cbf.parent, 0 if IS_ROOT else os.getuid(), gid)
        cbf.parent.chmod(0o750)
        address = f"127.0.0.1:{free_port('127.0.0.1')}"
        with running_chain(base.redis.url, workers_extra=metrics_config(address)) as chain:
            yield MetricsWorld(chain, address, user, esaf, cbf)


def test_requests_stages_and_cache_sources_are_counted(world: MetricsWorld) -> None:
    before = world.scrape()
    pid = world.chain.session(world.user, [world.esaf] if world.esaf else [])
    view = {"type": "jpeg", "pid": pid, "esaf": world.esaf, "fn": str(world.cbf), "xsize": 300}
    assert world.chain.request(view).error is None  # decoded from the file
    assert world.chain.request({**view, "contrast": 5}).error is None  # the view, new contrast
    assert world.chain.request({**view, "contrast": 5}).error is None  # the very image
    missing = world.chain.request({**view, "fn": str(world.cbf.with_name("gone.cbf"))})
    assert "not found" in missing.job["error"]  # the legacy grey image, the reason in its echo
    assert world.chain.request({**view, "pid": "not-a-session"}).error is not None
    assert world.chain.request({"pid": pid, "fn": str(world.cbf)}).error is not None  # no type
    after = world.scrape()

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    requests = "imageserver_requests_total"
    jpeg = {"component": "manager", "type": "jpeg"}
    assert moved(requests, **jpeg, outcome="ok") == 3
    assert moved(requests, **jpeg, outcome="file_missing") == 1
    assert moved(requests, **jpeg, outcome="session_invalid") == 1
    assert moved(requests, component="manager", type="unparsed", outcome="bad_request") == 1
    assert moved("imageserver_request_seconds_count", **jpeg) == 5

    stages = {s: moved("imageserver_stage_seconds_count", stage=s) for s in ("decode", "reduce")}
    assert stages == {"decode": 2, "reduce": 1}  # the missing file's failed open counts too
    assert moved("imageserver_stage_seconds_count", stage="contrast") == 2
    assert moved("imageserver_stage_seconds_count", stage="encode") == 2
    assert moved("imageserver_stage_seconds_sum", stage="decode") > 0

    answers = "imageserver_cache_answers_total"
    assert moved(answers, source="file", tier="computed") == 1
    assert moved(answers, source="memory", tier="memory") == 1
    assert moved(answers, source="image", tier="memory") == 1

    assert sample(after, "imageserver_workers") >= 1
    assert sample(after, "imageserver_pending_requests") == 0
    assert sample(after, "imageserver_workers_started_total") >= 1
    assert sample(after, "process_resident_memory_bytes") > 0
