"""The path from CallEvents to Bitrix24: policy (pure) -> outbox (SQLite) -> dispatcher (REST)."""

from bridge.sync.dispatcher import Dispatcher, DispatcherHealth, DispatcherState
from bridge.sync.operations import CrmOp, OpenCallState, OpKind, PolicyStep
from bridge.sync.outbox import DeadLetter, Outbox, OutboxRow, OutboxState
from bridge.sync.policy import CallPolicy, PolicySettings
from bridge.sync.ports import AttachHandler, AttachNotReady, Bitrix24Port, DirectoryPort

__all__ = [
    "AttachHandler",
    "AttachNotReady",
    "Bitrix24Port",
    "CallPolicy",
    "CrmOp",
    "DeadLetter",
    "DirectoryPort",
    "Dispatcher",
    "DispatcherHealth",
    "DispatcherState",
    "OpKind",
    "OpenCallState",
    "Outbox",
    "OutboxRow",
    "OutboxState",
    "PolicySettings",
    "PolicyStep",
]
