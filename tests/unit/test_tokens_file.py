"""The tokens file: strict at start and on every change; a deleted file fails closed, a malformed one keeps
the last good set and says so (ERROR every minute, a metric) until it is fixed; an empty bearer token is
never one; a tokens file others may read, or tokens over plaintext beyond loopback, are warned about."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys

import prometheus_client
import pytest

from scheduler.api.auth import Authenticator, Unauthenticated
from scheduler.api.tokens import TokenFile, TokensFileError, parse_tokens

AUTH_LOGGER = "scheduler.api.tokens"


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def entry(name="a", token="secret-a", role="client", hubs=("*",), **extra) -> dict:
    e = {"name": name, "sha256": sha(token), "role": role, "hubs": list(hubs)}
    e.update(extra)
    return e


def write(path, document, mode: int = 0o600) -> None:
    """Replace the file as a mounted Secret changes: a new file renamed over the old one."""
    tmp = f"{path}.new"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(document if isinstance(document, str) else json.dumps(document))
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def no_hubs() -> dict:
    e = entry()
    del e["hubs"]
    return e


# what is wrong -> (tokens entries, a word the one line must hold)
REFUSED = {
    "no hubs": ([no_hubs()], "hubs"),
    "empty hubs": ([entry(hubs=())], "hubs"),
    "a bad hub name": ([entry(hubs=("a b",))], "hubs"),
    "no hash": ([{"name": "a", "role": "client", "hubs": ["*"]}], "sha256"),
    "an empty hash": ([entry() | {"sha256": ""}], "sha256"),
    "a hash that is not hex": ([entry() | {"sha256": "z" * 64}], "sha256"),
    "the hash of the empty token": ([entry(token="")], "empty"),
    "an unknown role": ([entry(role="root")], "role"),
    "duplicate hashes": ([entry("a", "same"), entry("b", "same")], "same sha256"),
    "duplicate names": ([entry("a", "one"), entry("a", "two")], "same name"),
    "an empty name": ([entry(name="")], "name"),
    "an unknown key": ([entry(hub=["x"])], "unknown key"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_tokens_document_that_is_not_strictly_right_is_refused_naming_the_entry(case):
    entries, word = REFUSED[case]
    with pytest.raises(ValueError) as e:
        parse_tokens({"tokens": [entry("first", "first-token"), *entries]})
    message = str(e.value)
    assert "tokens[1]" in message and word in message, message
    assert "\n" not in message


def test_a_valid_document_gives_each_entry_its_identity():
    parsed = parse_tokens({"tokens": [entry("a", "ta", "client", ["orders"]), entry("b", "tb", "admin", ["*"])]})
    assert [(d.hex(), i.name, i.role, sorted(i.hubs)) for d, i in parsed] == [
        (sha("ta"), "a", "client", ["orders"]), (sha("tb"), "b", "admin", ["*"])]


@pytest.mark.parametrize("case", ["no hubs", "the hash of the empty token", "duplicate names"])
def test_the_server_refuses_to_start_with_one_line_and_exit_code_2(tmp_path, case):
    path = tmp_path / "tokens.json"
    write(path, {"tokens": [entry("first", "first-token"), *REFUSED[case][0]]})
    run_and_expect_one_line(path, "tokens[1]")


def test_a_malformed_tokens_file_at_start_is_one_line_and_exit_code_2(tmp_path):
    path = tmp_path / "tokens.json"
    write(path, '{"tokens": [ {"name": "a", ')
    run_and_expect_one_line(path, "JSON")


def run_and_expect_one_line(path, word: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "scheduler", "serve", "--port", "0", "--auth-tokens-file", str(path)],
                          capture_output=True, text=True, timeout=30)
    output = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, output[-5:])
    assert len(output) <= 3, output
    assert any(word in line and str(path) in line for line in output), output


def valid_gauge() -> float:
    return prometheus_client.REGISTRY.get_sample_value("dt_auth_tokens_file_valid")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tokens(tmp_path, clock) -> TokenFile:
    path = tmp_path / "tokens.json"
    write(path, {"tokens": [entry("a", "ta"), entry("b", "tb")]})
    return TokenFile(str(path), clock=clock)


def names(tokens: TokenFile, *secrets: str) -> list[str | None]:
    return [None if (i := tokens.identify(s)) is None else i.name for s in secrets]


def test_a_deleted_tokens_file_fails_closed_and_tells_the_listeners(tokens, clock):
    told = []
    tokens.listeners.append(lambda: told.append(True))
    assert names(tokens, "ta", "tb") == ["a", "b"]
    os.remove(tokens.path)
    tokens.refresh()
    clock.now += 1
    tokens.refresh()  # still gone: nothing more to tell
    assert names(tokens, "ta", "tb") == [None, None]
    assert told == [True] and valid_gauge() == 0
    write(tokens.path, {"tokens": [entry("b", "tb")]})
    tokens.refresh()
    assert names(tokens, "ta", "tb") == [None, "b"] and valid_gauge() == 1


def test_a_malformed_tokens_file_keeps_the_last_good_set_loudly_until_it_is_fixed(tokens, clock, caplog):
    caplog.set_level(logging.INFO, logger=AUTH_LOGGER)
    told = []
    tokens.listeners.append(lambda: told.append(True))

    def errors() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == AUTH_LOGGER and r.levelno == logging.ERROR]

    write(tokens.path, {"tokens": [entry("a", "ta"), no_hubs() | {"name": "b", "sha256": sha("tb")}]})
    tokens.refresh()
    assert names(tokens, "ta", "tb") == ["a", "b"]  # a typo neither opens the service nor takes it down
    assert told == [] and valid_gauge() == 0 and not tokens.valid
    assert len(errors()) == 1 and "tokens[1]" in errors()[0] and "last good set" in errors()[0], errors()
    clock.now += 30
    tokens.refresh()
    assert len(errors()) == 1  # not at every check ...
    clock.now += 31
    tokens.refresh()
    assert len(errors()) == 2  # ... but every minute until it is fixed
    write(tokens.path, {"tokens": [entry("b", "tb")]})
    clock.now += 1
    tokens.refresh()
    assert names(tokens, "ta", "tb") == [None, "b"] and told == [True] and valid_gauge() == 1 and tokens.valid
    clock.now += 120
    tokens.refresh()
    assert len(errors()) == 2


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Bearer    ", "bearer \t"])
def test_an_empty_bearer_token_is_never_accepted(tmp_path, header):
    path = tmp_path / "tokens.json"
    write(path, {"tokens": [entry("a", "ta")]})
    authenticator = Authenticator(TokenFile(str(path)))
    with pytest.raises(Unauthenticated):
        authenticator.identify((("authorization", header),))
    assert authenticator.identify((("authorization", "Bearer ta"),)).name == "a"


def test_the_hash_of_the_empty_token_is_refused_at_start(tmp_path):
    path = tmp_path / "tokens.json"
    write(path, {"tokens": [entry("a", "")]})
    with pytest.raises(TokensFileError, match=r"tokens\[0\].*empty"):
        TokenFile(str(path))


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == AUTH_LOGGER and r.levelno == logging.WARNING]


def test_a_tokens_file_others_may_read_is_warned_about_at_start_and_on_reload(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=AUTH_LOGGER)
    path = tmp_path / "tokens.json"
    write(path, {"tokens": [entry("a", "ta")]}, mode=0o600)
    tokens = TokenFile(str(path))
    assert warnings(caplog) == []
    write(path, {"tokens": [entry("a", "ta")]}, mode=0o644)
    tokens.refresh()
    assert len(warnings(caplog)) == 1 and "644" in warnings(caplog)[0], warnings(caplog)
    caplog.clear()
    TokenFile(str(path))
    assert len(warnings(caplog)) == 1


def test_tokens_over_plaintext_beyond_loopback_are_warned_about(tmp_path, caplog):
    from scheduler.app import _tokens_file
    from scheduler.config import Config

    caplog.set_level(logging.INFO, logger=AUTH_LOGGER)
    path = tmp_path / "tokens.json"
    write(path, {"tokens": [entry("a", "ta")]})
    _tokens_file(Config(host="127.0.0.1", auth_tokens_file=str(path)))
    assert warnings(caplog) == []
    _tokens_file(Config(host="0.0.0.0", auth_tokens_file=str(path), redis_url="redis://r:6379/0"))
    assert len(warnings(caplog)) == 1 and "plaintext" in warnings(caplog)[0], warnings(caplog)
