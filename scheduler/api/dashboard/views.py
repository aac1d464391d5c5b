"""The dashboard's HTTP routes: the pages (one static shell whose script renders what the JSON
endpoints answer) and the JSON endpoints under ``/api/``, each one call of the service (see calls.py).

The browser sends its token as ``Authorization: Bearer …`` on every JSON request (the pages
themselves hold no data), so a cookie never carries authority and no request can be forged from
another site. The task hub is the ``hub`` query parameter (default: the replica's ``--task-hub``);
``flavour=dapr`` shows its Dapr twin (the instances of Dapr Workflow's SDKs, see api/dapr): the calls are
then those of the Dapr port (its servicer in the twins, its interceptor: tokens name the hub as given),
and a twin is never reachable by its own name (``~`` is not allowed in ``hub``).
"""
from __future__ import annotations

import json
import logging
import time
from importlib import resources

import grpc
from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from ... import errors
from ..._proto import orchestrator_service_pb2 as pb
from ...config import NAME_RE
from ...engine import Engine
from ...protocol import quote
from ..work import DAPR_SUFFIX
from . import present
from .calls import CallFailed, Calls, allowed_methods

log = logging.getLogger(__name__)

PAGE_SIZE = 50  # instances, entities, schedules per page (the gRPC calls' own bound is 1000)
MAX_PAGE_SIZE = 200
HISTORY_CHUNKS = 50  # StreamInstanceHistory chunks of 100 events: the timeline shows at most 5,000 events
DAPR = "dapr"  # ?flavour=dapr: the hub's Dapr twin
MAX_BODY_BYTES = 1024 * 1024  # an action's JSON body (an event's data, a reason)
STATIC = ("app.js", "app.css")
PRELOAD_MARK = b"<!--preload-->"
PAYLOADS = ("input", "output", "customStatus", "failure")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
}


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


