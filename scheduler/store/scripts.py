"""The Lua scripts: how they are loaded, the codes they return, and what the codes mean.

Every script in ``lua/`` is loaded with the shared pieces it uses in front of it: constants
generated here from the Python facts (the status sets, work item kinds and entity message kinds
of :mod:`scheduler.protocol`, the wake-up kinds of :mod:`.notify`; a result code ``CODE.<name>`` of
:class:`Code` is replaced by its number) and ``lua/prelude.lua`` (the wake-up channel and hub,
and the functions several scripts share: Redis time, wake-ups, queues, the due set).
The scripts stay plain EVAL/EVALSHA scripts (fakeredis has no Redis Functions), so the
embedded store runs the same code. Line numbers in Redis' script errors count the prepended lines.

Every script returns a table whose first element is a :class:`Code`; :func:`outcome`
turns a reply into its code and values, or into the one domain error of its code.
"""
from __future__ import annotations

import enum
import re
from functools import cache
from importlib import resources

from .. import errors, protocol
from ..config import Limits
from . import notify


class Code(enum.IntEnum):
    """What a script did; one code, one meaning, in every script."""

    OK = 0  # done (the values follow)
    EXISTS = 1  # the instance id is taken by an instance that may not be replaced (its status follows)
    NOT_FOUND = 2  # no such instance
    DONE_BEFORE = 3  # this very change was applied before (a creation or message delivered again)
    LEASE_LOST = 4  # the claim token is not the current claim
    NOT_READY = 5  # nothing to do now: another claim won, the lease is not expired
    WRONG_STATUS = 6  # the instance's status does not allow it (its status follows)
    HISTORY_LIMIT = 7  # the history would grow past its limit (the size it would have follows)
    LEASED = 8  # the work item is held under another live lease
    INBOX_FULL = 9  # the instance has as many pending events as it may have
    TOO_LARGE = 10  # the instance's next work item would pass its size limit (the size it would have follows)
    STATE_TOO_LARGE = 11  # input, output, custom status and failure would not fit one reply (their size follows)
    HUB_GONE = 12  # the caller's task hub was deleted (or deleted and created again): nothing was written
    HUB_DELETING = 13  # the task hub is being deleted (since the time that follows)
    CHANGED = 14  # the instance is not the one the caller read (created again, rewound): read again
    TOO_MANY_HUBS = 15  # the hub registry holds as many task hubs as it may (the bound follows)


def _lua_set(names) -> str:
    return "{" + ", ".join(f"{name} = true" for name in sorted(names)) + "}"


def _lua_table(values: dict[str, str]) -> str:
    return "{" + ", ".join(f"{name} = '{value}'" for name, value in values.items()) + "}"


def _constants() -> dict[str, str]:
    """The generated constants, by name: the facts Python and Lua share."""
    tables = {
        "KIND": {"ORCHESTRATION": protocol.ORCHESTRATION, "ACTIVITY": protocol.ACTIVITY, "ENTITY": protocol.ENTITY},
        "ENTITY_MSG": {"SIGNAL": protocol.SIGNAL, "CALL": protocol.CALL, "LOCK": protocol.LOCK,
                       "UNLOCK": protocol.UNLOCK},
        "WAKE": {kind.upper(): kind for kind in notify.KINDS},
    }
    return {"TERMINAL": f"local TERMINAL = {_lua_set(protocol.TERMINAL)}",
            "IDLE": f"local IDLE = {_lua_set(protocol.IDLE)}",
            "DEDUP": f"local DEDUP = {{WINDOW_MS = {protocol.DEDUP_WINDOW_MS}, MAX = {protocol.DEDUP_MAX_IDS}}}",
            **{name: f"local {name} = {_lua_table(values)}" for name, values in tables.items()}}


