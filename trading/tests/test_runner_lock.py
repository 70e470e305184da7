"""One execution loop per database: on SQLite a lock file beside the database file, so two
stacks on two databases (two `make run`s, a browser test beside a dev stack) never block
each other, and two loops on one database always do."""

from __future__ import annotations

import pytest
from django.db import connection

from trading.runner import ExecutionSetupError, single_instance

pytestmark = pytest.mark.skipif(
    connection.vendor != "sqlite", reason="the SQLite lock file (PostgreSQL uses an advisory lock)"
)


def test_one_loop_per_database_file(tmp_path, monkeypatch):
    monkeypatch.setitem(connection.settings_dict, "NAME", str(tmp_path / "one.sqlite3"))
    with single_instance():
        assert (tmp_path / "one.sqlite3.trade.lock").exists()
        with pytest.raises(ExecutionSetupError, match="another execution loop"), single_instance():
            pass
        monkeypatch.setitem(connection.settings_dict, "NAME", str(tmp_path / "two.sqlite3"))
        with single_instance():  # another database: not blocked
            pass
