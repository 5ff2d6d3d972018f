"""Settings: a TOML file overridden by `B24BRIDGE_*` environment variables (`__` nests: `B24BRIDGE_AMI__HOST`).

Every section is a pydantic model with its defaults here, in one place. Unknown keys are errors, so a typo fails at
start-up with a message naming the key (`load_settings` turns pydantic's report into one line per problem).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bridge.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/b24-bridge/config.toml")
ENV_PREFIX = "B24BRIDGE_"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PbxSettings(Section):
    kind: Literal["asterisk", "avaya", "cisco"] = "asterisk"
    # Names this PBX in MQTT topics and multi-site routing.
    id: str = Field(default="pbx1", pattern=r"^[A-Za-z0-9_.-]{1,64}$")


class AmiSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=5038, ge=1, le=65535)
    username: str = "bridge"
    secret: SecretStr = SecretStr("")
    auth: Literal["md5", "plain"] = "md5"
    tls: bool = False
    # Event classes asked for at login. `dialplan` brings VarSet/Newexten (FROM_DID, MIXMONITOR_FILENAME, B24_CALL_ID).
    events: str = "call,agent,dialplan,system"
    connect_timeout: float = Field(default=5.0, gt=0)
    action_timeout: float = Field(default=10.0, gt=0)
    ping_interval: float = Field(default=15.0, gt=0)
    ping_timeout: float = Field(default=5.0, gt=0)
    reconnect_min: float = Field(default=1.0, gt=0)
    reconnect_max: float = Field(default=30.0, gt=0)
    # Frames that are not valid UTF-8 are decoded with this codec (legacy trunks send CP1251 caller names).
    encoding_fallback: str = "cp1251"
    # A second login with `Events: off` for Originate and other actions, so the event session never waits on them.
    action_session: bool = True
    # Events held while the tracker is busy; past this the oldest are dropped (and counted) so the reader keeps reading.
    queue_size: int = Field(default=100_000, ge=100)

    @model_validator(mode="after")
    def _bounds(self) -> AmiSettings:
        if self.reconnect_min > self.reconnect_max:
            raise ValueError("ami.reconnect_min must not exceed ami.reconnect_max")
        try:
            "x".encode(self.encoding_fallback)
        except LookupError as exc:
            raise ValueError(f"ami.encoding_fallback: unknown codec {self.encoding_fallback!r}") from exc
        return self


class AsteriskSettings(Section):
    """How calls are classified (defaults work for plain Asterisk and FreePBX); see README "Classification"."""

    # A channel whose Newchannel context is one of these came in from a trunk (FreePBX: from-pstn, from-trunk...).
    trunk_contexts: tuple[str, ...] = ("from-pstn", "from-trunk", "from-pstn-e164-us", "from-pstn-toheader",
                                       "from-provider", "from-external", "from-sip-external", "from-did-direct")
    # Endpoint names (the part of `PJSIP/<endpoint>-0000001a`) that are trunks; regular expressions, full match.
    trunk_endpoints: tuple[str, ...] = ("provider", "fpbx-trunk", "trunk.*")
    # An endpoint that matches this is an agent's phone; the extension is the first group (or the whole name).
    agent_endpoint_pattern: str = r"(\d{2,6})"
    # Contexts of Local channels that stand for an agent (queue members, ring groups, originates).
    local_agent_contexts: tuple[str, ...] = ("from-queue", "from-internal", "ext-local", "originate-skipvm",
                                             "from-internal-xfer", "default", "agents")
    # Channel variable carrying the Bitrix24 CALL_ID of a click-to-call.
    crm_call_id_variable: str = "B24_CALL_ID"


class OriginateSettings(Section):
    """Templates for click-to-call originates (FreePBX defaults); `{extension}` is the agent's extension."""

    channel: str = "Local/{extension}@from-internal"
    context: str = "from-internal"
    caller_id: str = '"{number}" <{extension}>'
    timeout_seconds: int = Field(default=30, ge=5, le=300)
    # Digits prepended to the customer's number before it is dialled (e.g. an outbound route prefix such as "8").
    dial_prefix: str = Field(default="", pattern=r"^[0-9*#]*$")
    # Strip the leading "+" of E.164 numbers (most dial plans expect digits only).
    strip_plus: bool = True


class Bitrix24Settings(Section):
    # Inbound webhook: https://PORTAL/rest/<user_id>/<secret>/ (the secret makes the whole URL a secret).
    webhook_url: SecretStr | None = None
    # OAuth local app (when no webhook_url).
    client_id: str | None = None
    client_secret: SecretStr | None = None
    portal_url: str | None = None
    oauth_server: str = "https://oauth.bitrix.info/"
    # Expected portal identity of incoming events (checked when set).
    member_id: str | None = None
    domain: str | None = None
    requests_per_second: float = Field(default=2.0, gt=0)
    burst: int = Field(default=50, ge=1)
    request_timeout: float = Field(default=30.0, gt=0)
    # Used when an extension has no Bitrix24 user (and as the fixed responsible user for missed calls).
    default_user_id: int | None = Field(default=None, ge=1)
    crm_create: bool = True
    crm_source: str | None = None
    show_cards: bool = True
    missed_call_user: Literal["first_rung", "fixed", "owner"] = "first_rung"
    transfer_records: Literal["single", "per_agent"] = "single"
    sync_internal_calls: bool = False
    directory_refresh_seconds: float = Field(default=900.0, gt=0)
    batching: bool = True


class HttpSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    events_path: str = "/bitrix24/events"
    application_token: SecretStr | None = None
    # The public URL Bitrix24 posts events to (bound with event.bind on install).
    public_url: str | None = None
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # Requests per second allowed per source address (burst of 4x).
    rate_limit_per_ip: float = Field(default=20.0, gt=0)
    # Poll event.offline.get instead of receiving POSTs (for PBXs without a public address); 0 = off.
    offline_poll_seconds: float = Field(default=0.0, ge=0)
    callback_target: str | None = None


class StorageSettings(Section):
    path: Path = Path("/var/lib/b24-bridge/bridge.sqlite3")
    keep_done_hours: float = Field(default=72.0, gt=0)


class RecordingsSettings(Section):
    enabled: bool = True
    root: Path = Path("/var/spool/asterisk/monitor")
    mode: Literal["upload", "url", "base64"] = "upload"
    settle_seconds: float = Field(default=2.0, ge=0)
    give_up_seconds: float = Field(default=600.0, gt=0)
    transcode_mp3: bool = False
    mp3_bitrate: str = Field(default="32k", pattern=r"^\d{1,3}k$")
    url_ttl_seconds: int = Field(default=3600, ge=60)
    signing_key: SecretStr | None = None
    base64_max_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)


class MqttSettings(Section):
    host: str | None = None
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False
    ca_file: Path | None = None
    prefix: str = Field(default="b24bridge", pattern=r"^[A-Za-z0-9_/.-]{1,128}$")
    # Multi-site: which PBX hosts which extensions, e.g. {"pbx2" = ["200-299", "3001"]}.
    sites: dict[str, tuple[str, ...]] = Field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.host)


class LogSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True, case_sensitive=False
    )

    pbx: PbxSettings = PbxSettings()
    ami: AmiSettings = AmiSettings()
    asterisk: AsteriskSettings = AsteriskSettings()
    originate: OriginateSettings = OriginateSettings()
    bitrix24: Bitrix24Settings = Bitrix24Settings()
    http: HttpSettings = HttpSettings()
    storage: StorageSettings = StorageSettings()
    recordings: RecordingsSettings = RecordingsSettings()
    mqtt: MqttSettings = MqttSettings()
    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs (see load_settings); the environment wins over it.
        return env_settings, init_settings


def load_settings(path: Path | None) -> Settings:
    """Read the TOML file (if any) and the environment; raise ConfigError with one line per problem."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} not found: create it (see config/b24-bridge.example.toml) "
                              "or pass --config PATH", key="--config") from exc
        except PermissionError as exc:
            raise ConfigError(f"config file {path} is not readable by this user: fix its permissions",
                              key="--config") from exc
        except IsADirectoryError as exc:
            raise ConfigError(f"config path {path} is a directory: pass the TOML file", key="--config") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}", key="--config") from exc
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc), key=_first_key(exc)) from exc


def _first_key(exc: ValidationError) -> str | None:
    errors = exc.errors()
    return ".".join(str(p) for p in errors[0]["loc"]) if errors else None


def describe_validation_error(exc: ValidationError) -> str:
    """One readable line per problem: the dotted key, what is wrong, and how to fix it."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        kind = err["type"]
        if kind == "extra_forbidden":
            lines.append(f"{key}: unknown setting (typo?); see config/b24-bridge.example.toml for valid keys")
        elif kind == "missing":
            lines.append(f"{key}: required setting is missing; add it to the config file or the environment")
        else:
            given = err.get("input")
            shown = "<hidden>" if _looks_secret(key) else repr(given)
            lines.append(f"{key}: {err['msg']} (got {shown}); fix the value in the config file or environment")
    return "; ".join(lines)


def _looks_secret(key: str) -> bool:
    return any(word in key for word in ("secret", "token", "password", "webhook", "signing_key"))


def check_required(settings: Settings) -> list[str]:
    """Problems that only matter to `run`: what must be set for a real PBX and portal."""
    problems: list[str] = []
    if settings.pbx.kind == "asterisk" and not settings.ami.secret.get_secret_value():
        problems.append("ami.secret: missing; set the AMI user's secret from manager.conf "
                        "(or B24BRIDGE_AMI__SECRET)")
    b24 = settings.bitrix24
    if b24.webhook_url is None and not (b24.client_id and b24.client_secret):
        problems.append("bitrix24.webhook_url: missing; set the inbound webhook URL, or bitrix24.client_id and "
                        "bitrix24.client_secret for the local app")
    if b24.webhook_url is not None and not b24.webhook_url.get_secret_value().startswith(("https://", "http://")):
        problems.append("bitrix24.webhook_url: must be an https:// URL like https://PORTAL/rest/1/SECRET/")
    return problems