class Views:
    def __init__(self, calls: Calls, engine: Engine, dapr: Calls | None = None) -> None:
        self.calls = calls
        self.engine = engine
        self.flavours = {"": calls, **({DAPR: dapr} if dapr is not None else {})}  # ?flavour= → its calls
        self.assets = {name: _asset(name) for name in ("index.html", *STATIC)}

    def routes(self) -> list[web.RouteDef]:
        page = self.page
        return [
            web.get("/", page), web.get("/instances/{id}", page), web.get("/entities", page),
            web.get("/schedules", page), web.get("/static/{name}", self.static),
            web.get("/api/session", self.session), web.get("/api/hubs", self.hubs),
            web.get("/api/stats", self.stats), web.get("/api/instances", self.instances),
            web.get("/api/instances/{id}", self.instance),
            web.get("/api/instances/{id}/payload/{which}", self.payload),
            web.post("/api/instances/{id}/{action}", self.action),
            web.get("/api/entities", self.entities), web.get("/api/schedules", self.schedules),
        ]

    # -- pages -------------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        """The page shell. Without tokens (there is none to ask for), it carries the answers its script
        would ask for first, so the page is whole as soon as it has loaded (one round trip, no flicker)."""
        body = self.assets["index.html"]
        if not self.calls.authenticates:
            answers = json.dumps(await self._preload(request)).replace("<", "\\u003c").encode()
            body = body.replace(PRELOAD_MARK, b'<script type="application/json" id="preload">' + answers + b"</script>")
        return web.Response(body=body, content_type="text/html", charset="utf-8", headers=SECURITY_HEADERS)

    async def _preload(self, request: web.Request) -> dict:
        """What the page's script asks first, by kind: {kind: {"status": HTTP status, "body": JSON}}."""
        q, path = request.query, request.path
        hub = {k: q[k] for k in ("hub", "flavour") if q.get(k)}
        jobs = {"session": (self.session, {}, {}), "hubs": (self.hubs, {}, {})}
        paging = {k: q[k] for k in ("prefix", "token", "pageSize") if q.get(k)}
        if path == "/":
            jobs["stats"] = (self.stats, {}, {})
            if not q.get("createdFrom") and not q.get("createdTo"):  # the page's are UTC times, the API's ms
                jobs["instances"] = (self.instances, {**paging, **({"status": q["status"]} if q.get("status") else {})},
                                     {})
        elif path.startswith("/instances/"):
            jobs["instance"] = (self.instance, {}, {"id": request.match_info["id"]})
        elif path in ("/entities", "/schedules"):
            jobs[path[1:]] = (self.entities if path == "/entities" else self.schedules, paging, {})
        answers = {}
        for kind, (handler, query, match) in jobs.items():
            reply = await handler(_Asked(request, {**query, **hub}, match))
            answers[kind] = {"status": reply.status, "body": json.loads(reply.body)}
        return answers

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        kind = "application/javascript" if name.endswith(".js") else "text/css"
        return web.Response(body=self.assets[name], content_type=kind, charset="utf-8", headers=SECURITY_HEADERS)

    # -- JSON --------------------------------------------------------------------------------

    async def session(self, request: web.Request) -> web.Response:
        """Who the token is and what it may call; 401 without a valid one when tokens are in use."""
        async def answer(calls, metadata, hub):
            identity = calls.identify(metadata)
            return {"auth": self.calls.authenticates, "name": identity.name, "role": identity.role,
                    "hubs": sorted(identity.hubs), "methods": allowed_methods(identity),
                    "defaultHub": self.calls.default_hub}
        return await self._json(request, answer)

    async def hubs(self, request: web.Request) -> web.Response:
        async def answer(calls, metadata, hub):
            """Our hubs, and (``daprHubs``) the hubs whose Dapr twin exists, both by the names tokens use."""
            identity = calls.identify(metadata)
            names = await self.engine.store.known_hubs()
            twins = [name.removesuffix(DAPR_SUFFIX) for name in names if name.endswith(DAPR_SUFFIX)]
            body = {"hubs": [n for n in names if not n.endswith(DAPR_SUFFIX) and identity.may_use(n)][:1000]}
            if DAPR in self.flavours:
                body["daprHubs"] = [name for name in twins if identity.may_use(name)][:1000]
            return body
        return await self._json(request, answer)

    async def stats(self, request: web.Request) -> web.Response:
        async def answer(calls, metadata, hub):
            calls.check_read(metadata, hub)
            keys = await self.engine.hubs.existing(calls.stored_hub(hub))
            if keys is None:
                raise CallFailed(grpc.StatusCode.NOT_FOUND, f"task hub {quote(hub)} does not exist")
            s = await self.engine.store.hub_stats(keys)
            overdue = None if s.next_due_ms is None else max(0, s.now_ms - s.next_due_ms)
            return {"hub": hub, "flavour": request.query.get("flavour") or None, "partitions": s.partitions,
                    "nowMs": s.now_ms, "statuses": s.statuses,
                    "due": s.due, "nextDueMs": s.next_due_ms, "ready": s.ready, "outbox": s.outbox,
                    "oldestReadyAgeMs": None if s.oldest_ready_ms is None else max(0, s.now_ms - s.oldest_ready_ms),
                    "promotionLagMs": overdue}
        return await self._json(request, answer)

    async def instances(self, request: web.Request) -> web.Response:
        async def answer(calls, metadata, hub):
            query = _instance_query(request.query)
            reply = await calls.unary("QueryInstances", pb.QueryInstancesRequest(query=query), metadata,
                                      _peer(request))
            return {"instances": [present.instance_row(s) for s in reply.orchestrationState],
                    "next": reply.continuationToken.value if reply.HasField("continuationToken") else None,
                    "nowMs": int(time.time() * 1000)}
        return await self._json(request, answer)

    async def instance(self, request: web.Request) -> web.Response:
        instance_id = request.match_info["id"]

        async def answer(calls, metadata, hub):
            state = await self._state(calls, instance_id, metadata, request)
            chunks, more = await calls.stream(
                "StreamInstanceHistory", pb.StreamInstanceHistoryRequest(instanceId=instance_id), metadata,
                _peer(request), HISTORY_CHUNKS)
            events = [e for chunk in chunks for e in chunk.events]
            return {"instance": present.instance_detail(state), "timeline": present.timeline(events),
                    "historyEvents": len(events), "historyTruncated": more, "nowMs": int(time.time() * 1000)}
        return await self._json(request, answer)

    async def payload(self, request: web.Request) -> web.Response:
        instance_id, which = request.match_info["id"], request.match_info["which"]

        async def answer(calls, metadata, hub):
            if which not in PAYLOADS:
                raise _bad(f"no payload {quote(which)}: one of {', '.join(PAYLOADS)}")
            return {"text": present.payload_of(await self._state(calls, instance_id, metadata, request), which)}
        return await self._json(request, answer)

    async def action(self, request: web.Request) -> web.Response:
        instance_id, action = request.match_info["id"], request.match_info["action"]
        if action not in ACTIONS:
            raise web.HTTPNotFound()

        async def answer(calls, metadata, hub):
            method, message = ACTIONS[action](instance_id, await _body(request))
            reply = await calls.unary(method, message, metadata, _peer(request))
            if method == "RestartInstance":
                return {"ok": True, "instanceId": reply.instanceId}
            if method == "PurgeInstances":
                return {"ok": True, "purged": reply.deletedInstanceCount}
            return {"ok": True}
        return await self._json(request, answer)

    async def entities(self, request: web.Request) -> web.Response:
        prefix = request.query.get("prefix", "")
        return await self._entity_page(request, ("@" + prefix) if prefix and not prefix.startswith("@") else prefix,
                                       present.entity_row)

    async def schedules(self, request: web.Request) -> web.Response:
        return await self._entity_page(request, f"@{present.SCHEDULE_ENTITY}@{request.query.get('prefix', '')}",
                                       present.schedule_row)

    async def _entity_page(self, request: web.Request, prefix: str, row) -> web.Response:
        async def answer(calls, metadata, hub):
            query = pb.EntityQuery(includeState=True, includeTransient=True)
            query.pageSize.value = _page_size(request.query)
            if prefix:
                query.instanceIdStartsWith.value = prefix
            if request.query.get("token"):
                query.continuationToken.value = request.query["token"]
            reply = await calls.unary("QueryEntities", pb.QueryEntitiesRequest(query=query), metadata,
                                      _peer(request))
            return {"entities": [row(e) for e in reply.entities], "nowMs": int(time.time() * 1000),
                    "next": reply.continuationToken.value if reply.HasField("continuationToken") else None}
        return await self._json(request, answer)

    async def _state(self, calls: Calls, instance_id: str, metadata, request) -> pb.OrchestrationState:
        reply = await calls.unary("GetInstance", pb.GetInstanceRequest(instanceId=instance_id, getInputsAndOutputs=True),
                                  metadata, _peer(request))
        if not reply.exists:
            raise CallFailed(grpc.StatusCode.NOT_FOUND, f"no instance {quote(instance_id)} in this task hub")
        return reply.orchestrationState

    async def _json(self, request: web.Request, answer) -> web.Response:
        hub = request.query.get("hub") or self.calls.default_hub
        if not NAME_RE.match(hub):
            return _error(400, "INVALID_ARGUMENT", f"task hub name {quote(hub)} must match {NAME_RE.pattern}")
        flavour = request.query.get("flavour", "")
        calls = self.flavours.get(flavour)
        if calls is None:
            return _error(400, "INVALID_ARGUMENT", f"no flavour {quote(flavour)}: {DAPR} or none")
        metadata = calls.metadata(request.headers.get("Authorization"), hub)
        try:
            if calls.authenticates:  # who asks comes first: 401 before anything about the request
                calls.identify(metadata)
            body = await answer(calls, metadata, hub)
        except CallFailed as exc:
            return _error(exc.http_status, exc.code.name, exc.message)
        except errors.StoreError as exc:  # a read outside the gRPC calls (hubs, stats)
            return _error(503, "UNAVAILABLE", f"{exc}; retry later")
        return web.json_response(body, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})


