"""The soak (benchmarks/soak.py) at a small size: two nodes, one killed, Redis restarted, and
every reply there and right; and its judge, which must catch a wrong reply to count it."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from soak_mix import Session, Target, invalid_case, judge, valid_case  # noqa: E402

SESSION = Session("p" * 32, 7, "alice", ({"type": "jpeg", "fn": "/d/a.cbf"},), "/e/b", "/d/x")
TARGET = Target([SESSION], foreign_esaf=8)


def test_a_small_soak_loses_no_reply_and_gets_none_wrong(tmp_path: Path) -> None:
    summary_path = tmp_path / "soak.json"
    command = [sys.executable, str(BENCHMARKS / "soak.py"), "--requests", "400", "--rate", "25"]
    command += ["--no-warm-up", "--json", str(summary_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=150, check=False)
    output = done.stdout + done.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["requests"] == 400, output
    assert (summary["lost"], summary["wrong"]) == (0, 0), output
    assert done.returncode == 0, output
    assert summary["untested"] == [], "a disruption met no request"
    assert "in flight" in summary["disruptions"][0]  # the broker saw the node go
    assert {"bad_request", "session_invalid", "esaf_not_allowed"} <= set(summary["refusals"])
    assert summary["invalid"] >= 0.2 * summary["requests"]


def test_the_judge_catches_the_reply_of_another_request() -> None:
    case = valid_case("soak-1", SESSION, SESSION.views[0])
    echo = json.dumps({"tag": "soak-2"}).encode()
    jpeg = b"\xff\xd8...\xff\xd9"
    assert judge(case, [b"", echo, b"{}", jpeg]).outcome == "wrong"
    own = json.dumps({"tag": "soak-1"}).encode()
    assert judge(case, [b"", own, b"{}", jpeg]).outcome == "ok"
    assert judge(case, [b"", own, b"{}"]).outcome == "wrong"  # a meta-shaped answer


def test_the_judge_counts_disruptions_apart_from_wrong_refusals() -> None:
    valid = valid_case("soak-1", SESSION, SESSION.views[0])
    busy = [b"all nodes are busy", json.dumps({"code": "busy"}).encode()]
    assert (judge(valid, busy).outcome, judge(valid, busy).code) == ("error", "busy")
    denied = [b"no", json.dumps({"code": "permission_denied"}).encode()]
    assert judge(valid, denied).outcome == "wrong"
    foreign = invalid_case("foreign_file", "soak-2", SESSION, TARGET, random.Random(1))
    assert judge(foreign, denied).outcome == "ok"
    assert judge(foreign, [b"", json.dumps({"tag": "soak-2"}).encode(), b"{}", b""]).outcome == (
        "wrong"
    )
    no_delimiter = invalid_case("no_delimiter", "soak-3", SESSION, TARGET, random.Random(1))
    assert judge(no_delimiter, [b"request has no empty delimiter frame"]).outcome == "ok"
    assert judge(no_delimiter, [b"something else"]).outcome == "wrong"
