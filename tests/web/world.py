"""The gateway on the whole chain: redis-server, proxy, manager and `imageserver web`
processes, and (as root, as in CI) a real user and ESAF group owning the data."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from chain import IS_ROOT, Chain, ground, login_name, running_chain

from imageserver.sampledata.dataset import EIGER16M_STEM, PILATUS_CBF

ESAF = 62001
OTHER_ESAF = 62002


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> str:
        return str(self.json()["error"]["code"])


@dataclass
class WebWorld:
    chain: Chain
    user: str
    esaf: int
    data: Path
    master: Path
    cbf: Path
    token: str
    """A session allowed to see ``esaf``."""
    other_token: str
    """A session of the same user allowed only another ESAF."""

    @property
    def url(self) -> str:
        assert self.chain.web_url is not None
        return self.chain.web_url

    def get(
        self,
        path: str,
        params: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        cookie: str | None = None,
        headers: dict[str, str] | None = None,
        method: str = "GET",
    ) -> HttpReply:
        """One request, redirects not followed; ``token`` goes as a Bearer header."""
        parts = urlsplit(self.url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        if cookie is not None:
            sent["Cookie"] = cookie
        target = path + ("?" + urlencode(params) if params else "")
        try:
            connection.request(method, target, headers=sent)
            response = connection.getresponse()
            body = response.read()
            return HttpReply(
                response.status, {k.lower(): v for k, v in response.getheaders()}, body
            )
        finally:
            connection.close()

    def api(self, endpoint: str, token: str | None = None, **params: Any) -> HttpReply:
        """An API call as the world's user, with its ESAF unless given."""
        params.setdefault("esaf", self.esaf)
        return self.get(f"/api/v1/{endpoint}", params, token=token or self.token)


@pytest.fixture(scope="module")
def web_world(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebWorld]:
    with ground(tmp_path_factory.mktemp("redis")) as base:
        if IS_ROOT:
            user = f"isweb{os.urandom(3).hex()}"
            base.accounts.add_user(user)
            gid = base.accounts.add_esaf_group(ESAF)
            base.accounts.add_esaf_group(OTHER_ESAF)
            esaf = ESAF
        else:
            user, gid, esaf = login_name(), os.getgid(), 0
        data = base.data / "experiment"
        data.mkdir()
        for source in [*sample_dir.glob(f"{EIGER16M_STEM}_*.h5"), sample_dir / PILATUS_CBF]:
            shutil.copy2(source, data / source.name)
        for path in [data, *data.iterdir()]:
            os.chown(path, os.getuid() if not IS_ROOT else 0, gid)
            path.chmod(0o750 if path.is_dir() else 0o640)
        with running_chain(base.redis.url, deadline_s=20.0, web_port=0) as chain:
            world = WebWorld(
                chain=chain,
                user=user,
                esaf=esaf,
                data=data,
                master=data / f"{EIGER16M_STEM}_master.h5",
                cbf=data / PILATUS_CBF,
                token=chain.session(user, [esaf] if esaf else []),
                other_token=chain.session(user, [OTHER_ESAF]),
            )
            yield world


def wait_until(predicate: Any, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")
