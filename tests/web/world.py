"""The gateway on the whole chain: redis-server, proxy, manager and `imageserver web`
processes, and (as root, as in CI) a real user and ESAF group owning the data."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from chain import IS_ROOT, Chain, ground, login_name, running_chain

from imageserver.sampledata.dataset import EIGER16M_STEM, PILATUS_CBF
from imageserver.sampledata.eiger import write_eiger_series
from imageserver.sampledata.pattern import centred_geometry

ESAF = 62001
OTHER_ESAF = 62002
VIEWER_ESAFS = (62011, 62012)
"""The viewer's world has its own groups: a module's groups are replaced when it starts."""
SERIES_STEM = "series_001"
SERIES_FRAMES = 6
RUN_TEMPLATE = "run_#####.cbf"
RUN_FRAMES = 3


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
    gid: int = -1
    """The group owning the data (the ESAF's, as root)."""
    series: Path | None = None
    """With viewer data: an Eiger master of `SERIES_FRAMES` frames in ``data``."""
    run: Path | None = None
    """With viewer data: the template of a run of `RUN_FRAMES` CBF files in ``data``."""

    def place(self, source: Path, target: Path) -> Path:
        """Copy ``source`` to ``target`` (directories made) as the data's owner, mode 0640."""
        return place_data(source, target, self.gid)

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


def place_data(source: Path, target: Path, gid: int) -> Path:
    """``target`` as a detector writes it: a copy of ``source`` modified now, group ``gid``,
    0640 (its new directories 0750), owned by root as root, else by the test user; it
    appears whole (renamed from a hidden name)."""
    owner = 0 if IS_ROOT else os.getuid()
    missing = [d for d in [target.parent, *target.parent.parents] if not d.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    for directory in missing:
        os.chown(directory, owner, gid)
        directory.chmod(0o750)
    temporary = target.with_name(f".{target.name}.part")
    shutil.copyfile(source, temporary)
    os.chown(temporary, owner, gid)
    temporary.chmod(0o640)
    temporary.rename(target)
    return target


@contextlib.contextmanager
def started_world(
    sample_dir: Path,
    redis_dir: Path,
    *,
    esafs: tuple[int, int] = (ESAF, OTHER_ESAF),
    viewer_data: bool = False,
    extra_config: str = "",
) -> Iterator[WebWorld]:
    """The chain with the gateway, a user, ESAF groups and the experiment's data; with
    ``viewer_data`` also an Eiger series of several frames and a run of CBF files;
    ``extra_config`` is appended to the chain's configuration (e.g. a ``[metrics]`` table)."""
    with ground(redis_dir) as base:
        if IS_ROOT:
            user = f"isweb{os.urandom(3).hex()}"
            base.accounts.add_user(user)
            gid = base.accounts.add_esaf_group(esafs[0])
            base.accounts.add_esaf_group(esafs[1])
            esaf = esafs[0]
        else:
            user, gid, esaf = login_name(), os.getgid(), 0
        data = base.data / "experiment"
        data.mkdir()
        for source in [*sample_dir.glob(f"{EIGER16M_STEM}_*.h5"), sample_dir / PILATUS_CBF]:
            shutil.copy2(source, data / source.name)
        series = run = None
        if viewer_data:
            series = write_eiger_series(
                data,
                SERIES_STEM,
                geometry=centred_geometry(2068, 1062, 75e-6),
                n_frames=SERIES_FRAMES,
                seed=7,
            )
            run = data / RUN_TEMPLATE
            for n in range(1, RUN_FRAMES + 1):  # frames 1 and 2 differ
                source = sample_dir / f"pilatus6m_{2 - n % 2:04d}.cbf"
                shutil.copy2(source, data / f"run_{n:05d}.cbf")
        for path in [data, *data.iterdir()]:
            os.chown(path, os.getuid() if not IS_ROOT else 0, gid)
            path.chmod(0o750 if path.is_dir() else 0o640)
        with running_chain(
            base.redis.url, deadline_s=20.0, web_port=0, workers_extra=extra_config
        ) as chain:
            yield WebWorld(
                chain=chain,
                user=user,
                esaf=esaf,
                data=data,
                master=data / f"{EIGER16M_STEM}_master.h5",
                cbf=data / PILATUS_CBF,
                token=chain.session(user, [esaf] if esaf else []),
                other_token=chain.session(user, [esafs[1]]),
                gid=gid,
                series=series,
                run=run,
            )


@pytest.fixture(scope="module")
def web_world(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebWorld]:
    with started_world(sample_dir, tmp_path_factory.mktemp("redis")) as world:
        yield world


@pytest.fixture(scope="module")
def viewer_world(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebWorld]:
    """`web_world` with more to browse: a 6-frame Eiger series and a run of 3 CBF files."""
    with started_world(
        sample_dir, tmp_path_factory.mktemp("redis"), esafs=VIEWER_ESAFS, viewer_data=True
    ) as world:
        yield world
