"""POST /v1/audio/transcriptions (OpenAI's transcription API) as Ollama serves it.

Facts from ollama/ollama (re-implemented, not copied): server/routes.go (the route: TranscriptionMiddleware then
ChatHandler, no cloudPassthroughMiddleware, so no zstd bodies either), middleware/openai.go (TranscriptionMiddleware,
TranscriptionWriter, BaseWriter.writeError), openai/openai.go (FromTranscriptionRequest, NewError), and Go's
net/http (Request.ParseMultipartForm, FormValue, FormFile; mime/multipart) and gin (Context.Stream).

* The body is parsed by Request.ParseMultipartForm(25 MiB): its error becomes a 400 "failed to parse multipart
  form: <error>" ("request Content-Type isn't multipart/form-data", "no multipart boundary param in
  Content-Type", "multipart: NextPart: EOF", "unexpected EOF", a bad query string's "invalid URL escape ..."),
  then "model is required" (FormValue: the URL query's value wins over the form's), "file is required: http: no
  such file" (no file part named "file"; a plain field of that name is no file) and "audio file is empty". These
  are c.AbortWithStatusJSON in OpenAI's shape: `application/json; charset=utf-8`, no newline. language and prompt
  only extend the system prompt; temperature and response_format's other values are ignored.
* The request becomes a streamed /api/chat request (a fixed transcription system prompt, the audio as the user
  message's image, temperature 0), so the model checks and the script's faults are those of /api/chat; its
  errors come through BaseWriter.writeError: OpenAI's shape, `application/json`, with a newline. ChatHandler
  does not check for an audio capability. A cloud model goes to ollama.com straight from ChatHandler, which a
  signed-out server cannot do: a 401 in OpenAI's shape, message "unauthorized".
* TranscriptionWriter writes nothing until the chat is done, then the trimmed text: `{"text": ...}` and a
  newline (json.Encoder), or the bare text for response_format "text" (every other format, verbose_json, srt and
  vtt included, gets the JSON). But gin's c.Stream flushes after every chat chunk, and the first flush sends the
  headers: status 200, chunked, with the Content-Type ChatHandler's streamResponse set, `application/x-ndjson`.
  The writer's own Content-Type (`application/json`, or `text/plain` for "text") only reaches the client when the
  whole chat is one chunk. An error line in the middle of the chat leaves the body empty.
* The double's model transcribes deterministically: "Transcript of N bytes of audio." (see wire.plan_reply).
"""

from __future__ import annotations

import email.message
import email.utils
import re

from .gojson import go_quote
from .native import NDJSON_TYPE, PLAIN_JSON, plan
from .responses_layer import native_chunks
from .transport import ApiError
from .wire import RUNNER_ERROR, TRANSCRIBE_SYSTEM, dumps, last_user_text, prompt_count

