"""Shared fixtures: real databases (SQLite files, PostgreSQL databases), configs, messages.

PostgreSQL tests use the server on 127.0.0.1:5432 (user postgres, trust auth),
each in a database of its own. Without the server they skip locally and FAIL
in CI (CI=true), so a missing server never passes silently.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import write_config
from tests.sla_desk import SlaDesk
from tests.test_serve import Daemon

PG_ADMIN_URL = os.environ.get("MAILDESK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_admin() -> Any:
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database; dropped afterwards."""
    name = f"maildesk_t_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin()
    admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Runs the test once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/maildesk.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def config_path(tmp_path: Path, db_url: str) -> Path:
    return write_config(tmp_path, db_url)


@pytest.fixture
def own_daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A `maildesk serve` of one test's own (it starts, restarts, reloads or stops it),
    killed at the end whatever happened."""
    d = Daemon(tmp_path)
    try:
        yield d
    finally:
        d.kill()


@pytest.fixture
def sd(tmp_path: Path, db_url: str) -> Iterator[SlaDesk]:
    """A desk with the SLA policy "office" and a clock the test sets (tests.sla_desk),
    once on SQLite and once on PostgreSQL."""
    d = SlaDesk.open(tmp_path, db_url)
    yield d
    d.close()
