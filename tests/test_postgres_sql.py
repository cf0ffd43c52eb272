"""The store's shared dialect as PostgreSQL takes it (clawweb/storage/postgres_sql.py), and the settings that
choose the engine: pure functions, no server."""

from __future__ import annotations

import pytest

from clawweb.config import ConfigError, load_settings
from clawweb.storage.engine import is_postgres, sqlite_path
from clawweb.storage.postgres_sql import translate


def test_parameters_become_psycopgs() -> None:
    assert translate("SELECT * FROM t WHERE a = ? AND b = ?", (1, "x")) == (
        "SELECT * FROM t WHERE a = %s AND b = %s",
        [1, "x"],
    )
    names = {"conversation": "c1", "message": 7}
    sql, params = translate("SELECT :message, :conversation WHERE id = :message", names)
    assert sql == "SELECT %(message)s, %(conversation)s WHERE id = %(message)s" and params is names


def test_is_a_parameter_reads_by_its_value() -> None:
    """Open mode's None is ``IS NULL``, an owner is ``=`` (PostgreSQL's IS NOT DISTINCT FROM never uses an index)."""
    assert translate("SELECT 1 FROM c WHERE user_id IS ? AND id = ?", (None, "x")) == (
        "SELECT 1 FROM c WHERE user_id IS NULL AND id = %s",
        ["x"],
    )
    assert translate("SELECT 1 FROM c WHERE user_id IS ? AND id = ?", (3, "x")) == (
        "SELECT 1 FROM c WHERE user_id = %s AND id = %s",
        [3, "x"],
    )
    assert translate("WHERE c.user_id is :owner", {"owner": None})[0] == "WHERE c.user_id IS NULL"
    assert translate("WHERE c.user_id IS :owner", {"owner": 2})[0] == "WHERE c.user_id = %(owner)s"
    assert translate("WHERE parent_id IS NOT NULL AND x = ?", (1,))[0] == "WHERE parent_id IS NOT NULL AND x = %s"


def test_percent_signs_and_strings_are_left_as_text() -> None:
    sql, _ = translate("SELECT '50% ?:x' || ?, a % 2 FROM t WHERE b LIKE ? ESCAPE '\\'", ("y", "%a%"))
    assert sql == "SELECT '50%% ?:x' || %s, a %% 2 FROM t WHERE b LIKE %s ESCAPE '\\'"
    assert translate("SELECT 'it''s ?' , ?", (1,))[0] == "SELECT 'it''s ?' , %s"


def test_utf8_bytes_of_a_column() -> None:
    sql, _ = translate("SELECT length(CAST(title AS BLOB)) + length(CAST(m.content AS BLOB)) FROM c", ())
    assert sql == "SELECT length(convert_to(title, 'UTF8')) + length(convert_to(m.content, 'UTF8')) FROM c"


@pytest.mark.parametrize(
    ("value", "engine_postgres", "path"),
    [
        ("", False, None),
        ("postgresql://clawweb:secret@db:5432/clawweb", True, None),
        ("postgres://db/clawweb", True, None),
        ("sqlite:///var/lib/clawweb/clawweb.db", False, "/var/lib/clawweb/clawweb.db"),
        ("sqlite://var/clawweb.db", False, "var/clawweb.db"),
    ],
)
def test_the_database_setting_chooses_the_engine(value: str, engine_postgres: bool, path: str | None) -> None:
    settings = load_settings({"CLAWWEB_DATABASE_URL": value, "CLAWWEB_DB": "var/x.db"})
    assert is_postgres(settings.database) == engine_postgres
    assert sqlite_path(settings.database) == (path or settings.database)
    if not value:
        assert settings.database == "var/x.db"


@pytest.mark.parametrize("value", ["mysql://db/x", "/var/lib/clawweb.db", "http://db"])
def test_another_database_url_is_refused_naming_the_setting(value: str) -> None:
    with pytest.raises(ConfigError, match="CLAWWEB_DATABASE_URL=.*must be postgresql://"):
        load_settings({"CLAWWEB_DATABASE_URL": value})


def test_a_password_in_a_refused_url_is_never_shown() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"CLAWWEB_DATABASE_URL": "mysql://u:hunter2@db/x"})
    assert "hunter2" not in str(info.value) and "mysql://***@db/x" in str(info.value)