class _Asked:
    """A JSON request the page shell answers in advance: the page's own request, another query."""

    def __init__(self, page: web.Request, query: dict, match_info: dict) -> None:
        self.query = MultiDictProxy(MultiDict(query))
        self.match_info = match_info
        self.headers = page.headers
        self.remote = page.remote


_STATUSES = frozenset(n.removeprefix("ORCHESTRATION_STATUS_") for n in pb.OrchestrationStatus.keys())


def _text(value) -> str | None:
    return None if value is None else value if isinstance(value, str) else json.dumps(value)


def _terminate(instance_id: str, body: dict):
    request = pb.TerminateRequest(instanceId=instance_id, recursive=bool(body.get("recursive")))
    if body.get("reason") is not None:
        request.output.value = _text(body["reason"])
    return "TerminateInstance", request


def _with_reason(method: str, message):
    def build(instance_id: str, body: dict):
        request = message(instanceId=instance_id)
        if body.get("reason"):
            request.reason.value = str(body["reason"])
        return method, request
    return build


def _raise_event(instance_id: str, body: dict):
    request = pb.RaiseEventRequest(instanceId=instance_id, name=str(body.get("name") or ""))
    if body.get("data") is not None:
        request.input.value = _text(body["data"])
    return "RaiseEvent", request


