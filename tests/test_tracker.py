"""A reopened run read back and tagged through the Tracker (a SQLite store): what a resume relies on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segexp.core.errors import RunError
from segexp.tracking.outbox import OUTBOX_FILE, Outbox, describe
from segexp.tracking.runs import run_dir_tag
from segexp.tracking.store import image_key_and_step
from segexp.tracking.tracker import Tracker

from .conftest import sqlite_tracked_run


def test_mlflow_image_names_are_read_back() -> None:
    name = "images/epoch_images~square+step+12+timestamp+1700000000000+0b9c-4d2e"
    assert image_key_and_step(f"{name}.png") == ("epoch_images/square", 12)
    assert image_key_and_step(f"{name}+compressed.webp") == ("epoch_images/square", 12)
    assert image_key_and_step("images/plot.png") is None
    assert image_key_and_step("images/x+step+last+timestamp+1.png") is None


def test_a_reopened_run_is_read_back_and_marked_resumed(tmp_path: Path) -> None:
    """Steps and images already logged are seen as MLflow stores them; each resume counts, the error is kept aside."""
    image = np.zeros((8, 8, 3), np.uint8)
    with sqlite_tracked_run(tmp_path, tags={"run_dir": str(tmp_path)}) as tracker:
        for step in (1, 2):
            tracker.log_metrics({"train/loss": 1.0 / step}, step=step)
            tracker.log_image("epoch_images/square", image, step=step)
        tracker.log_image("epoch_images/disc", image, step=1)
        tracker.set_tags({"error": "interrupted (KeyboardInterrupt)"})
        assert tracker.metric_steps("train/loss") == {1, 2} and tracker.metric_steps("val/loss") == set()
        assert tracker.logged_image_steps() == {"epoch_images/square": {1, 2}, "epoch_images/disc": {1}}

        assert tracker.mark_resumed(2) == 1
        tags = tracker.tags()
        assert "error" not in tags and tags["previous_error"] == "interrupted (KeyboardInterrupt)"
        assert tags["resumed"] == "1" and tags["resumed_1_at_epoch"] == "2"
        assert tracker.mark_resumed(5) == 2
        tags = tracker.tags()
        assert tags["resumed"] == "2" and tags["resumed_2_at_epoch"] == "5" and "error" not in tags
        tracker.delete_tag("error")  # a tag already gone: nothing to do, no error
        run_id, uri = tracker.run_id, tracker.uri
    assert run_id is not None and uri is not None
    assert run_dir_tag(run_id, uri) == str(tmp_path)
    with pytest.raises(RunError, match=f"MLflow run {'0' * 32} at {uri}"):
        run_dir_tag("0" * 32, uri)


def test_a_disabled_tracker_reads_nothing_and_marks_nothing() -> None:
    tracker = Tracker(None)
    assert tracker.tags() == {} and tracker.metric_steps("train/loss") == set()
    assert tracker.logged_image_steps() == {} and tracker.mark_resumed(3) == 0


def test_a_buffered_tag_deletion_is_sent_later(tmp_path: Path) -> None:
    """A deletion the server did not take waits in the outbox file like any call and is sent when it answers."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with sqlite_tracked_run(tmp_path, run_dir=run_dir) as tracker:
        tracker.set_tags({"error": "RuntimeError: disk on fire"})
        entry = {"kind": "delete_tag", "key": "error"}
        (run_dir / OUTBOX_FILE).write_text(json.dumps(entry) + "\n")  # as the outbox buffers it
        assert describe(entry) == "deletion of tag error"
        assert tracker.run_id is not None and tracker.uri is not None
        assert Outbox(run_dir, tracker.run_id, tracker.uri).flush()
        assert "error" not in tracker.tags() and not (run_dir / OUTBOX_FILE).exists()