MAX_MEMORY = 25 << 20
NOT_MULTIPART = "request Content-Type isn't multipart/form-data"
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+/[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HEADER_KEY = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class FormError(Exception):
    """ParseMultipartForm failed; .message is Go's error text."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _unescape(text: str) -> str:
    """url.QueryUnescape: '+' is a space, %XX a byte; a bad escape is an error."""
    out, i, raw = bytearray(), 0, text.encode()
    while i < len(raw):
        char = raw[i:i + 1]
        if char == b"%":
            code = raw[i + 1:i + 3]
            if len(code) < 2 or not all(c in b"0123456789abcdefABCDEF" for c in code):
                bad = raw[i:i + 3].decode("utf-8", "replace")
                raise FormError(f"invalid URL escape {go_quote(bad)}")
            out.append(int(code, 16))
            i += 3
            continue
        out += b" " if char == b"+" else char
        i += 1
    return out.decode("utf-8", "replace")


def parse_query(query: str) -> tuple:
    """url.ParseQuery: (values, first error message or None); a bad pair is skipped, parsing goes on."""
    values, error = {}, None
    for pair in query.split("&"):
        if ";" in pair:
            error = error or "invalid semicolon separator in query"
            continue
        if not pair:
            continue
        key, _, value = pair.partition("=")
        try:
            key, value = _unescape(key), _unescape(value)
        except FormError as err:
            error = error or err.message
            continue
        values.setdefault(key, []).append(value)
    return values, error


def _media_type(value: str):
    """mime.ParseMediaType, roughly: (lower-cased type, params) or None when it does not parse."""
    head = value.split(";", 1)[0].strip().lower()
    if not _TOKEN.match(head):
        return None
    msg = email.message.Message()
    msg["content-type"] = value
    params = {k.lower(): email.utils.collapse_rfc2231_value(v) for k, v in (msg.get_params() or [])[1:]}
    return head, params


def _disposition(value: str) -> tuple:
    """(disposition, params) of a part's Content-Disposition ("", {} when it does not parse)."""
    head = value.split(";", 1)[0].strip().lower()
    if not re.match(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$", head):
        return "", {}
    msg = email.message.Message()
    msg["content-disposition"] = value
    params = msg.get_params(header="content-disposition") or []
    return head, {k.lower(): email.utils.collapse_rfc2231_value(v) for k, v in params[1:]}


class _Reader:
    """mime/multipart's Reader over a whole body, as ReadForm walks it."""

    def __init__(self, body: bytes, boundary: str):
        self.body, self.pos = body, 0
        self.dash = b"--" + boundary.encode()
        self.nl = b"\r\n"
        self.parts_read = 0

    def _line(self) -> tuple:
        end = self.body.find(b"\n", self.pos)
        if end < 0:
            line, self.pos = self.body[self.pos:], len(self.body)
            return line, True
        line, self.pos = self.body[self.pos:end + 1], end + 1
        return line, False

    def _rest_is_newline(self, rest: bytes) -> bool:
        return rest.lstrip(b" \t") == self.nl

    def _delimiter(self, line: bytes) -> bool:
        if not line.startswith(self.dash):
            return False
        rest = line[len(self.dash):]
        if self.parts_read == 0 and rest.lstrip(b" \t") == b"\n":
            self.nl = b"\n"
            return True
        return self._rest_is_newline(rest)

    def _final(self, line: bytes) -> bool:
        if not line.startswith(self.dash + b"--"):
            return False
        rest = line[len(self.dash) + 2:].lstrip(b" \t")
        return rest in (b"", self.nl) or (self.parts_read == 0 and rest == b"\n")

    def parts(self):
        """Yield (headers dict with lower-cased keys, content bytes) per part; FormError on Go's errors."""
        expect_new = False
        while True:
            line, eof = self._line()
            if eof and self._final(line):
                return
            if eof:
                raise FormError("multipart: NextPart: EOF")
            if self._delimiter(line):
                self.parts_read += 1
                headers = self._headers()
                if headers is None:
                    return  # io.EOF inside the headers: ReadForm takes it for the end of the form
                yield headers, self._content()
                expect_new = False
                continue
            if self._final(line):
                return
            if expect_new:
                raise FormError(f"multipart: expecting a new Part; got line {go_quote(line.decode('latin-1'))}")
            if self.parts_read == 0:
                continue  # the preamble
            if line == self.nl:
                expect_new = True
                continue
            raise FormError(f"multipart: unexpected line in Next(): {go_quote(line.decode('latin-1'))}")

    def _headers(self):
        headers, first = {}, True
        while True:
            line, eof = self._line()
            if eof and not line:
                return None
            text = line.rstrip(b"\r\n").decode("utf-8", "replace")
            if eof:
                return None
            if not text:
                return headers
            if first and text[:1] in (" ", "\t"):
                raise FormError(f"malformed MIME header initial line: {text}")
            first = False
            if text[:1] in (" ", "\t") and headers:
                key = list(headers)[-1]
                headers[key] += " " + text.strip()
                continue
            key, colon, value = text.partition(":")
            if not colon or not _HEADER_KEY.match(key):
                raise FormError(f"malformed MIME header line: {text}")
            headers.setdefault(key.lower(), value.strip(" \t"))

    def _after_prefix(self, at: int, prefix_len: int) -> bool:
        rest = self.body[at + prefix_len:at + prefix_len + 2]
        return rest == b"" or rest[:1] in (b" ", b"\t", b"\r", b"\n") or rest == b"--"

    def _content(self) -> bytes:
        start = self.pos
        if self.body.startswith(self.dash, start) and self._after_prefix(start, len(self.dash)):
            return b""  # an empty part: the delimiter right after the headers
        marker = self.nl + self.dash
        search = start
        while True:
            at = self.body.find(marker, search)
            if at < 0:
                raise FormError("unexpected EOF")
            if self._after_prefix(at, len(marker)):
                self.pos = at + len(self.nl)
                return self.body[start:at]
            search = at + 1


def parse_form(content_type: str | None, body: bytes, query: str) -> tuple:
    """Request.ParseMultipartForm then the form's values: ({name: [str]} query values first, {name: [bytes]})."""
    ctype = content_type or "application/octet-stream"
    media = _media_type(ctype)
    values = {}
    post_error = None
    if media is not None and media[0] == "application/x-www-form-urlencoded":
        posted, post_error = parse_query(body.decode("utf-8", "replace"))
        values = {k: list(v) for k, v in posted.items()}
    from_query, query_error = parse_query(query)
    for key, items in from_query.items():
        values.setdefault(key, []).extend(items)
    if post_error or query_error:
        raise FormError(post_error or query_error)
    if not content_type:
        raise FormError(NOT_MULTIPART)
    if media is None or media[0] != "multipart/form-data":
        raise FormError(NOT_MULTIPART)
    boundary = media[1].get("boundary")
    if boundary is None:
        raise FormError("no multipart boundary param in Content-Type")
    files = {}
    for headers, content in _Reader(body, boundary).parts():
        disposition, params = _disposition(headers.get("content-disposition", ""))
        name = params.get("name", "") if disposition == "form-data" else ""
        if not name:
            continue
        if params.get("filename"):
            files.setdefault(name, []).append(content)
        else:
            values.setdefault(name, []).append(content.decode("utf-8", "replace"))
    return values, files


def from_transcription_request(model: str, audio: bytes, language: str, prompt: str) -> dict:
    """openai.FromTranscriptionRequest."""
    system = TRANSCRIBE_SYSTEM
    if language:
        system += f" The audio is in {language}."
    if prompt:
        system += f" Context: {prompt}"
    return {"model": model, "stream": True, "options": {"temperature": 0},
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": "What exact words are spoken in this audio?",
                          "images": [audio]}]}


