"""Tracking outages without a server: back-off, the buffer, its file, the start-up check (fast)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from segexp.cli import upload as upload_cli
from segexp.core.errors import TrackingUnavailable
from segexp.tracking import outbox as ob
from segexp.tracking.outbox import Outbox
from segexp.tracking.store import (
    OutagePolicy,
    call_with_backoff,
    check_server,
    http_settings,
)

from .servers import free_port


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_backoff_doubles_and_succeeds() -> None:
    clock, calls = FakeClock(), []

    def flaky() -> str:
        calls.append(clock.now)
        if len(calls) < 4:
            raise ConnectionError("down")
        return "sent"

    assert call_with_backoff(flaky, max_wait_s=60, first_delay_s=0.5, sleep=clock.sleep, clock=clock) == "sent"
    assert len(calls) == 4
    for wait, base in zip(clock.sleeps, [0.5, 1.0, 2.0]):  # exponential, with up to 25 % jitter
        assert base <= wait <= base * 1.25


def test_backoff_total_time_is_bounded() -> None:
    clock = FakeClock()

    def down() -> None:
        clock.now += 0.1  # each attempt takes a little time
        raise ConnectionError("server down")

    with pytest.raises(ConnectionError):
        call_with_backoff(down, max_wait_s=5, first_delay_s=0.5, sleep=clock.sleep, clock=clock)
    assert clock.now <= 5 + 0.1
    assert len(clock.sleeps) >= 2


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Replace the MLflow calls: ``state["down"]`` switches the server off; sent entries are recorded."""
    state: dict = {"down": False, "sent": [], "real_send": ob.send_entry}

    def send(uri: str, run_id: str, entry: dict, base: Path | None = None) -> None:
        if state["down"]:
            raise ConnectionError(f"{uri} refused the connection")
        state["sent"].append(dict(entry))

    monkeypatch.setattr(ob, "send_entry", send)
    monkeypatch.setattr(ob, "server_reachable", lambda uri, timeout_s: not state["down"])
    return state


POLICY = OutagePolicy(max_wait_s=0.05, first_delay_s=0.01)


def metrics(step: int) -> dict:
    return {"kind": "metrics", "metrics": {"val/loss": 1.0 / step}, "step": step, "timestamp": 1000 + step}


def test_outbox_buffers_while_down_and_flushes_in_order(tmp_path: Path, fake_server: dict) -> None:
    box = Outbox(tmp_path, "r1", "http://127.0.0.1:1", POLICY)
    assert box.submit(metrics(1))
    fake_server["down"] = True
    assert not box.submit(metrics(2))
    (tmp_path / "history.csv").write_text("epoch,loss\n0,1.0\n")
    assert not box.submit({"kind": "artifact", "path": str(tmp_path / "history.csv"), "artifact_path": None})
    assert not box.submit(
        {"kind": "image", "key": "epoch_images/a", "step": 2, "timestamp": 5, "array": np.full((4, 4, 3), 7, np.uint8)}
    )
    assert not box.submit(metrics(3))
    (tmp_path / "history.csv").write_text("changed later\n")  # the buffered copy keeps what was logged

    lines = [json.loads(line) for line in (tmp_path / ob.OUTBOX_FILE).read_text().splitlines()]
    assert [e["kind"] for e in lines] == ["metrics", "artifact", "image", "metrics"]
    copied = tmp_path / lines[1]["path"]
    assert copied.read_text() == "epoch,loss\n0,1.0\n" and str(copied).startswith(str(tmp_path / ob.OUTBOX_DIR))
    assert (tmp_path / lines[2]["path"]).read_bytes()[:4] == b"\x89PNG"
    assert [e["step"] for e in fake_server["sent"]] == [1]

    fake_server["down"] = False
    assert box.submit(metrics(4))  # the next call sends the buffer first, in order
    steps = [e.get("step") for e in fake_server["sent"] if e["kind"] == "metrics"]
    assert steps == [1, 2, 3, 4]
    assert [e["kind"] for e in fake_server["sent"]] == ["metrics", "metrics", "artifact", "image", "metrics", "metrics"]
    assert not (tmp_path / ob.OUTBOX_FILE).exists() and not (tmp_path / ob.OUTBOX_DIR).exists()
    assert box.pending == []


def test_outbox_survives_a_restart_of_the_process(tmp_path: Path, fake_server: dict) -> None:
    fake_server["down"] = True
    first = Outbox(tmp_path, "r1", "http://127.0.0.1:1", POLICY)
    for step in (1, 2):
        first.submit(metrics(step))
    first.submit({"kind": "terminated", "status": "FINISHED", "end_time": 9})
    with open(tmp_path / ob.OUTBOX_FILE, "a") as f:
        f.write('{"kind": "metr')  # a line cut short by a crash
    again = Outbox(tmp_path, "r1", "http://127.0.0.1:1", POLICY)  # e.g. segexp-upload, later
    assert [e["kind"] for e in again.pending] == ["metrics", "metrics", "terminated"]
    fake_server["down"] = False
    assert again.flush()
    assert [e["kind"] for e in fake_server["sent"]] == ["metrics", "metrics", "terminated"]
    assert not (tmp_path / ob.OUTBOX_FILE).exists()


