"""Settings: a TOML file overridden by `B24BRIDGE_*` environment variables (`__` nests: `B24BRIDGE_AMI__HOST`).

Every section is a pydantic model with its defaults here, in one place. Unknown keys are errors, so a typo fails at
start-up with a message naming the key (`load_settings` turns pydantic's report into one line per problem).
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bridge.bus.sites import validate_sites
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
    """How the call tracker reads channels (defaults work for plain Asterisk and FreePBX); see README "Classification".

    A channel is, in this order: ignored (a helper technology), a Local half, a trunk (technology, endpoint name or
    the context it was created in), an agent's phone (`endpoint_extensions`, then `agent_endpoint_pattern`), or
    "other" (counted as neither party).
    """

    # A channel whose Newchannel context is one of these came in from a trunk (FreePBX: from-pstn, from-trunk...).
    # Outbound trunk legs also start in their endpoint's context, so this catches them too.
    trunk_contexts: tuple[str, ...] = ("from-pstn", "from-trunk", "from-pstn-e164-us", "from-pstn-toheader",
                                       "from-provider", "from-external", "from-sip-external", "from-did-direct")
    # Endpoint names (the part of `PJSIP/<endpoint>-0000001a`) that are trunks; regular expressions, full match.
    trunk_endpoints: tuple[str, ...] = ("provider", "fpbx-trunk", "trunk.*")
    # Channel technologies whose every channel is a trunk (DAHDI lines are PSTN circuits on almost every system).
    trunk_technologies: tuple[str, ...] = ("DAHDI",)
    # Helper channels that are never a party of a call (announcements, recorders, SIP MESSAGE, spies): skipped.
    ignored_technologies: tuple[str, ...] = ("Message", "Announcer", "CBAnn", "Recorder", "Snoop")
    # An endpoint that matches this is an agent's phone; the extension is the first group (or the whole name).
    # The same pattern decides whether the `<exten>` of `Local/<exten>@<context>` is an agent's extension.
    agent_endpoint_pattern: str = r"(\d{2,6})"
    # Endpoints whose names are not extensions (MAC addresses, names): endpoint -> extension. Checked first.
    endpoint_extensions: dict[str, str] = Field(default_factory=dict)
    # Contexts of Local channels that stand for an agent (queue members, ring groups, originates).
    local_agent_contexts: tuple[str, ...] = ("from-queue", "from-internal", "ext-local", "originate-skipvm",
                                             "from-internal-xfer", "default", "agents")
    # What a customer's phone number looks like (full match). An agent's call to such a number that never reached a
    # trunk is still an outbound call (failed), not an internal one.
    external_number_pattern: str = r"\+?[0-9]{7,20}"
    # Channel variable carrying the Bitrix24 CALL_ID of a click-to-call (`__` inherited copies are read too).
    crm_call_id_variable: str = "B24_CALL_ID"
    # Channel variable carrying the DID of an inbound call when the trunk delivers exten `s` (FreePBX: FROM_DID).
    did_variable: str = "FROM_DID"

    @field_validator("agent_endpoint_pattern", "external_number_pattern")
    @classmethod
    def _pattern_compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value

    @field_validator("trunk_endpoints")
    @classmethod
    def _patterns_compile(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                re.compile(item)
            except re.error as exc:
                raise ValueError(f"{item!r} is not a valid regular expression: {exc}") from exc
        return value


_TEMPLATE_PLACEHOLDER = re.compile(r"\{(?:extension|number)\}")


def template_problem(template: str) -> str | None:
    """Why `template` cannot be an originate template, or None. Only `{extension}` and `{number}` may appear."""
    if any(ch in template for ch in "\r\n\x00"):
        return "line breaks and NUL are not allowed"
    rest = _TEMPLATE_PLACEHOLDER.sub("", template)
    if "{" in rest or "}" in rest:
        return "only the placeholders {extension} and {number} are allowed (no other braces)"
    return None


class OriginateSettings(Section):
    """Templates for click-to-call originates (FreePBX defaults); `{extension}` is the agent's extension."""

    channel: str = "Local/{extension}@from-internal"
    context: str = Field(default="from-internal", pattern=r"^[A-Za-z0-9_.-]{1,80}$")
    caller_id: str = '"{number}" <{extension}>'
    timeout_seconds: int = Field(default=30, ge=5, le=300)
    # Digits prepended to the customer's number before it is dialled (e.g. an outbound route prefix such as "8").
    dial_prefix: str = Field(default="", pattern=r"^[0-9*#]*$")
    # Strip the leading "+" of E.164 numbers (most dial plans expect digits only).
    strip_plus: bool = True

    @model_validator(mode="after")
    def _templates(self) -> OriginateSettings:
        for key in ("channel", "caller_id"):
            problem = template_problem(getattr(self, key))
            if problem is not None:
                raise ValueError(f"originate.{key}: {problem}")
        if "{extension}" not in self.channel:
            raise ValueError("originate.channel: must contain {extension} (the agent's phone is rung first)")
        return self


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
    # Longest wait between retries while the portal is unreachable or failing: after an outage the bridge is back
    # within this time (the portal's own retry hints are honoured up to it).
    retry_max_seconds: float = Field(default=15.0, ge=1.0, le=600.0)
    # OAuth tokens of the local app (JSON, mode 0600) and the extension directory cache; None = next to storage.path.
    token_path: Path | None = None
    directory_cache: Path | None = None


class HttpSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    events_path: str = Field(default="/bitrix24/events", pattern=r"^/[A-Za-z0-9/_.-]{0,200}$")
    application_token: SecretStr | None = None
    # The public URL Bitrix24 posts events to (bound with event.bind on install).
    public_url: str | None = None
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # Requests per second allowed per source address (burst of 4x).
    rate_limit_per_ip: float = Field(default=20.0, gt=0)
    # Poll event.offline.get instead of receiving POSTs (for PBXs without a public address); 0 = off.
    offline_poll_seconds: float = Field(default=0.0, ge=0)
    # Extension or queue that a CRM "call me back" request rings first (else the responsible user's extension).
    callback_target: str | None = Field(default=None, pattern=r"^[0-9A-Za-z_*#-]{1,32}$")
    # Reverse proxies (addresses or networks) whose X-Forwarded-For names the real client for rate limiting.
    trusted_proxies: tuple[str, ...] = ()
    # How long a stop waits for requests and event work in flight before cutting them off.
    shutdown_timeout_seconds: float = Field(default=5.0, gt=0)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an absolute URL such as https://bridge.example.com/bitrix24/events")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IP address or network") from exc
        return value


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
    # Multi-site: which PBX hosts which extensions, e.g. {"pbx2" = ["200-299", "3001"]} (inclusive ranges or exact
    # extensions; sites must not overlap). Click-to-calls for another site's extensions go to its bridge over MQTT.
    sites: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    # Client id at the broker; default "<prefix>-<pbx.id>". Two running bridges must never share one.
    client_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    keepalive_seconds: int = Field(default=30, ge=5, le=3600)
    reconnect_min: float = Field(default=0.5, gt=0)
    reconnect_max: float = Field(default=30.0, gt=0)
    # CallEvents waiting for the broker; beyond this, and whenever the broker is down, they are dropped and counted.
    event_queue_size: int = Field(default=10_000, ge=10)
    # Click-to-calls for other sites waiting for delivery; one more fails at once (the CRM call is failed).
    command_queue_size: int = Field(default=100, ge=1)
    # A click-to-call the other site has not confirmed within this is failed, and never sent again; the command
    # carries this expiry, so the other site never dials it later (keep the sites' clocks in sync with NTP).
    command_deadline_seconds: float = Field(default=30.0, gt=0)
    # Unconfirmed click-to-calls are sent again this often (the receiver drops repeats by command id).
    command_retry_seconds: float = Field(default=3.0, gt=0)
    # How long a received command id is remembered, so that repeats are dropped.
    dedup_seconds: float = Field(default=600.0, gt=0)

    @property
    def enabled(self) -> bool:
        return bool(self.host)

    @field_validator("sites")
    @classmethod
    def _sites(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        validate_sites(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MqttSettings:
        if self.reconnect_min > self.reconnect_max:
            raise ValueError("mqtt.reconnect_min must not exceed mqtt.reconnect_max")
        if self.ca_file is not None and not self.tls:
            raise ValueError("mqtt.ca_file is set but mqtt.tls is false: set tls = true (or remove ca_file)")
        if self.password is not None and not self.username:
            raise ValueError("mqtt.password is set without mqtt.username: set the username too")
        return self


class AvayaSettings(Section):
    """Avaya Aura AES, DMCC XML interface (docs/avaya.md): where AES is, who we are, which devices to watch."""

    host: str = "127.0.0.1"
    # 4721 = plain TCP, 4722 = TLS (AES defaults).
    port: int = Field(default=4721, ge=1, le=65535)
    tls: bool = False
    # Verify the AES certificate (needs ca_file when AES uses its own CA). Turn off only in a lab.
    tls_verify: bool = True
    ca_file: Path | None = None
    # The CTI user created in AES User Management (with DMCC access in the security database).
    username: str = "bridge"
    password: SecretStr = SecretStr("")
    application_id: str = Field(default="b24-bridge", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # ECMA-323 ed3 private version: priv5 = AES 6.1, priv6 = 6.2, priv7 = 6.3 (later AES accept the same family).
    protocol_version: str = Field(default="http://www.ecma-international.org/standards/ecma-323/csta/ed3/priv6",
                                  pattern=r"^http://www\.ecma-international\.org/standards/ecma-323/csta/[a-z0-9/]+$")
    # The switch connection name configured on AES, and optionally the CM address it uses (GetDeviceId).
    switch_name: str = Field(default="CM", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    switch_ip: str | None = None
    # Which DMCC service turns an extension into a device ID.
    device_id_service: Literal["GetDeviceId", "GetThirdPartyDeviceId"] = "GetDeviceId"
    # Agents' stations (monitored, and the calling device of click-to-call) and VDNs to watch for queue abandons.
    stations: tuple[str, ...] = ()
    vdns: tuple[str, ...] = ()
    # Numbers longer than this (or starting with "+", or trunk ids such as T123#4) are external parties.
    internal_max_digits: int = Field(default=6, ge=2, le=15)
    # Digits prepended to the customer's number for MakeCall (ARS access code such as "9"); stripped again from
    # outbound numbers seen in events.
    dial_prefix: str = Field(default="", pattern=r"^[0-9*#]*$")
    strip_plus: bool = True
    # MakeCall autoOriginate: "prompt" rings the agent's phone first; "doNotPrompt" goes off-hook on its speaker.
    auto_originate: Literal["prompt", "doNotPrompt"] = "prompt"
    # Session timer asked from AES, and how long AES keeps the session (and its monitors) after the link drops.
    session_duration: int = Field(default=180, ge=30, le=3600)
    session_cleanup_delay: int = Field(default=60, ge=0, le=3600)
    # ResetApplicationSessionTimer period; must be well below the granted session duration.
    keepalive_interval: float = Field(default=60.0, gt=0)
    connect_timeout: float = Field(default=5.0, gt=0)
    request_timeout: float = Field(default=10.0, gt=0)
    reconnect_min: float = Field(default=1.0, gt=0)
    reconnect_max: float = Field(default=30.0, gt=0)
    # A call diverted to an unknown destination is given up (ended) after this long without a monitored party.
    orphan_grace_seconds: float = Field(default=5.0, ge=0)

    @field_validator("stations", "vdns")
    @classmethod
    def _extensions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for ext in value:
            if not ext.isdigit() or not 1 <= len(ext) <= 15:
                raise ValueError(f"extension {ext!r} must be 1-15 digits")
        if len(set(value)) != len(value):
            raise ValueError("extensions must not repeat")
        return value

    @model_validator(mode="after")
    def _bounds(self) -> AvayaSettings:
        if self.reconnect_min > self.reconnect_max:
            raise ValueError("avaya.reconnect_min must not exceed avaya.reconnect_max")
        if self.keepalive_interval >= self.session_duration:
            raise ValueError("avaya.keepalive_interval must be shorter than avaya.session_duration")
        if set(self.stations) & set(self.vdns):
            raise ValueError("avaya.stations and avaya.vdns must not share extensions")
        return self


class CiscoAgentSettings(Section):
    """One Finesse agent the bridge watches: its Finesse user id, the extension it signs in on, its password."""

    user_id: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    extension: str = Field(pattern=r"^[0-9]{1,15}$")
    # Needed for the agent's own notification session (auth_mode "agent") and always for click-to-call.
    password: SecretStr | None = None


class CiscoSettings(Section):
    """Cisco Finesse (UCCE/UCCX agent desktop API): REST + XMPP notifications (docs/cisco.md)."""

    # Base URL of the Finesse REST API (8445 = HTTPS on Finesse 11.5+ / 12.x; 443 on older releases).
    finesse_url: str = Field(default="https://finesse.example.com:8445", pattern=r"^https?://[^\s/]+(:\d+)?/?$")
    # "agent": one notification session per agent with the agent's password (the guide's auto-subscribed node).
    # "admin": one session with admin_user that subscribes explicitly to every agent's Dialogs node (unverified on a
    # real Finesse: its rights may not allow it); click-to-call still needs each agent's password.
    auth_mode: Literal["agent", "admin"] = "agent"
    admin_user: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    admin_password: SecretStr | None = None
    agents: tuple[CiscoAgentSettings, ...] = ()
    # XMPP notification service; host defaults to the finesse_url host, domain to SystemInfo's xmppDomain.
    xmpp_host: str | None = None
    xmpp_port: int = Field(default=5222, ge=1, le=65535)
    xmpp_domain: str | None = None
    pubsub_domain: str | None = None
    xmpp_resource: str = Field(default="b24bridge", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # "starttls" on 5222 (default), "direct" TLS on 5223, "off" only on a trusted lab network.
    tls: Literal["starttls", "direct", "off"] = "starttls"
    verify_tls: bool = True
    ca_file: Path | None = None
    request_timeout: float = Field(default=10.0, gt=0)
    connect_timeout: float = Field(default=10.0, gt=0)
    ping_interval: float = Field(default=30.0, gt=0)
    ping_timeout: float = Field(default=10.0, gt=0)
    reconnect_min: float = Field(default=1.0, gt=0)
    reconnect_max: float = Field(default=60.0, gt=0)
    # A call no watched agent sees any more (transfer to an unwatched phone, requeue) ends after this long.
    orphan_grace_seconds: float = Field(default=30.0, ge=0)
    # Call variable carrying the Bitrix24 CALL_ID on MAKE_CALL (UCCE only; UCCX answers 400), e.g. "callVariable10".
    crm_call_id_variable: str | None = Field(default=None,
                                             pattern=r"^(callVariable([1-9]|10)|user\.[A-Za-z0-9_.]{1,40})$")
    # Digits prepended to the customer's number for MAKE_CALL (e.g. CUCM's outside-line "9").
    dial_prefix: str = Field(default="", pattern=r"^[0-9*#]*$")
    strip_plus: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> CiscoSettings:
        if self.reconnect_min > self.reconnect_max:
            raise ValueError("cisco.reconnect_min must not exceed cisco.reconnect_max")
        if self.auth_mode == "admin" and not (self.admin_user and self.admin_password):
            raise ValueError("cisco.auth_mode = 'admin' needs cisco.admin_user and cisco.admin_password")
        for attr in ("user_id", "extension"):
            values = [getattr(agent, attr) for agent in self.agents]
            if len(set(values)) != len(values):
                raise ValueError(f"cisco.agents: {attr} values must not repeat")
        return self


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
    avaya: AvayaSettings = AvayaSettings()
    cisco: CiscoSettings = CiscoSettings()
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
