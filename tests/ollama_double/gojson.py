"""Request bodies decoded the way Ollama's handlers decode them: gin's ShouldBindJSON over Go's encoding/json.

What this imitates (facts about Go, re-implemented here):

* json.Decoder.Decode reads the first JSON value and ignores whatever follows it; an empty or all-whitespace
  body is io.EOF (Ollama answers "missing request body"); syntax errors use Go's wording; NaN/Infinity are
  syntax errors.
* Object keys are matched to struct fields case-insensitively with Unicode simple folding ("STREAM",
  "\u017ftream" and "stream" are one field, "\u212aeep_alive" is keep_alive, but "\u00df" is not "ss" and the
  dotted/dotless i do not fold to "i"). Several keys for one field: each is decoded in turn, so the last
  wins, except that objects decoded into a struct or a map merge, and null leaves non-pointer fields alone.
  Keys of Go maps (options, format, tool arguments) are exact.
* A value of the wrong JSON type for a field is remembered (the first one) and decoding goes on; the
  request then fails with "json: cannot unmarshal <kind> into Go struct field <Struct>.<path> of type <T>".
  Errors raised by a type's own UnmarshalJSON (think, keep_alive, a chat message) stop decoding at once.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

WHITESPACE = " \t\n\r"  # the only whitespace Go's scanner accepts
_SYNTAX = {
    "Expecting value": "looking for beginning of value",
    "Expecting property name enclosed in double quotes": "looking for beginning of object key string",
    "Expecting ':' delimiter": "after object key",
    "Expecting ',' delimiter": "after object key:value pair",
}
GO_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "bool", dict: "object"}


class BodyError(Exception):
    """The body could not be bound; .message is Ollama's error text (always a 400)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class MissingBody(BodyError):
    def __init__(self):
        super().__init__("missing request body")


class Pairs(list):
    """A JSON object as Go's decoder walks it: (key, value) members in order, duplicates kept."""


class Num(float):
    """A JSON number with a fraction or exponent, keeping its literal (Go quotes it in some errors)."""

    def __new__(cls, literal: str):
        obj = super().__new__(cls, literal)
        obj.literal = literal
        return obj


def _no_constants(name):
    raise ValueError(name)


_DECODER = json.JSONDecoder(object_pairs_hook=Pairs, parse_float=Num, parse_constant=_no_constants)


# -- folding ------------------------------------------------------------------------------------------------


def fold(text: str) -> str:
    """Go's simple case folding, one character at a time (multi-character foldings are not simple ones)."""
    out = []
    for char in text:
        folded = char.casefold()
        if len(folded) != 1:
            folded = char.lower()
            if len(folded) != 1:
                folded = char
        out.append(folded)
    return "".join(out)


# -- quoting (Go's %q) ----------------------------------------------------------------------------------------

_QUOTE_ESCAPES = {'"': '\\"', "\\": "\\\\", "\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
                  "\t": "\\t", "\v": "\\v"}