def _read(name: str) -> str:
    return (resources.files("scheduler.store") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


_FUNCTION = re.compile(r"^local function (\w+)\(", re.MULTILINE)
_CODE = re.compile(r"\bCODE\.(\w+)\b")


@cache
def _prelude() -> tuple[str, dict[str, str]]:
    """(what every script gets, {function name: its definition with the comment above it})."""
    text = _read("prelude")
    blocks: dict[str, str] = {}
    common_end = len(text)
    for match in _FUNCTION.finditer(text):
        # a definition: the comment paragraph above it, down to the first unindented "end"
        begin = text.rfind("\n\n", 0, match.start()) + 2
        blocks[match.group(1)] = text[begin:text.index("\nend\n", match.start()) + 5]
        common_end = min(common_end, begin)
    return text[:common_end], blocks


def _code_value(script: str, code: str) -> str:
    if code not in Code.__members__:
        raise ValueError(f"Lua script {script}.lua uses CODE.{code}, which scheduler.store.scripts.Code lacks")
    return str(Code[code].value)


def _uses(text: str, name: str) -> bool:
    """True when the Lua ``text`` uses ``name`` outside its comments."""
    code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
    return re.search(rf"\b{name}\b", code) is not None


_CLOCK_KEY = re.compile(r"[A-Za-z0-9._:{}|-]+")


def _test_clock(clock_key: str) -> str:
    """A ``now_ms()`` that reads the epoch ms from ``clock_key`` (a test moves it) instead of Redis TIME.
    The key is not declared in KEYS: this works on a standalone Redis and fakeredis only, never on a
    Cluster. Production stores have no clock key and load the prelude's ``now_ms`` unchanged."""
    if not _CLOCK_KEY.fullmatch(clock_key):
        raise ValueError(f"unsuitable clock key {clock_key!r}")
    return ("-- the test clock (Store(clock_key=...)): epoch ms kept in a key the test moves\n"
            "local function now_ms()\n"
            f"  return tonumber(redis.call('GET', '{clock_key}'))\n"
            "end\n")


@cache
def source(name: str, clock_key: str | None = None) -> str:
    """The source of script ``name`` as loaded: the generated constants and the prelude functions it
    uses (directly or through another prelude function), then ``lua/<name>.lua``. Only what a script
    uses is defined: a script call runs the whole chunk, definitions included. With ``clock_key`` (tests
    only), ``now_ms()`` reads that key instead of Redis TIME (see :func:`_test_clock`)."""
    body = _read(name)
    common, functions = _prelude()
    if clock_key is not None:
        functions = {**functions, "now_ms": _test_clock(clock_key)}
    used: list[str] = []
    pending = body
    while True:
        new = [f for f in functions if f not in used and _uses(pending, f)]
        if not new:
            break
        used += new
        pending = "\n".join(functions[f] for f in new)
    definitions = [functions[f] for f in functions if f in used]  # in the prelude's order
    text = "\n".join([common, *definitions, body])
    constants = [line for const, line in _constants().items() if _uses(text, const)]
    text = _CODE.sub(lambda m: _code_value(name, m.group(1)), text)  # codes as literals: no table to build
    return "\n".join(["-- generated by scheduler/store/scripts.py", *constants, text])


def outcome(reply: list, subject: str, *expected: Code, limits: Limits = Limits()) -> tuple[Code, list]:
    """(code, values) of a script's reply when the code is OK or ``expected``; otherwise the
    domain error of the code is raised. ``subject``: the instance (or hub) the call was about."""
    if reply[0] == 0:  # Code.OK, the usual reply, without building the enum member
        return Code.OK, reply[1:]
    code = Code(reply[0])
    if code in expected:
        return code, reply[1:]
    raise error_of(code, subject, reply[1:], limits)


def error_of(code: Code, subject: str, values: list, limits: Limits = Limits()) -> Exception:
    """The domain error that a script's code means."""
    detail = values[0].decode() if values and isinstance(values[0], bytes) else values[0] if values else None
    if code is Code.EXISTS:
        return errors.InstanceExists(subject, detail)
    if code is Code.DONE_BEFORE:
        return errors.InstanceExists(subject, detail, done_before=True)
    if code is Code.NOT_FOUND:
        return errors.InstanceNotFound(subject)
    if code is Code.LEASE_LOST:
        return errors.LeaseLost(subject)
    if code is Code.HISTORY_LIMIT:
        return errors.HistoryLimitExceeded(subject, int(detail), limits.max_history_events)
    if code is Code.INBOX_FULL:
        return errors.InboxFull(subject, limits.max_inbox_events)
    if code is Code.TOO_LARGE:
        return errors.WorkItemTooLarge(subject, int(detail or 0), limits.max_work_item_bytes)
    if code is Code.STATE_TOO_LARGE:
        return errors.StateTooLarge(subject, int(detail), limits.max_state_bytes)
    if code is Code.HUB_GONE:
        return errors.HubGone(subject)
    if code is Code.HUB_DELETING:
        return errors.HubDeleting(subject)
    if code is Code.TOO_MANY_HUBS:
        return errors.TooManyTaskHubs(subject, int(detail))
    return RuntimeError(f"script returned {code.name} for {subject!r} where the store did not expect it")
