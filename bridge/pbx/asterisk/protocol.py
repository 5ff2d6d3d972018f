"""AMI wire format: bytes in, `AmiMessage`s out; actions out as bytes. No I/O here.

Framing is done on bytes (a frame ends with CRLF CRLF), each complete frame is decoded once (UTF-8, else a
configurable fallback such as cp1251), so a character split across TCP reads is never lost. The buffer is scanned
only from where the previous scan stopped, so a large frame arriving in small chunks costs linear time.
Bad input never raises: it is skipped and described in `problems` for the caller to log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

TERMINATOR = b"\r\n\r\n"
BANNER_PREFIX = "Asterisk Call Manager/"
FOLLOWS_END = b"--END COMMAND--\r\n\r\n"
DEFAULT_MAX_FRAME = 4 * 1024 * 1024
_ESCAPED_KEYS = ("CallerIDName", "ConnectedLineName")
_C_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "?": "?", "a": "\a", "b": "\b",
              "f": "\f", "v": "\v"}


@dataclass(slots=True)
class AmiMessage:
    """One AMI frame. `headers` keeps the first value of each key in arrival order; repeats go to `repeats`."""

    headers: dict[str, str]
    repeats: dict[str, list[str]] | None = None
    # Raw CLI text of a 13-era `Response: Follows` block.
    output: list[str] = field(default_factory=list)

    @property
    def event(self) -> str | None:
        return self.headers.get("Event")

    @property
    def response(self) -> str | None:
        return self.headers.get("Response")

    @property
    def action_id(self) -> str | None:
        return self.headers.get("ActionID")

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.headers.get(key, default)

    def get_all(self, key: str) -> list[str]:
        """Every value of a key that may repeat (`ChanVariable`, `Variable`, `Output`), in order."""
        first = self.headers.get(key)
        if first is None:
            return []
        more = self.repeats.get(key) if self.repeats else None
        return [first, *more] if more else [first]

    def variables(self, key: str = "ChanVariable") -> dict[str, str]:
        """`NAME=value` lines of a repeated key as a dict (later lines win)."""
        out: dict[str, str] = {}
        for item in self.get_all(key):
            name, sep, value = item.partition("=")
            if sep:
                out[name] = value
        return out


@dataclass(slots=True)
class ParserStats:
    frames: int = 0
    skipped_frames: int = 0
    malformed_lines: int = 0
    fallback_decodes: int = 0
    oversized_frames: int = 0
    filtered_frames: int = 0  # dropped undecoded because the consumer's `skip` said it never reads them


class AmiParser:
    """Incremental AMI framer and decoder for one connection.

    `skip(frame)`, when given, sees each complete frame's raw bytes (without the terminator) before it is decoded;
    True drops it unparsed. Decoding is most of the cost, and a busy PBX sends many frames nobody reads.

    `command_output`: frame Asterisk 13's `Response: Follows` blocks (raw CLI text up to `--END COMMAND--`, which may
    contain blank lines). Off unless the caller sends `Command` actions: otherwise one such frame without its end
    marker would hold back every later event until the frame limit.
    """

    def __init__(self, *, fallback_encoding: str = "cp1251", max_frame_bytes: int = DEFAULT_MAX_FRAME,
                 skip: Callable[[bytes], bool] | None = None, command_output: bool = False) -> None:
        self._fallback = fallback_encoding
        self._command_output = command_output
        self._max_frame = max_frame_bytes
        self._skip = skip
        self._buf = bytearray()
        self._scan_from = 0
        self._discarding = False
        self.banner: str | None = None
        self.stats = ParserStats()
        self.problems: list[str] = []

    def reset(self) -> None:
        """Forget a half-received frame (after the link dropped)."""
        self._buf.clear()
        self._scan_from = 0
        self._discarding = False

    def feed(self, data: bytes) -> list[AmiMessage]:
        buf = self._buf
        buf.extend(data)
        messages: list[AmiMessage] = []
        start = 0
        scan = self._scan_from
        while True:
            end = buf.find(TERMINATOR, scan)
            if end < 0:
                break
            frame_end = end + 4
            if (self._command_output and buf.startswith(b"Response: Follows", start)
                    and buf.find(b"--END COMMAND--", start, frame_end) < 0):
                follows_end = buf.find(FOLLOWS_END, start)
                if follows_end < 0:
                    scan = max(start, len(buf) - len(FOLLOWS_END))
                    break
                frame_end = follows_end + len(FOLLOWS_END)
            if self._discarding:
                self._discarding = False
            else:
                raw = bytes(buf[start:frame_end - 4])
                if self._skip is not None and self._skip(raw):
                    self.stats.filtered_frames += 1
                else:
                    message = self._parse(raw)
                    if message is not None:
                        messages.append(message)
            start = scan = frame_end
        if start:
            del buf[:start]
        # Next time only look at bytes that could complete a terminator.
        self._scan_from = max(0, len(buf) - 3)
        if len(buf) > self._max_frame:
            self.stats.oversized_frames += 1
            self.problems.append(f"frame over {self._max_frame} bytes skipped")
            # Keep the last 3 bytes: they may be the start of the terminator that ends the skipped frame.
            del buf[:-3]
            self._scan_from = 0
            self._discarding = True
        return messages

    def _parse(self, raw: bytes) -> AmiMessage | None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode(self._fallback, errors="replace")
            self.stats.fallback_decodes += 1
        headers: dict[str, str] = {}
        repeats: dict[str, list[str]] | None = None
        output: list[str] = []
        for line in text.split("\r\n"):
            key, sep, value = line.partition(": ")
            if not sep:
                if line.endswith(":") and " " not in line:
                    key, value = line[:-1], ""
                elif line.startswith(BANNER_PREFIX):
                    self.banner = line
                    continue
                elif not line:
                    continue
                elif "Response" in headers:
                    output.append(line)
                    continue
                else:
                    self.stats.malformed_lines += 1
                    continue
            if key in headers:
                if repeats is None:
                    repeats = {}
                repeats.setdefault(key, []).append(value)
            else:
                headers[key] = value
        if "Event" not in headers and "Response" not in headers:
            if headers or output:
                self.stats.skipped_frames += 1
                self.problems.append(f"frame without Event or Response skipped ({len(raw)} bytes)")
            return None
        for name_key in _ESCAPED_KEYS:
            name = headers.get(name_key)
            if name is not None and "\\" in name:
                headers[name_key] = c_unescape(name)
        self.stats.frames += 1
        return AmiMessage(headers, repeats, output)

    def drain_problems(self) -> list[str]:
        problems, self.problems = self.problems, []
        return problems


def c_unescape(value: str) -> str:
    """Undo Asterisk's `ast_escape_c` on caller names (`\\"` -> `"`, `\\n` -> newline)."""
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if ch == "\\" and i + 1 < n:
            out.append(_C_ESCAPES.get(value[i + 1], value[i + 1]))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


class UnsafeActionError(ValueError):
    """A header key or value would break the AMI framing (CR/LF) or is empty where it must not be."""


def encode_action(action: str, headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
    """Serialize an action. Refuses CR, LF and NUL anywhere, so no caller can inject extra headers or actions."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    lines = [f"Action: {_safe(action, 'Action')}"]
    for key, value in items:
        if not key or ":" in key or " " in key:
            raise UnsafeActionError(f"invalid AMI header name {key!r}")
        lines.append(f"{_safe(key, key)}: {_safe(value, key)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def _safe(value: str, key: str) -> str:
    if "\r" in value or "\n" in value or "\x00" in value:
        raise UnsafeActionError(f"AMI header {key} contains a line break or NUL")
    return value
