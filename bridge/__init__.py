"""b24-pbx-bridge: follows every call on a company PBX and records it in Bitrix24 CRM telephony."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("b24-pbx-bridge")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
