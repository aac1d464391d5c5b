"""The Lua scripts share one vocabulary: result codes, status sets, work item, entity message and wake-up
kinds, and wake-ups come from one place."""
from __future__ import annotations

import re
from importlib import resources

import pytest

from scheduler import protocol
from scheduler.store import Store, notify
from scheduler.store.scripts import Code, _constants, _prelude, source

LUA = resources.files("scheduler.store") / "lua"
PRELUDE = _prelude()[1]  # function name -> definition
SCRIPTS = sorted(p.name.removesuffix(".lua") for p in LUA.iterdir() if p.name.endswith(".lua") and
                 p.name != "prelude.lua")


def body(name: str) -> str:
    return (LUA / f"{name}.lua").read_text(encoding="utf-8")


def uncommented(text: str) -> str:
    return "\n".join(line.split("--")[0] for line in text.splitlines())


def code(name: str) -> str:
    """The script without its comments."""
    return uncommented(body(name))


def test_every_script_file_is_registered_by_the_store_and_the_other_way_round():
    assert sorted(Store.SCRIPTS) == SCRIPTS
    assert len(set(Store.SCRIPTS)) == len(Store.SCRIPTS)


def _returns_codes(name: str, text: str) -> None:
    """Every return of ``text``: a table that starts with a code, a local holding one (built from
    CODE.<name> above), or the result of a prelude function whose own returns are such."""
    returns = re.findall(r"\breturn\b\s*(.*)", text)
    assert returns, f"{name} returns nothing"
    for value in returns:
        called = re.match(r"(\w+)\(", value)
        if called and called.group(1) in PRELUDE:
            _returns_codes(called.group(1), uncommented(PRELUDE[called.group(1)]))
            continue
        assert value.startswith("{CODE.") or re.fullmatch(r"\{?\w+\}?( end)?", value), \
            f"{name} returns {value!r}, not {{CODE.<name>, ...}}"


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_returns_a_code_of_the_one_table(name):
    _returns_codes(f"{name}.lua", code(name))
    for used in re.findall(r"CODE\.(\w+)", code(name)):
        assert used in Code.__members__, f"{name}.lua uses unknown code {used}"


@pytest.mark.parametrize("name", SCRIPTS)
def test_wake_ups_time_and_lease_members_come_from_the_prelude(name):
    text = code(name)
    assert "PUBLISH" not in text, f"{name}.lua publishes by itself: use wake/push_work/add_due of the prelude"
    assert "'TIME'" not in text, f"{name}.lua reads TIME by itself: use now_ms()"
    assert not re.search(r"'[oa]\|'", text), f"{name}.lua builds a lease member by itself: use lease_member()"
    for status_set in ("COMPLETED = true", "SUSPENDED = true"):
        assert status_set not in text, f"{name}.lua defines its own status set: use TERMINAL or IDLE"


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_header_names_its_keys_and_own_arguments(name):
    header = "".join(line for line in body(name).splitlines(keepends=True) if line.startswith("--"))
    for key in sorted(set(re.findall(r"KEYS\[(\d+)\]", code(name)))):
        assert f"KEYS[{key}]" in header, f"{name}.lua uses KEYS[{key}] without naming it in its header"
    for arg in sorted(set(re.findall(r"ARGV\[(\d+)\]", code(name)))):
        assert f"ARGV[{arg}]" in header, f"{name}.lua uses ARGV[{arg}] without naming it in its header"
        assert int(arg) >= 3, f"{name}.lua reads ARGV[{arg}]: its own arguments start at ARGV[3]"


def test_the_generated_constants_carry_the_python_facts():
    constants = "\n".join(_constants().values())
    terminal = re.search(r"local TERMINAL = \{(.*)\}", constants).group(1)
    idle = re.search(r"local IDLE = \{(.*)\}", constants).group(1)
    assert set(re.findall(r"(\w+) = true", terminal)) == protocol.TERMINAL
    assert set(re.findall(r"(\w+) = true", idle)) == protocol.IDLE
    assert f"ORCHESTRATION = '{protocol.ORCHESTRATION}'" in constants
    assert f"ACTIVITY = '{protocol.ACTIVITY}'" in constants
    entity_msg = re.search(r"local ENTITY_MSG = \{(.*)\}", constants).group(1)
    assert dict(re.findall(r"(\w+) = '(\w)'", entity_msg)) == {
        "SIGNAL": protocol.SIGNAL, "CALL": protocol.CALL, "LOCK": protocol.LOCK, "UNLOCK": protocol.UNLOCK}
    wake = re.search(r"local WAKE = \{(.*)\}", constants).group(1)
    assert dict(re.findall(r"(\w+) = '(\w+)'", wake)) == {kind.upper(): kind for kind in notify.KINDS}


ENTITY_MESSAGE_KINDS = {protocol.SIGNAL, protocol.CALL, protocol.LOCK, protocol.UNLOCK}
_LITERAL = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")


@pytest.mark.parametrize("name", [*SCRIPTS, "prelude"])
def test_entity_message_and_wake_up_kinds_are_named_not_spelled(name):
    """ENTITY_MSG.<KIND> and WAKE.<KIND> (generated from protocol.py and notify.py), never a literal: a
    kind renamed on the Python side cannot leave a script behind."""
    text = code(name)
    assert not re.search(r"\bwake\(\s*['\"]", text), f"{name}.lua spells a wake-up kind: use WAKE.<KIND>"
    for single, double in _LITERAL.findall(text):
        pieces = (single or double).split("\\n")  # a record header built in place: "\nl\n"
        spelled = ENTITY_MESSAGE_KINDS.intersection(pieces)
        assert not spelled, f"{name}.lua spells entity message kind {spelled} in {single or double!r}: use ENTITY_MSG"


@pytest.mark.parametrize("name", SCRIPTS)
def test_result_codes_are_loaded_as_their_numbers(name):
    loaded = "\n".join(line.split("--")[0] for line in source(name).splitlines())
    assert "CODE." not in loaded
    # the prelude functions it gets come first, then its own body
    texts = [uncommented(PRELUDE[f]) for f in PRELUDE if f"local function {f}(" in loaded] + [code(name)]
    expected = [Code[c].value for text in texts for c in re.findall(r"\breturn \{CODE\.(\w+)", text)]
    assert [int(v) for v in re.findall(r"\breturn \{(\d+)", loaded)] == expected


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_script_gets_what_it_uses_and_nothing_else(name):
    """A script call runs its whole chunk: the shared constants and functions it does not use are left out."""
    lines = [line.split("--")[0] for line in source(name).splitlines()]
    for constant in ("TERMINAL", "IDLE", "KIND", "ENTITY_MSG", "WAKE"):
        defined = [line for line in lines if line.startswith(f"local {constant} = ")]
        used = any(re.search(rf"\b{constant}\b", line) for line in lines if line not in defined)
        assert bool(defined) == used, f"{name}.lua: {constant} defined {bool(defined)}, used {used}"
    for function in re.findall(r"^local function (\w+)\(", (LUA / "prelude.lua").read_text(), re.MULTILINE):
        head = f"local function {function}("
        defined = any(line.startswith(head) for line in lines)
        used = any(re.search(rf"\b{function}\(", line) for line in lines if not line.startswith(head))
        assert defined == used, f"{name}.lua: {function} defined {defined}, used {used}"
