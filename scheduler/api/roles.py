"""Roles, what each may call, and the identity a caller is known by (api/auth.py checks them)."""
from __future__ import annotations

from dataclasses import dataclass

READ = frozenset({"Hello", "GetInstance", "WaitForInstanceStart", "WaitForInstanceCompletion", "QueryInstances",
                  "ListInstanceIds", "StreamInstanceHistory", "GetEntity", "QueryEntities",
                  "ListInstanceIDs", "GetInstanceHistory"})  # (the last two: the Dapr port's)
CLIENT = READ | {"StartInstance", "RaiseEvent", "TerminateInstance", "SuspendInstance", "ResumeInstance",
                 "RestartInstance", "RewindInstance", "SignalEntity", "SkipGracefulOrchestrationTerminations",
                 "RerunWorkflowFromEvent"}
WORK = frozenset({"Hello", "GetWorkItems", "CompleteActivityTask", "CompleteOrchestratorTask", "CompleteEntityTask",
                  "AbandonTaskActivityWorkItem", "AbandonTaskOrchestratorWorkItem", "AbandonTaskEntityWorkItem",
                  "StreamInstanceHistory"})
ADMIN_ONLY = frozenset({"CreateTaskHub", "DeleteTaskHub", "PurgeInstances", "CleanEntityStorage"})
ROLES: dict[str, frozenset[str]] = {"reader": READ, "client": CLIENT, "worker": WORK,
                                    "admin": CLIENT | WORK | ADMIN_ONLY}
# Calls whose completion token, not the taskhub metadata, names the task hub they act on.
TOKEN_HUB_CALLS = frozenset({"CompleteActivityTask", "CompleteOrchestratorTask", "CompleteEntityTask",
                             "AbandonTaskActivityWorkItem", "AbandonTaskOrchestratorWorkItem",
                             "AbandonTaskEntityWorkItem"})
# Calls that may stay open long: re-checked when the identities change (Authenticator.revocable).
LONG_CALLS = frozenset({"GetWorkItems", "WaitForInstanceStart", "WaitForInstanceCompletion", "StreamInstanceHistory"})


@dataclass(frozen=True)
class Identity:
    name: str
    role: str
    hubs: frozenset[str]  # task hub names, or "*" for every hub

    def may(self, method: str) -> bool:
        return method in ROLES[self.role]

    def may_use(self, hub: str) -> bool:
        return "*" in self.hubs or hub in self.hubs


ANONYMOUS = Identity("anonymous", "admin", frozenset({"*"}))  # without authentication: anyone may do anything