ACTIONS = {
    "terminate": _terminate,
    "suspend": _with_reason("SuspendInstance", pb.SuspendRequest),
    "resume": _with_reason("ResumeInstance", pb.ResumeRequest),
    "rewind": _with_reason("RewindInstance", pb.RewindInstanceRequest),
    "raise-event": _raise_event,
    "restart": lambda instance_id, body: ("RestartInstance", pb.RestartInstanceRequest(
        instanceId=instance_id, restartWithNewInstanceId=bool(body.get("newInstanceId")))),
    "purge": lambda instance_id, body: ("PurgeInstances", pb.PurgeInstancesRequest(
        instanceId=instance_id, recursive=bool(body.get("recursive")))),
}


def _peer(request: web.Request) -> str:
    return f"dashboard {request.remote}"


def _page_size(query) -> int:
    if not query.get("pageSize"):
        return PAGE_SIZE
    return max(1, min(_int(query, "pageSize"), MAX_PAGE_SIZE))


def _int(query, name: str) -> int:
    try:
        return int(query[name])
    except ValueError:
        raise _bad(f"{name} must be an integer, got {quote(query[name])}") from None


def _bad(message: str) -> CallFailed:
    return CallFailed(grpc.StatusCode.INVALID_ARGUMENT, message)


def _instance_query(q) -> pb.InstanceQuery:
    """The QueryInstances query of the list page's parameters (created range in epoch ms)."""
    query = pb.InstanceQuery(maxInstanceCount=_page_size(q), fetchInputsAndOutputs=False)
    for status in filter(None, q.get("status", "").split(",")):
        if status.upper() not in _STATUSES:
            raise _bad(f"unknown status {quote(status)}")
        query.runtimeStatus.append(pb.OrchestrationStatus.Value("ORCHESTRATION_STATUS_" + status.upper()))
    if q.get("prefix"):
        query.instanceIdPrefix.value = q["prefix"]
    for param, field in (("createdFrom", "createdTimeFrom"), ("createdTo", "createdTimeTo")):
        if q.get(param):
            getattr(query, field).FromMilliseconds(_int(q, param))
    if q.get("token"):
        query.continuationToken.value = q["token"]
    return query


async def _body(request: web.Request) -> dict:
    if not request.can_read_body:
        return {}
    try:  # the application refuses a body over MAX_BODY_BYTES (413)
        body = json.loads(await request.read() or b"{}")
    except ValueError:
        raise _bad("the body is not JSON") from None
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object")
    return body


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "error": message}, status=status,
                             headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})