def test_a_buffered_table_is_plain_json_and_sent_later(tmp_path: Path, fake_server: dict) -> None:
    fake_server["down"] = True
    table = {"kind": "table", "data": {"case": ["a"], "dice": [None]}, "artifact_file": "evaluation/test/cases.json"}
    assert not Outbox(tmp_path, "r1", "http://127.0.0.1:1", POLICY).submit(table)
    again = Outbox(tmp_path, "r1", "http://127.0.0.1:1", POLICY)  # e.g. segexp-upload, later
    assert again.pending == [table] and ob.describe(table) == "table evaluation/test/cases.json"
    fake_server["down"] = False
    assert again.flush() and fake_server["sent"] == [table]


def test_flush_stops_at_the_first_failure_and_keeps_the_rest(tmp_path: Path, fake_server: dict, monkeypatch) -> None:
    fake_server["down"] = True
    box = Outbox(tmp_path, "r1", "http://127.0.0.1:1", POLICY)
    for step in (1, 2, 3):
        box.submit(metrics(step))
    fake_server["down"] = False
    real_send = ob.send_entry
    monkeypatch.setattr(
        ob,
        "send_entry",
        lambda u, r, e, b=None: (
            (_ for _ in ()).throw(ConnectionError("x")) if e["step"] == 2 else real_send(u, r, e, b)
        ),
    )
    assert not box.flush()
    assert [e["step"] for e in box.pending] == [2, 3]
    assert [json.loads(x)["step"] for x in (tmp_path / ob.OUTBOX_FILE).read_text().splitlines()] == [2, 3]


def test_close_names_the_upload_command(tmp_path: Path, fake_server: dict, caplog) -> None:
    fake_server["down"] = True
    box = Outbox(tmp_path, "r1", "http://127.0.0.1:1", POLICY)
    box.submit(metrics(1))
    box.close()
    assert f"segexp-upload {tmp_path}" in caplog.text and "python -m segexp.cli.upload" in caplog.text


def test_unreachable_server_is_named_with_the_fixes() -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingUnavailable) as err:
        check_server(uri, timeout_s=2)
    text = str(err.value)
    assert uri in text and "scripts/mlflow_server.sh start" in text and "tracking=sqlite" in text
    check_server("sqlite:////tmp/x.db", timeout_s=1)  # not a server: nothing to check


def test_http_settings_lower_mlflow_retries_but_keep_the_users(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "33")
    with http_settings(OutagePolicy(request_timeout_s=7, http_retries=1)):
        from mlflow.environment_variables import (
            MLFLOW_HTTP_REQUEST_MAX_RETRIES,
            MLFLOW_HTTP_REQUEST_TIMEOUT,
        )

        assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 1
        assert MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 33  # set by the user: kept
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "33"


def test_upload_without_a_server_says_so(tmp_path: Path, fake_server: dict, capsys) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    (tmp_path / "mlflow_run.json").write_text(json.dumps({"run_id": "a" * 32, "tracking_uri": uri}))
    assert upload_cli.main([str(tmp_path)]) == 0
    assert "nothing to upload" in capsys.readouterr().out
    fake_server["down"] = True
    Outbox(tmp_path, "a" * 32, uri, POLICY).submit(metrics(1))
    monkeypatched_reachable = ob.server_reachable
    assert not monkeypatched_reachable(uri, 1)
    assert upload_cli.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert uri in err and "scripts/mlflow_server.sh" in err
    assert (tmp_path / ob.OUTBOX_FILE).is_file()  # nothing lost


def test_an_unwritable_outbox_keeps_entries_in_memory(tmp_path: Path, fake_server: dict) -> None:
    fake_server["down"] = True
    (tmp_path / ob.OUTBOX_FILE).mkdir()  # the file cannot be written (as a full disk would)
    box = Outbox(tmp_path / "x", "r1", "http://127.0.0.1:1", POLICY)
    box.file = tmp_path / ob.OUTBOX_FILE
    assert not box.submit(metrics(1))  # no exception: logging never stops the training
    assert not box.submit({"kind": "image", "key": "a", "step": 1, "timestamp": 1, "array": np.zeros((2, 2), np.uint8)})
    fake_server["down"] = False
    assert box.flush() and [e["kind"] for e in fake_server["sent"]] == ["metrics", "image"]


def test_an_entry_kind_is_one_table_entry(tmp_path: Path, fake_server: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sending, naming and keeping an entry go by its kind's entry in ``KINDS``: a new kind is one entry."""
    real_send = fake_server["real_send"]
    assert set(ob.KINDS) == {
        "params", "tags", "delete_tag", "metrics", "image", "artifact", "table", "model", "terminated"
    }  # fmt: skip
    sent: list[tuple[str, str]] = []

    def keep(entry: dict, folder: Path) -> Path:
        copy = folder / "note.txt"
        copy.write_text(entry["text"])
        return copy

    note = ob.EntryKind(
        lambda to, e: sent.append((to.run_id, to.local(e).read_text())), lambda e: f"note {e['text']}", keep
    )
    monkeypatch.setitem(ob.KINDS, "note", note)
    fake_server["down"] = True
    box = Outbox(tmp_path, "r1", "http://127.0.0.1:1", POLICY)
    assert not box.submit({"kind": "note", "text": "hello"})
    (stored,) = box.pending
    assert ob.describe(stored) == "note hello" and (tmp_path / stored["path"]).read_text() == "hello"
    real_send("http://127.0.0.1:1", "r1", stored, tmp_path)  # the relative path is found under the run folder
    assert sent == [("r1", "hello")]
    assert ob.describe({"kind": "tags"}) == "tags" and ob.describe(metrics(3)) == "metrics of step 3"
    with pytest.raises(ValueError, match="unknown outbox entry kind 'nope'"):
        real_send("http://127.0.0.1:1", "r1", {"kind": "nope"})
