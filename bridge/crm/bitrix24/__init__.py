"""Bitrix24 REST: the client (webhook or OAuth app), its leaky bucket, and the extension directory."""

from bridge.crm.bitrix24.auth import TokenAuth, Tokens, TokenStore
from bridge.crm.bitrix24.bucket import LeakyBucket
from bridge.crm.bitrix24.client import BatchResult, Bitrix24Client, ClientState
from bridge.crm.bitrix24.directory import Directory, DirectoryUser
from bridge.crm.bitrix24.installer import AppInstaller

__all__ = [
    "AppInstaller",
    "BatchResult",
    "Bitrix24Client",
    "ClientState",
    "Directory",
    "DirectoryUser",
    "LeakyBucket",
    "TokenAuth",
    "TokenStore",
    "Tokens",
]
