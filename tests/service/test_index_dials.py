"""The acceptance of `index`: l-cysteine frames 1–15 through the whole chain, as a real user,
with the built-in DIALS pipeline, index to its orthorhombic cell (P 21 21 21 among the
candidates: with 15 frames DIALS cannot tell the screw axes apart)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from chain import IS_ROOT, ground, login_name, running_chain

CELL = {"a": 5.42, "b": 8.13, "c": 12.02}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dials.index") is None, reason="DIALS is not installed"),
]


def test_l_cysteine_indexes_through_the_chain(
    shared_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    first = shared_data / "l-cysteine" / "l-cyst_01_00001.cbf"
    with ground(tmp_path_factory.mktemp("redis")) as base:
        if IS_ROOT:
            user = f"isdials{os.urandom(3).hex()}"
            base.accounts.add_user(user)
        else:
            user = login_name()
        scratch = base.data / "scratch"
        scratch.mkdir()
        scratch.chmod(0o1777)
        index = f'[index]\nscratch_root = "{scratch}"\n'
        with running_chain(
            base.redis.url, deadline_s=20.0, workers_extra=f"long_request_deadline_s = 600\n{index}"
        ) as chain:
            token = chain.session(user, [])
            reply = chain.request(
                {
                    "type": "index",
                    "pid": token,
                    "fn1": str(first),
                    "frame1": 1,
                    "frame2": 15,
                    "tag": "l-cysteine",
                },
                timeout_s=600,
            )
            assert reply.error is None, reply.frames
            result = json.loads(reply.frames[2])
            assert "error" not in result, result
            assert result["lattice"] == "oP"
            assert "P 21 21 21" in result["space_group_candidates"]
            for axis, expected in CELL.items():
                assert result["unit_cell"][axis] == pytest.approx(expected, rel=0.01)
            assert os.listdir(scratch) == []  # the job's directory is gone
            assert "index l-cysteine: done" in chain.log_text()
