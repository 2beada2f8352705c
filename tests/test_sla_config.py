"""[scheduler] (SPEC §4): interval and digest_at, with defaults, and their errors by key path."""

from __future__ import annotations

from datetime import time, timedelta
from pathlib import Path

import pytest

from maildesk.config import ConfigError, load_settings

DESK = '[desk]\naddress = "support@example.com"\nsecret = "s"\n'


def load(tmp_path: Path, extra: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "m.toml"
    path.write_text(DESK + extra)
    return load_settings(path)


def test_scheduler_defaults_and_values(tmp_path: Path) -> None:
    s = load(tmp_path, "")
    assert s.scheduler.interval == timedelta(seconds=30)
    assert s.scheduler.digest_time == time(8, 0)
    s = load(tmp_path, '[scheduler]\ninterval = "1s"\ndigest_at = "7:05:30"\n')
    assert s.scheduler.interval == timedelta(seconds=1)
    assert s.scheduler.digest_time == time(7, 5, 30)
    assert load(tmp_path, '[scheduler]\ndigest_at = ""\n').scheduler.digest_time is None


def test_scheduler_problems_name_their_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, '[scheduler]\ninterval = "0"\ndigest_at = "25:00"\nevery = "1m"\n')
    assert exc.value.problems == [
        "scheduler.interval: must be longer than 0",
        'scheduler.digest_at: expected a local time "HH:MM" (or "HH:MM:SS"), or "" for off; '
        "got '25:00'",
        "scheduler.every: unknown key",
    ]


def test_an_older_templates_folder_without_the_digest_still_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    from maildesk.config import DEFAULT_TEMPLATES
    from maildesk.service import check_templates

    own = tmp_path / "templates"
    shutil.copytree(DEFAULT_TEMPLATES, own)
    (own / "digest.txt").unlink()
    s = load(tmp_path, '[scheduler]\ndigest_at = "08:00"\n')
    s = s.model_copy(update={"desk": s.desk.model_copy(update={"templates": own})})
    assert check_templates(s) == []  # the daemon starts
    assert "no daily digest until it is there" in caplog.text
    (own / "ack.txt").unlink()
    assert check_templates(s) == [f"template 'ack': {own / 'ack.txt'} is missing"]