def go_quote(text: str) -> str:
    """strconv.Quote: printable characters stay, the rest become \\x, \\u or \\U escapes."""
    out = ['"']
    for char in text:
        if char in _QUOTE_ESCAPES:
            out.append(_QUOTE_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif ord(char) < 0x80:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    out.append('"')
    return "".join(out)


def _quote_char(char: str) -> str:
    """The character in a Go syntax error: 'x', with escapes; a non-ASCII one is shown by its first byte."""
    if char == "'":
        return "'\\''"
    if char == '"':
        return "'\"'"
    if ord(char) >= 0x80:
        char = chr(char.encode("utf-8", "replace")[0])
    return "'" + go_quote(char)[1:-1] + "'"


# -- decoding -------------------------------------------------------------------------------------------------


_LITERALS = {"t": "true", "f": "false", "n": "null"}


def _container(text: str, pos: int) -> str:
    """The innermost open container ('{' or '[') at `pos`, or '' at top level."""
    stack, in_string, escaped = [], False, False
    for char in text[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            stack.append(char)
        elif char in "}]" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _syntax_error(text: str, pos: int, msg: str) -> str:
    end = len(text.rstrip(WHITESPACE))
    if pos >= end or msg.startswith("Unterminated"):
        return "unexpected EOF"
    char = text[pos]
    if msg.startswith("Invalid control character"):
        return f"invalid character {_quote_char(char)} in string literal"
    if msg.startswith(("Invalid \\escape", "Invalid \\uXXXX")):
        return f"invalid character {_quote_char(text[pos + 1] if pos + 1 < len(text) else char)} in string escape code"
    if msg == "Expecting value" and char in _LITERALS:
        word = _LITERALS[char]
        for j, want in enumerate(word):
            if pos + j >= len(text):
                return "unexpected EOF"
            if text[pos + j] != want:
                got = _quote_char(text[pos + j])
                return f"invalid character {got} in literal {word} (expecting {_quote_char(want)})"
    if msg == "Expecting value" and char == "-":
        if pos + 1 >= end:
            return "unexpected EOF"
        return f"invalid character {_quote_char(text[pos + 1])} in numeric literal"
    if msg == "Expecting ',' delimiter":
        where = _container(text, pos)
        phrase = {"[": "after array element", "{": "after object key:value pair"}.get(where, "after top-level value")
        return f"invalid character {_quote_char(char)} {phrase}"
    return f"invalid character {_quote_char(char)} {_SYNTAX.get(msg, 'looking for beginning of value')}"


def _constant_position(text: str, start: int) -> int:
    """Where the first NaN/Infinity literal (outside strings) begins."""
    in_string = escaped = False
    for i in range(start, len(text)):
        char = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "NI":
            return i
    return len(text)


def decode(raw: bytes):
    """The first JSON value of the body, objects as Pairs; raises BodyError with Go's wording."""
    text = raw.decode("utf-8", "replace")  # Go substitutes U+FFFD for invalid UTF-8 as well
    start = len(text) - len(text.lstrip(WHITESPACE))
    if start == len(text):
        raise MissingBody()
    try:
        value, _end = _DECODER.raw_decode(text, start)  # trailing bytes are never looked at
    except json.JSONDecodeError as err:
        raise BodyError(_syntax_error(text, err.pos, err.msg)) from None
    except ValueError:  # NaN, Infinity, -Infinity
        pos = _constant_position(text, start)
        if pos > 0 and text[pos - 1] == "-":
            raise BodyError(f"invalid character {_quote_char(text[pos])} in numeric literal") from None
        raise BodyError(_syntax_error(text, pos, "Expecting value")) from None
    return value


def plain(value):
    """A decoded value as Go stores it in an `any` or a map: objects become dicts (exact keys, last wins)."""
    if isinstance(value, Pairs):
        return {key: plain(item) for key, item in value}
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, Num):
        return float(value)
    return value


def kind_of(value) -> str:
    if isinstance(value, Pairs):
        return "object"
    if isinstance(value, bool):
        return "bool"
    return GO_KINDS.get(type(value), "number" if isinstance(value, (int, float)) else "value")


# -- Go durations (api.Duration, used by keep_alive) ------------------------------------------------------------

_UNITS = {"ns": 1, "us": 1_000, "\u00b5s": 1_000, "\u03bcs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
          "m": 60_000_000_000, "h": 3_600_000_000_000}
FOREVER = 2**63 - 1


def parse_duration(text: str) -> int:
    """time.ParseDuration in nanoseconds; raises ValueError with Go's message."""
    orig, rest, negative = text, text, False
    if rest[:1] in ("-", "+"):
        negative, rest = rest[0] == "-", rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise ValueError(f"time: invalid duration {go_quote(orig)}")
    total = 0.0
    while rest:
        match = re.match(r"(\d*)(?:\.(\d*))?", rest)
        whole, frac = match.group(1), match.group(2)
        if not whole and not frac:
            raise ValueError(f"time: invalid duration {go_quote(orig)}")
        rest = rest[match.end():]
        unit = re.match(r"[^\d.]*", rest).group(0)
        if not unit:
            raise ValueError(f"time: missing unit in duration {go_quote(orig)}")
        if unit not in _UNITS:
            raise ValueError(f"time: unknown unit {go_quote(unit)} in duration {go_quote(orig)}")
        rest = rest[len(unit):]
        total += float(f"{whole or 0}.{frac or 0}") * _UNITS[unit]
    if total > FOREVER:
        raise ValueError(f"time: invalid duration {go_quote(orig)}")
    return -int(total) if negative else int(total)


# -- struct schemas -------------------------------------------------------------------------------------------


class Struct:
    """A Go struct type as encoding/json sees it: JSON field name -> kind (see _decode_field)."""

    def __init__(self, go_name: str, fields: dict, custom: bool = False):
        self.go_name = go_name  # with package, e.g. "api.ChatRequest"
        self.name = go_name.rsplit(".", 1)[-1]
        self.fields = fields
        self.folded = {}
        for tag in fields:
            self.folded.setdefault(fold(tag), tag)
        self.custom = custom  # has its own UnmarshalJSON through an Alias type (api.Message)

    def field(self, key: str):
        if key in self.fields:
            return key
        return self.folded.get(fold(key))


class Ptr:
    """A pointer to a struct (*api.X): null makes it nil, an object allocates or merges."""

    def __init__(self, struct: Struct):
        self.struct = struct


class Custom:
    """A type with its own UnmarshalJSON: `decode(binder, value)` gets the decoded JSON value and returns what the
    field holds. It may call binder.type_error() (a saved error, decoding goes on), raise Abort(message) (an
    error of its own, which stops decoding) or binder.abort_under(saved) (a json type error from a nested
    json.Unmarshal, which Go's decoder re-labels with the outer struct and field path)."""

    def __init__(self, decode):
        self.decode = decode


class GoError(Exception):
    """json.Unmarshal failed; .message is Go's text, .saved the type error tuple when it was one."""

    def __init__(self, message: str, saved=None):
        super().__init__(message)
        self.message, self.saved = message, saved


class Slice:
    """A slice of structs; `go_type` is the slice's Go type name for errors."""

    def __init__(self, struct: Struct, go_type: str):
        self.struct, self.go_type = struct, go_type


_SCALARS = {"string": (str,), "bool": (bool,), "float32": (int, float), "float64": (int, float)}
_GO_TYPES = {"map": "map[string]interface {}", "map_str": "map[string]string", "[]string": "[]string",
             "[]int": "[]int", "[]image": "[]api.ImageData"}
_POINTERS = {"*bool": "bool", "*int": "int", "*string": "string", "*float64": "float64", "*float32": "float32"}
THINK_LEVELS = ("high", "medium", "low", "max")


class _Abort(Exception):
    """Decoding stopped (an UnmarshalJSON error); .error is a formatted message or a type-error tuple."""

    def __init__(self, error):
        super().__init__(error)
        self.error = error


class _Binder:
    def __init__(self):
        self.saved = None  # the first type error: (value kind, struct name, field path, Go type)
        self.path = []
        self.structs = []

    def type_error(self, value_kind: str, go_type: str):
        if self.saved is None:
            struct = self.structs[-1].name if self.structs else None
            self.saved = (value_kind, struct, list(self.path), go_type)

    def abort_under(self, saved):
        """Stop with a nested json.Unmarshal's type error, re-labelled as decodeState.addErrorContext does."""
        kind, _struct, path, go_type = saved
        outer = self.structs[-1].name if self.structs else None
        raise _Abort((kind, outer, self.path + list(path), go_type))

    # -- structs ----------------------------------------------------------------------------------------

    def struct(self, struct: Struct, value, old):
        if struct.custom:
            return self._custom(struct, value)
        if value is None:
            return old
        if not isinstance(value, Pairs):
            self.type_error(kind_of(value), struct.go_name)
            return old
        out = dict(old) if isinstance(old, dict) else {}
        self.structs.append(struct)
        try:
            for key, item in value:
                tag = struct.field(key)
                if tag is None:
                    continue  # unknown keys are ignored
                self.path.append(tag)
                out[tag] = self.field(struct.fields[tag], item, out.get(tag, _ABSENT))
                self.path.pop()
        finally:
            self.structs.pop()
        return {k: v for k, v in out.items() if v is not _ABSENT}

    def _custom(self, struct: Struct, value):
        # api.Message.UnmarshalJSON decodes into an Alias type with a fresh decoder: its first type error
        # comes back as the error of the whole request, placed under the outer struct and path.
        if value is None:
            return _ABSENT
        inner = _Binder()
        alias = Struct("api.Alias", struct.fields)
        if not isinstance(value, Pairs):
            inner.saved = (kind_of(value), None, [], alias.go_name)
            result = None
        else:
            result = inner.struct(alias, value, None)
        if isinstance(inner.saved, str):
            raise _Abort(inner.saved)
        if inner.saved is not None:
            kind, _struct, path, go_type = inner.saved
            outer = self.structs[-1].name if self.structs else None
            raise _Abort((kind, outer, self.path + path, go_type))
        if "role" in result and isinstance(result["role"], str):
            result["role"] = result["role"].lower()
        return result

    # -- fields -----------------------------------------------------------------------------------------

    def field(self, kind, value, old):
        if isinstance(kind, Custom):
            return kind.decode(self, value)
        if isinstance(kind, Struct):
            return self.struct(kind, value, old)
        if isinstance(kind, Ptr):
            if value is None:
                return None
            return self.struct(kind.struct, value, old if isinstance(old, dict) else _ABSENT)
        if isinstance(kind, Slice):
            return self._slice(kind, value, old)
        if kind in _POINTERS:
            if value is None:
                return None
            return self._scalar(_POINTERS[kind], value, old)
        if kind == "think":
            return self._think(value)
        if kind == "duration":
            return self._duration(value)
        if kind in ("any", "raw"):
            return plain(value)
        if value is None:
            return None if kind in ("map", "map_str", "[]string", "[]int", "[]image") else old
        if kind in ("map", "map_str"):
            return self._map(kind, value, old)
        if kind in ("[]string", "[]int", "[]image"):
            return self._list(kind, value, old)
        return self._scalar(kind, value, old)

    def _scalar(self, kind, value, old):
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.type_error(kind_of(value), "int")
                return old
            if isinstance(value, Num) or not -2**63 <= value < 2**63:
                self.type_error(f"number {getattr(value, 'literal', value)}", "int")
                return old
            return value
        allowed = _SCALARS[kind]
        if isinstance(value, bool) != (kind == "bool") or not isinstance(value, allowed):
            self.type_error(kind_of(value), kind)
            return old
        return float(value) if kind.startswith("float") else value

    def _map(self, kind, value, old):
        if not isinstance(value, Pairs):
            self.type_error(kind_of(value), _GO_TYPES[kind])
            return old
        out = dict(old) if isinstance(old, dict) else {}
        for key, item in value:
            if kind == "map_str":
                if item is None:
                    out[key] = ""
                elif not isinstance(item, str):
                    self.path.append(key)
                    self.type_error(kind_of(item), "string")
                    self.path.pop()
                else:
                    out[key] = item
            else:
                out[key] = plain(item)
        return out

    def _list(self, kind, value, old):
        if not isinstance(value, list):
            self.type_error(kind_of(value), _GO_TYPES[kind])
            return old
        out = []
        for item in value:
            if kind == "[]int":
                out.append(self._scalar("int", item, 0) if item is not None else 0)
            elif kind == "[]string":
                out.append(self._scalar("string", item, "") if item is not None else "")
            else:
                out.append(self._image(item))
        return out

    def _image(self, item):
        if item is None:
            return b""
        if not isinstance(item, str):
            self.type_error(kind_of(item), "api.ImageData")
            return b""
        try:
            return base64.b64decode(item.replace("\r", "").replace("\n", ""), validate=True)
        except (binascii.Error, ValueError):
            if self.saved is None:
                bad = next((i for i, c in enumerate(item) if not (c.isalnum() and c.isascii()) and c not in "+/="),
                           len(item) - len(item) % 4 if len(item) % 4 else max(len(item) - 1, 0))
                self.saved = f"illegal base64 data at input byte {bad}"
            return b""

    def _slice(self, kind: Slice, value, old):
        if value is None:
            return None
        if not isinstance(value, list):
            self.type_error(kind_of(value), kind.go_type)
            return old
        previous = old if isinstance(old, list) else []
        out = []
        for i, item in enumerate(value):
            # Go decodes into the existing element when the slice already has one: objects merge.
            base = previous[i] if i < len(previous) and not kind.struct.custom else _ABSENT
            element = self.struct(kind.struct, item, base)
            out.append({} if element in (None, _ABSENT) else element)
        return out

    def _think(self, value):
        if value is None:
            return None
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            if value not in THINK_LEVELS:
                raise _Abort(f'invalid think value: {go_quote(value)} (must be "high", "medium", "low", "max", '
                             f'true, or false)')
            return value
        raise _Abort('think must be a boolean or string ("high", "medium", "low", "max", true, or false)')

    def _duration(self, value):
        if value is None:
            return None
        if isinstance(value, (bool, list, Pairs)):
            go_type = {bool: "bool"}.get(type(value)) or ("[]interface {}" if isinstance(value, list)
                                                          else "map[string]interface {}")
            raise _Abort(f"Unsupported type: '{go_type}'")
        if isinstance(value, (int, float)):
            return FOREVER if value < 0 else int(value * 1_000_000_000)
        try:
            nanos = parse_duration(value)
        except ValueError as err:
            raise _Abort(str(err)) from None
        return FOREVER if nanos < 0 else nanos


_ABSENT = object()
Abort = _Abort


def _format(error) -> str:
    if isinstance(error, str):
        return error
    kind, struct, path, go_type = error
    if struct is not None or path:
        return f"json: cannot unmarshal {kind} into Go struct field {struct or ''}.{'.'.join(path)} of type {go_type}"
    return f"json: cannot unmarshal {kind} into Go value of type {go_type}"


def bind(raw: bytes, struct: Struct) -> dict:
    """Decode `raw` into `struct` like gin's ShouldBindJSON: a dict of the fields that were set."""
    value = decode(raw)
    binder = _Binder()
    if value is None:
        return {}
    if not isinstance(value, Pairs):
        raise BodyError(_format((kind_of(value), None, [], struct.go_name)))
    try:
        out = binder.struct(struct, value, _ABSENT)
    except _Abort as stop:
        raise BodyError(_format(stop.error)) from None
    if binder.saved is not None:
        raise BodyError(_format(binder.saved))
    return out


def unmarshal(kind, value):
    """json.Unmarshal of an already decoded JSON value (from decode(): objects as Pairs) into `kind` (a Struct, a
    Slice or a field kind); raises GoError with Go's message: an abort, else the first type error."""
    binder = _Binder()
    try:
        if isinstance(kind, Struct) and not kind.custom:
            if value is None:
                return {}
            if not isinstance(value, Pairs):
                saved = (kind_of(value), None, [], kind.go_name)
                raise GoError(_format(saved), saved)
            out = binder.struct(kind, value, _ABSENT)
        else:
            out = binder.field(kind, value, _ABSENT)
    except _Abort as stop:
        raise GoError(_format(stop.error), stop.error if isinstance(stop.error, tuple) else None) from None
    if binder.saved is not None:
        raise GoError(_format(binder.saved), binder.saved if isinstance(binder.saved, tuple) else None)
    return None if out is _ABSENT else out


def bind_with(raw: bytes, struct: Struct, empty: str = "EOF") -> dict:
    """bind() as a /v1 middleware's ShouldBindJSON answers: an empty body is io.EOF's "EOF", not Ollama's
    "missing request body" (which only the native handlers say)."""
    try:
        return bind(raw, struct)
    except MissingBody:
        raise BodyError(empty) from None


# -- the request types Ollama binds (api/types.go, openai/openai.go) ------------------------------------------

TOOL_CALL_FUNCTION = Struct("api.ToolCallFunction", {"index": "int", "name": "string", "arguments": "any"})
TOOL_CALL = Struct("api.ToolCall", {"id": "string", "function": TOOL_CALL_FUNCTION})
MESSAGE = Struct("api.Message", {"role": "string", "content": "string", "thinking": "string", "images": "[]image",
                                 "tool_calls": Slice(TOOL_CALL, "[]api.ToolCall"), "tool_name": "string",
                                 "tool_call_id": "string"}, custom=True)
TOOL_PARAMETERS = Struct("api.ToolFunctionParameters", {"type": "string", "$defs": "any", "items": "any",
                                                        "required": "[]string", "properties": "any"})
TOOL_FUNCTION = Struct("api.ToolFunction", {"name": "string", "description": "string",
                                            "parameters": TOOL_PARAMETERS})
TOOL = Struct("api.Tool", {"type": "string", "items": "any", "function": TOOL_FUNCTION})
TOOLS = Slice(TOOL, "api.Tools")

_INFERENCE = {"keep_alive": "duration", "options": "map", "think": "think", "truncate": "*bool", "shift": "*bool",
              "_debug_render_only": "bool", "logprobs": "bool", "top_logprobs": "int"}
GENERATE = Struct("api.GenerateRequest", {
    "model": "string", "prompt": "string", "suffix": "string", "system": "string", "template": "string",
    "context": "[]int", "stream": "*bool", "raw": "bool", "format": "raw", "images": "[]image", **_INFERENCE})
CHAT = Struct("api.ChatRequest", {"model": "string", "messages": Slice(MESSAGE, "[]api.Message"), "stream": "*bool",
                                  "format": "raw", "tools": TOOLS, **_INFERENCE})
EMBED = Struct("api.EmbedRequest", {"model": "string", "input": "any", "keep_alive": "duration", "truncate": "*bool",
                                    "dimensions": "int", "options": "map"})
EMBEDDING = Struct("api.EmbeddingRequest", {"model": "string", "prompt": "string", "keep_alive": "duration",
                                            "options": "map"})
SHOW = Struct("api.ShowRequest", {"model": "string", "system": "string", "template": "string", "verbose": "bool",
                                  "options": "map", "name": "string"})
PULL = Struct("api.PullRequest", {"model": "string", "insecure": "bool", "username": "string", "password": "string",
                                  "stream": "*bool", "name": "string"})
PUSH = Struct("api.PushRequest", dict(PULL.fields))
DELETE = Struct("api.DeleteRequest", {"model": "string", "name": "string"})
COPY = Struct("api.CopyRequest", {"source": "string", "destination": "string"})
CREATE = Struct("api.CreateRequest", {
    "model": "string", "stream": "*bool", "quantize": "string", "draft_quantize": "string", "from": "string",
    "remote_host": "string", "files": "map_str", "draft_files": "map_str", "adapters": "map_str",
    "template": "string", "license": "any", "system": "string", "parameters": "map",
    "messages": Slice(MESSAGE, "[]api.Message"), "renderer": "string", "parser": "string", "requires": "string",
    "info": "map", "name": "string", "quantization": "string"})

OPENAI_FUNCTION = Struct("", {"name": "string", "arguments": "string"})  # an anonymous struct in Go
OPENAI_TOOL_CALL = Struct("openai.ToolCall", {"id": "string", "index": "int", "type": "string",
                                              "function": OPENAI_FUNCTION})
OPENAI_MESSAGE = Struct("openai.Message", {"role": "string", "content": "any", "reasoning": "string",
                                           "tool_calls": Slice(OPENAI_TOOL_CALL, "[]openai.ToolCall"),
                                           "name": "string", "tool_call_id": "string"})
STREAM_OPTIONS = Struct("openai.StreamOptions", {"include_usage": "bool"})
RESPONSE_FORMAT = Struct("openai.ResponseFormat", {"type": "string",
                                                   "json_schema": Ptr(Struct("openai.JsonSchema", {"schema": "raw"}))})
V1_CHAT = Struct("openai.ChatCompletionRequest", {
    "model": "string", "messages": Slice(OPENAI_MESSAGE, "[]openai.Message"), "stream": "bool",
    "stream_options": Ptr(STREAM_OPTIONS), "max_tokens": "*int", "seed": "*int", "stop": "any",
    "temperature": "*float64", "frequency_penalty": "*float64", "presence_penalty": "*float64", "top_p": "*float64",
    "response_format": Ptr(RESPONSE_FORMAT), "tools": Slice(TOOL, "[]api.Tool"),
    "reasoning": Ptr(Struct("openai.Reasoning", {"effort": "string"})), "reasoning_effort": "*string",
    "logprobs": "*bool", "top_logprobs": "int", "_debug_render_only": "bool"})
V1_COMPLETION = Struct("openai.CompletionRequest", {
    "model": "string", "prompt": "string", "frequency_penalty": "float32", "max_tokens": "*int",
    "presence_penalty": "float32", "seed": "*int", "stop": "any", "stream": "bool",
    "stream_options": Ptr(STREAM_OPTIONS), "temperature": "*float32", "top_p": "float32", "suffix": "string",
    "logprobs": "*int", "_debug_render_only": "bool"})
V1_EMBED = Struct("openai.EmbedRequest", {"input": "any", "model": "string", "dimensions": "int",
                                          "encoding_format": "string"})

# Modelfile parameters (api.Options): key -> Go kind; other keys are ignored with a log line.
OPTION_KINDS = {**dict.fromkeys(("num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "num_ctx", "num_batch",
                                 "num_gpu", "num_thread", "draft_num_predict", "main_gpu"), "integer"),
                **dict.fromkeys(("top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty",
                                 "frequency_penalty"), "float32"),
                "use_mmap": "boolean", "stop": "array"}


def option_error(options) -> str | None:
    """api.Options.FromMap's complaint about a wrongly typed option, or None (Ollama answers it with a 500)."""
    for key, value in (options or {}).items():
        kind = OPTION_KINDS.get(key)
        if kind is None or value is None:
            continue
        if kind == "integer" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"option {go_quote(key)} must be of type integer"
        if kind == "float32" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"option {go_quote(key)} must be of type float32"
        if kind == "boolean" and not isinstance(value, bool):
            return f"option {go_quote(key)} must be of type boolean"
        if kind == "array":
            if not isinstance(value, list):
                return f"option {go_quote(key)} must be of type array"
            if not all(isinstance(item, str) for item in value):
                return f"option {go_quote(key)} must be of an array of strings"
    return None