class TranscriptionRoutes:
    """The /v1/audio/transcriptions handler; mixed into server.Handler (errors: OpenAIRoutes.openai_error)."""

    def v1_transcriptions(self):
        query = self.path.split("?", 1)[1] if "?" in self.path else ""
        try:
            values, files = parse_form(self.headers.get("Content-Type"), self.raw, query)
        except FormError as err:
            raise ApiError(400, "failed to parse multipart form: " + err.message) from None

        def value(key: str) -> str:
            return (values.get(key) or [""])[0]

        model_name = value("model")
        if not model_name:
            raise ApiError(400, "model is required")
        if not files.get("file"):
            raise ApiError(400, "file is required: http: no such file")
        audio = files["file"][0]
        if not audio:
            raise ApiError(400, "audio file is empty")
        native = from_transcription_request(model_name, audio, value("language"), value("prompt"))
        text_format = value("response_format") == "text"
        self._v1_writer = True
        try:
            model, _unload = self.check_generation(native, chat=True)
        except ApiError as err:
            if err.status == 401 and err.extra.get("native"):
                raise ApiError(401, err.message) from None  # ChatHandler's cloud proxy, through the writer
            raise
        script = self.script
        messages = native["messages"]
        prompt = last_user_text(messages)
        n_prompt = sum(prompt_count(str(m.get("content", ""))) for m in messages)
        reply = plan(model, native, script, prompt, True, messages)
        chunks = native_chunks(reply, n_prompt)
        text = "".join(t for t, _ in reply.tokens).strip()
        if text_format:
            answer, answer_type = text.encode(), "text/plain"
        else:
            answer, answer_type = dumps({"text": text}) + b"\n", PLAIN_JSON
        rec = self.double._open_stream(self.route, model_name)
        self.prelude(script, rec)
        with self.serving(model):
            self._transcribe(rec, chunks, answer, answer_type)

    def _transcribe(self, rec, chunks: list, answer: bytes, answer_type: str):
        """The chat chunks go by silently (c.Stream flushes the headers after the first); the answer comes with
        the last one."""
        script = self.script
        fault = script["fault"] if script["fault"] in ("drop", "malformed", "error_line") else None
        fault_at = min(script["fault_after"], len(chunks) - 1)
        self._chunked = self.request_version != "HTTP/1.0"
        self._started = False
        for i, chunk in enumerate(chunks):
            if i:
                self.wait(script["delay"], rec)
            if fault and i == fault_at:
                if fault == "drop":
                    self.drop(rec)
                if fault == "error_line" and not self._started:
                    self.close_stream(rec)
                    raise ApiError(500, RUNNER_ERROR)  # streamResponse's c.JSON, through the writer
                if fault == "malformed":
                    self._stream_ctype = NDJSON_TYPE if self._started or not chunk.get("done") else answer_type
                    self._flush([(b'{"text": tru', i)], rec)
                break  # error_line after the first flush: an empty chunk, then the end of the stream
            if not self._started:
                self._stream_ctype = answer_type if chunk.get("done") else NDJSON_TYPE
                self._start(rec)
            if chunk.get("done"):
                self._flush([(answer, i)], rec)
            elif rec is not None:
                rec["lines_sent"] += 1
        self._write_raw(b"0\r\n\r\n" if self._chunked else b"", rec)
        self.close_stream(rec, completed=True)
        if not self._chunked:
            self.close_connection = True
