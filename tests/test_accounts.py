"""Accounts in process, on a real SQLite store: names, password hashing and checking, disabling, API keys."""

from __future__ import annotations

from typing import Any

import pytest

from clawweb import accounts
from clawweb.errors import ApiError
from clawweb.storage import Store

PASSWORD = "correct horse battery"


@pytest.fixture
def ann(store: Store) -> dict[str, Any]:
    return store.add_user("ann", accounts.hash_password(PASSWORD))


def sessions_of(store: Store, user: dict[str, Any], count: int) -> list[int]:
    return [
        int(store.add_session(f"digest-{user['id']}-{i}", user["id"], "ua", "127.0.0.1")["id"]) for i in range(count)
    ]


@pytest.mark.parametrize("name", ["ann", "ann.b-c_d@example", "Zoë", "用户", "a" * accounts.MAX_NAME])
def test_names_of_letters_digits_and_a_little_punctuation_are_taken(name: str) -> None:
    assert accounts.check_name(f"  {name} ") == name


@pytest.mark.parametrize("name", ["", "   ", "a" * (accounts.MAX_NAME + 1), "ann b", "ann/b", "<ann>", "ann\0", "a\tb"])
def test_other_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="a user name has 1 to 64"):
        accounts.check_name(name)


@pytest.mark.parametrize("length", [accounts.MIN_PASSWORD - 1, accounts.MAX_PASSWORD + 1])
def test_a_password_too_short_or_too_long_is_refused(length: int) -> None:
    with pytest.raises(ValueError, match="8 to 1024 characters"):
        accounts.hash_password("x" * length)


def test_the_right_password_finds_the_user_and_nothing_else_does(store: Store, ann: dict[str, Any]) -> None:
    found = accounts.authenticate(store, "ann", PASSWORD)
    assert found is not None and found["id"] == ann["id"]
    assert accounts.authenticate(store, " ann ", PASSWORD) is not None  # the name as typed, spaces around
    assert accounts.authenticate(store, "ann", PASSWORD + " ") is None  # the password exactly
    assert accounts.authenticate(store, "ANN", PASSWORD) is not None  # one ann, however her name is typed
    assert accounts.authenticate(store, "bob", PASSWORD) is None  # unknown: checked against a dummy hash
    assert accounts.authenticate(store, "a" * 100_000, PASSWORD) is None  # not even looked up
    assert ann["password_hash"].startswith("scrypt:") and PASSWORD not in ann["password_hash"]


def test_only_the_first_max_password_characters_are_checked(store: Store) -> None:
    """A megabyte "password" costs one scrypt of 1024 characters, not of a megabyte."""
    long = "p" * accounts.MAX_PASSWORD
    store.add_user("long", accounts.hash_password(long))
    assert accounts.authenticate(store, "long", long + "anything after it") is not None
    assert accounts.authenticate(store, "long", long[:-1]) is None


def test_a_new_password_ends_every_session_but_the_one_that_set_it(store: Store, ann: dict[str, Any]) -> None:
    kept, *others = sessions_of(store, ann, 3)
    accounts.set_password(store, ann["id"], "a new password!", keep_session=kept)
    assert [s["id"] for s in store.sessions(ann["id"])] == [kept]
    assert accounts.authenticate(store, "ann", PASSWORD) is None
    assert accounts.authenticate(store, "ann", "a new password!") is not None
    accounts.set_password(store, ann["id"], "another password")  # from the command line: no session kept
    assert store.sessions(ann["id"]) == []


def test_disabling_ends_sessions_refuses_logins_and_keys_until_enabled(store: Store, ann: dict[str, Any]) -> None:
    key, _ = accounts.create_key(store, ann["id"])
    sessions_of(store, ann, 2)
    accounts.set_disabled(store, ann["id"], True)
    assert store.sessions(ann["id"]) == []
    assert accounts.authenticate(store, "ann", PASSWORD) is None
    with pytest.raises(ApiError):
        accounts.user_for_key(store, key)
    accounts.set_disabled(store, ann["id"], False)
    assert store.sessions(ann["id"]) == []  # enabling brings no session back
    assert accounts.authenticate(store, "ann", PASSWORD) is not None
    assert accounts.user_for_key(store, key)["user_name"] == "ann"


def test_a_key_is_shown_once_and_stored_only_as_its_digest(store: Store, ann: dict[str, Any]) -> None:
    key, row = accounts.create_key(store, ann["id"], "laptop")
    assert key.startswith(accounts.KEY_PREFIX) and len(key) > 40
    assert row["prefix"] == key[:10] and row["name"] == "laptop"
    assert key not in row.values() and row["digest"] == accounts.key_digest(key)
    found = accounts.user_for_key(store, key)
    assert (found["user_id"], found["user_name"]) == (ann["id"], "ann")
    assert accounts.create_key(store, ann["id"])[0] != key


@pytest.mark.parametrize(
    "wrong",
    [
        "cw_" + "x" * 43,  # well formed, never issued
        "sk-" + "x" * 43,  # not ours at all
        "cw_" + "x" * 200,  # too long to be one of ours
        "",
    ],
)
def test_an_unknown_key_is_a_401_asking_for_a_bearer_token(store: Store, ann: dict[str, Any], wrong: str) -> None:
    accounts.create_key(store, ann["id"])
    with pytest.raises(ApiError) as refused:
        accounts.user_for_key(store, wrong)
    assert refused.value.status == 401 and refused.value.message == "invalid or revoked API key"
    assert refused.value.headers == {"WWW-Authenticate": "Bearer"}


def test_a_revoked_key_stops_working_at_once(store: Store, ann: dict[str, Any]) -> None:
    key, row = accounts.create_key(store, ann["id"])
    assert store.revoke_key(row["id"], ann["id"])
    with pytest.raises(ApiError) as refused:
        accounts.user_for_key(store, key)
    assert refused.value.status == 401
