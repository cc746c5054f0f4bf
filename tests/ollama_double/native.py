"""Ollama's native /api routes for the double, in the order of checks server/routes.go makes."""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import re

from . import gojson as go
from .gojson import go_quote
from .transport import ApiError, ndjson
from .wire import (
    MODEL_RECOMMENDATIONS,
    MODELS_DIR,
    RUNNER_ERROR,
    VERSION,
    RefError,
    canonical,
    context_ids,
    display_shortest,
    dumps,
    embed_vector,
    embedding_length,
    full_name,
    last_user_text,
    layer_digests,
    make_model,
    name_key,
    parse_name,
    parse_ref,
    plan_reply,
    prompt_count,
    ref_base,
    show_payload,
    signin_url,
    stats,
    tags_entry,
    timestamp,
    token_logprobs,
)

NDJSON_TYPE = "application/x-ndjson"
PLAIN_JSON = "application/json"  # what Ollama sends for errors raised inside a stream and for stream:false pulls
BAD_NDJSON = b'{"response": tru\n'
ERROR_NDJSON = dumps({"error": RUNNER_ERROR}) + b"\n"
NO_FAULTS = {"tokens": None, "thinking": None, "first_delay": 0.0, "delay": 0.0, "fault": None, "fault_after": 0}
FILLER = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
DIGEST = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")


def filler(n: int) -> str:
    """n bytes of plain ASCII text (nothing JSON or Go would escape)."""
    return (FILLER * (n // len(FILLER) + 1))[:n]


class Padded(dict):
    """A stream item to be padded (at send time, after created_at is stamped) to exactly `target` bytes."""

    def __init__(self, item: dict, target: int):
        super().__init__(item)
        self.target = target


def pad_text(item: dict, extra: str) -> dict:
    """Append `extra` to the text an item carries (response/thinking or message.content/thinking)."""
    item = copy.deepcopy(dict(item))
    holder = item.get("message", item)
    key = "content" if "message" in item else "response"
    if not holder.get(key) and holder.get("thinking"):
        key = "thinking"
    holder[key] = (holder.get(key) or "") + extra
    return item


def encode_line(item) -> bytes:
    """ndjson(), padding Padded items to their target size."""
    line = ndjson(item)
    if isinstance(item, Padded) and len(line) < item.target:
        stamped = {**item, "created_at": item.get("created_at") or _stamp_of(line)}
        line = ndjson(pad_text(stamped, filler(item.target - len(line))))
    return line


def _stamp_of(line: bytes) -> str:
    match = re.search(rb'"created_at":"([^"]*)"', line)
    return match.group(1).decode() if match else timestamp()


def valid_path(path: str) -> bool:
    """Go's fs.ValidPath: slash-separated, relative, no '.', '..' or empty elements ('.' alone is fine)."""
    if path == ".":
        return True
    return bool(path) and all(part not in ("", ".", "..") for part in path.split("/"))


class NativeRoutes:
    """Handlers for /, /api/*; mixed into server.Handler together with Transport."""

    # -- model lookup -------------------------------------------------------------------------------------

    def lookup(self, parts):
        """The catalogue entry whose name matches `parts` case-insensitively, or None."""
        if parts is None:
            return None
        wanted = name_key(parts)
        for model in self.double.models:
            own = parse_name(model["name"])
            if own is not None and name_key(own) == wanted:
                return model
        return None

    def find_model(self, name, embed: bool = False) -> dict:
        """The catalogue entry for `name`, or Ollama's 404 (the wording of /api/embed when `embed`)."""
        model = self.lookup(parse_name(str(name or "").strip()))
        if model is None:
            shown = "" if name is None else str(name)
            message = f"model {go_quote(shown)} not found, try pulling it first" if embed else \
                f"model '{shown}' not found"
            raise ApiError(404, message)
        return model

    def cloud_unauthorized(self):
        """What a server that is not signed in to ollama.com answers for anything it would proxy there."""
        raise ApiError(401, "unauthorized", extra={"signin_url": signin_url(), "native": True})

    def resolve(self, name: str, required_status: int, required_message: str):
        """parse_ref with writeModelRefParseError's answers; returns the (parts, model or None) pair."""
        try:
            parts, source = parse_ref(name)
        except RefError as err:
            if err.kind == "conflict":
                raise ApiError(400, err.message) from None
            if err.kind == "invalid":
                raise ApiError(400, "invalid model name") from None
            raise ApiError(required_status, required_message) from None
        if source == "cloud":
            self.cloud_unauthorized()
        return parts, self.lookup(parts)

    # -- catalogue routes ---------------------------------------------------------------------------------

    def api_root(self):
        self.send_body(200, b"Ollama is running", "text/plain; charset=utf-8")

    def _slow_meta(self):
        if self.script["fault"] == "slow_version":  # a health check against a stalled server
            self.wait(self.script["first_delay"])

    def api_version(self):
        self._slow_meta()
        self.send_json({"version": VERSION})

    def api_status(self):
        self.send_json({"cloud": {"disabled": False, "source": "none"}})

    def api_tags(self):
        self._slow_meta()
        self.send_json({"models": [tags_entry(m) for m in self.double.models]})

    def api_ps(self):
        self.send_json(self.double._ps_body())  # see OllamaDouble.set_loaded / loaded

    @contextlib.contextmanager
    def serving(self, model: dict, keep_alive=None):
        """The scheduler handed out a runner: `model` is loaded (for keep_alive ns; None: the default 5m),
        and with keep_alive 0 unloaded again once the request is over, whatever way it ends."""
        self.double._load(model, keep_alive)
        try:
            yield
        finally:
            if keep_alive == 0:
                self.double._unload(model)

    def api_show(self):
        req = self.bind(go.SHOW)
        name = req.get("model") or req.get("name")
        if not name:
            raise ApiError(400, "model is required")
        parts, model = self.resolve(name, 400, "model is required")
        if model is None:
            raise ApiError(404, f"model '{display_shortest(parts)}' not found")
        body = show_payload(model, bool(req.get("verbose")), self.script["verbose_show_bytes"])
        if req.get("system"):
            body = _insert_after(body, "template" if "template" in body else "parameters", "system", req["system"])
        if (self.headers.get("User-Agent") or "").startswith("GitHubCopilotChat/"):
            body["model_info"]["general.basename"] = name
        self.send_json(body)

    def api_recommendations(self):
        self.send_json({"recommendations": copy.deepcopy(MODEL_RECOMMENDATIONS)})

    # -- generation ---------------------------------------------------------------------------------------

    def api_generate(self):
        self._generation(chat=False)

    def api_chat(self):
        self._generation(chat=True)

    def check_generation(self, req: dict, chat: bool, relax_thinking: bool = False):
        """Every refusal GenerateHandler/ChatHandler makes before scheduling; returns (model, unload).

        `relax_thinking`: the Anthropic middleware's "relax_thinking" flag: thinking asked of a model that
        cannot think is dropped (req["think"] becomes None) instead of refused.
        """
        top = req.get("top_logprobs", 0)
        if not 0 <= top <= 20:
            raise ApiError(400, "top_logprobs must be between 0 and 20")
        name = req.get("model", "")
        if chat:
            parts, model = self.resolve(name, 400, "model is required")
        else:
            parts, model = self.resolve(name, 404, f"model '{name}' not found")
        if model is None:
            raise ApiError(404, f"model '{name}' not found")
        empty = not req.get("messages") if chat else not req.get("prompt")
        if empty and req.get("keep_alive") == 0:
            return model, True
        if not chat and req.get("raw") and (req.get("template") or req.get("system") or req.get("context")):
            raise ApiError(400, "raw mode does not support template, system, or context")
        caps = model["capabilities"]
        think = req.get("think")
        if "thinking" not in caps and (think is True or isinstance(think, str)):
            if not relax_thinking:
                raise ApiError(400, f"{go_quote(name)} does not support thinking")
            req["think"] = None
        wanted = ["completion"] + (["tools"] if chat and req.get("tools") else []) + \
            (["insert"] if not chat and req.get("suffix") else [])
        missing = [cap for cap in wanted if cap not in caps]
        if "completion" in missing:
            raise ApiError(400, f"{go_quote(name)} does not support {'chat' if chat else 'generate'}")
        if missing:
            own = parse_name(model["name"]) or parts
            raise ApiError(400, f"{full_name(own)} does not support {chr(10).join(missing)}")
        problem = go.option_error(req.get("options"))
        if problem:
            raise ApiError(500, problem)
        return model, False

    def _generation(self, chat: bool):
        req = self.bind(go.CHAT if chat else go.GENERATE)
        model, unload = self.check_generation(req, chat)
        name = req.get("model", "")
        if unload:
            self.double._unload(model)
            return self.send_json({**_piece(chat, name, created_at=timestamp()), "done": True, "done_reason": "unload"})
        keep_alive = req.get("keep_alive")
        script = self.script
        stream = req.get("stream") is not False  # absent (or null) means stream
        messages = req.get("messages") or []
        if chat:
            prompt = last_user_text(messages)
            n_prompt = sum(prompt_count(str(m.get("content", ""))) for m in messages)
        else:
            prompt = req.get("prompt") or ""
            n_prompt = prompt_count(prompt)
        if not (messages if chat else prompt):
            # Load-only request: one object even when streaming was asked for.
            self.prelude(script)
            with self.serving(model, keep_alive):
                return self.send_json({**_piece(chat, name, created_at=timestamp()), "done": True,
                                       "done_reason": "load"})
        reply = plan(model, req, script, prompt, chat, messages)
        final = _final(chat, name, reply, n_prompt, script, req, prompt)
        items = [_piece(chat, name, thinking=t, logprobs=lp) for t, lp in reply.thinking]
        items += [_piece(chat, name, text=t, logprobs=lp) for t, lp in reply.tokens]
        items += [_piece(chat, name, calls=reply.calls)] if reply.calls else []
        target = script["big_line_bytes"]
        if stream:
            if target:
                first = next((i for i, it in enumerate(items) if _carries_text(it)), None)
                if first is not None:
                    items[first] = Padded(items[first], target)
            rec = self.double._open_stream(self.route, name)
            self.prelude(script, rec)
            early = (500, dumps({"error": RUNNER_ERROR}), PLAIN_JSON)
            with self.serving(model, keep_alive):
                return self.stream(rec, [[it] for it in items + [final]], NDJSON_TYPE, encode_line, BAD_NDJSON,
                                   ERROR_NDJSON, early)
        self.prelude(script)
        whole = _whole(chat, name, reply, final)
        body = dumps(whole)
        if target and len(body) < target:
            body = dumps(pad_text(whole, filler(target - len(body))))
        with self.serving(model, keep_alive):
            self.finish_unstreamed(script, len(items) + 1, body, BAD_NDJSON.rstrip())

    # -- embeddings -----------------------------------------------------------------------------------------

    def api_embed(self):
        req = self.bind(go.EMBED)
        name = req.get("model", "")
        _parts, model = self.resolve(name, 404, f"model '{name}' not found")
        raw = req.get("input")
        if isinstance(raw, str):
            texts = [raw] if raw else []
        elif isinstance(raw, list):
            if not all(isinstance(t, str) for t in raw):
                raise ApiError(400, "invalid input type")
            texts = raw
        elif raw is None:
            texts = []
        else:
            raise ApiError(400, "invalid input type")
        if model is None:
            raise ApiError(404, f"model {go_quote(name)} not found, try pulling it first")
        problem = go.option_error(req.get("options"))
        if problem:
            raise ApiError(500, problem)
        with self.serving(model, req.get("keep_alive")):
            self._embed(name, model, req, texts)

    def _embed(self, name: str, model: dict, req: dict, texts: list):
        if not texts:  # "" or [] only loads the model
            return self.send_json({"model": name, "embeddings": []})
        limit = 512 if "embedding" in model["capabilities"] else 131072
        if req.get("truncate") is False and any(len(t.split()) + 2 > limit for t in texts):
            raise ApiError(400, "the input length exceeds the context length")
        dims, length = req.get("dimensions", 0), embedding_length(model)
        vectors = [embed_vector(t, dims if 0 < dims < length else length) for t in texts]
        timing = stats(sum(len(t.split()) for t in texts), 0, NO_FAULTS)
        self.send_json({"model": name, "embeddings": vectors, "total_duration": timing["total_duration"],
                        "load_duration": timing["load_duration"], "prompt_eval_count": timing["prompt_eval_count"]})

    def api_embeddings(self):
        req = self.bind(go.EMBEDDING)
        name = req.get("model", "")
        _parts, model = self.resolve(name, 400, "model is required")
        if model is None:
            raise ApiError(404, f"model {go_quote(name)} not found, try pulling it first")
        problem = go.option_error(req.get("options"))
        if problem:
            raise ApiError(500, problem)
        prompt = req.get("prompt") or ""
        # The legacy endpoint returns an unnormalised float64 vector.
        with self.serving(model, req.get("keep_alive")):
            vector = embed_vector(prompt, embedding_length(model)) if prompt else []
            self.send_json({"embedding": [x * 7.5 for x in vector]})

    # -- model management -----------------------------------------------------------------------------------

    def _pull_name(self, name: str):
        """parseNormalizePullModelRef: a ':cloud' reference becomes the legacy '-cloud' or ':cloud' tag."""
        try:
            parts, source = parse_ref(name)
        except RefError as err:
            return None, err
        if source == "cloud":
            base = ref_base(name)
            normal = base + ("-cloud" if base.rfind(":") > base.rfind("/") else ":cloud")
            parts = parse_name(normal) or parts
        return parts, None

    def api_pull(self):
        req = self.bind(go.PULL)
        name = req.get("model") or req.get("name") or ""
        parts, err = self._pull_name(name)
        if err is not None:
            raise ApiError(400, err.message if err.kind == "conflict" else "invalid model name")
        short = display_shortest(parts)
        if req.get("stream") is False:
            self._install(short)
            return self.send_body(200, dumps({"status": "success"}), PLAIN_JSON)
        items = [{"status": "pulling manifest"}]
        for i, total in enumerate((2019377376, 1481)):
            digest = hashlib.sha256(f"{canonical(short)}#{i}".encode()).hexdigest()
            head = {"status": "pulling " + digest[:12], "digest": "sha256:" + digest, "total": total}
            items += [head, {**head, "completed": total // 3}, {**head, "completed": total}]
        items += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]
        # The script's pacing and mid-stream faults apply to the progress lines as to tokens.
        rec = self.double._open_stream(self.route, name)
        self.stream(rec, [[it] for it in items], NDJSON_TYPE, ndjson, BAD_NDJSON, ERROR_NDJSON)
        if self.script["fault"] is None:  # a pull that failed installs nothing
            self._install(short)

    def _install(self, name, like: dict | None = None):
        if self.lookup(parse_name(name)) is None:
            spec = {"name": canonical(name)}
            if like is not None:
                spec.update(details=copy.deepcopy(like["details"]), capabilities=list(like["capabilities"]),
                            size=like["size"])
            self.double.models.insert(0, make_model(spec))  # newest first, as tags sorts

    def api_push(self):
        req = self.bind(go.PUSH)
        name = req.get("model") or req.get("name")
        if not name:
            raise ApiError(400, "model is required")
        parts = parse_name(name)
        items = [{"status": "retrieving manifest"}]
        if self.lookup(parts) is None:
            items.append({"status": "couldn't retrieve manifest"})
            where = "/".join(parts[:3] + (parts[3],)) if parts else ""
            error = f"open {MODELS_DIR}/manifests/{where}: no such file or directory" if parts else \
                "file does not exist"
        else:
            error = "unauthorized: access denied"  # the registry refuses a key that is not signed in
        self._progress(name, items, error, stream=req.get("stream") is not False)

    def _progress(self, name: str, items: list, error: str | None, status: int = 500, on_success=None,
                  stream: bool = True):
        """Stream progress lines (ending in an error line when `error`), or answer them as waitForStream does.

        An error before the first line gets a real status (400 for bad requests, else 500) with
        Content-Type application/json, as streamResponse sends it when nothing was written yet.
        """
        if error and (not items or not stream):
            return self.send_json({"error": error}, status, PLAIN_JSON)
        if not stream:
            if on_success:
                on_success()
            return self.send_json(items[-1], 200, PLAIN_JSON)
        rec = self.double._open_stream(self.route, name)
        groups = [[it] for it in items] + ([[{"error": error}]] if error else [])
        self.stream(rec, groups, NDJSON_TYPE, ndjson, BAD_NDJSON, ERROR_NDJSON)
        if not error and self.script["fault"] is None and on_success:
            on_success()

    def api_create(self):
        req = self.bind(go.CREATE)
        progress = functools.partial(self._progress, stream=req.get("stream") is not False)
        for table in ("files", "draft_files"):
            for path, digest in (req.get(table) or {}).items():
                if not valid_path(path):
                    raise ApiError(400, "file path must be relative")
                if not digest:
                    raise ApiError(400, "invalid digest format")
        if req.get("draft_quantize") and not req.get("draft_files"):
            raise ApiError(400, "--draft-quantize requires a DRAFT model")
        if any(not digest for digest in (req.get("adapters") or {}).values()):
            raise ApiError(400, "invalid digest format")
        name = req.get("model") or req.get("name") or ""
        parts = parse_name(name)
        if parts is None:
            raise ApiError(400, "invalid model name")
        short = display_shortest(parts)
        new_layers = []
        for key in ("template", "system", "license", "parameters", "messages"):
            if req.get(key):
                blob = hashlib.sha256(dumps(req[key])).hexdigest()
                new_layers.append({"status": f"creating new layer sha256:{blob}"})
        finish = [{"status": "writing manifest"}, {"status": "success"}]
        if req.get("from"):
            try:
                from_parts, source = parse_ref(req["from"])
            except RefError:
                return progress(name, [], "invalid model name", 400)
            if source == "cloud":
                return progress(name, new_layers + finish, None, on_success=lambda: self._install(short))
            base = self.lookup(from_parts)
            if base is None:
                return progress(name, [{"status": "pulling manifest"}],
                                      "pull model manifest: file does not exist")
            items = [{"status": f"using existing layer {d}"} for d in layer_digests(base)] + new_layers + finish
            return progress(name, items, None, on_success=lambda: self._install(short, base))
        files = req.get("files")
        if files is not None:
            if not files:
                return progress(name, [], "no files provided to convert", 400)
            kinds = {"gguf" if p.endswith(".gguf") else "safetensors" if p.endswith(".safetensors") else "?"
                     for p in files}
            if kinds != {"gguf"} and kinds != {"safetensors"}:
                return progress(name, [], "unknown type", 400)
            missing = [d for d in files.values() if self.double._blob_key(d) not in self.double.blobs]
            if missing:
                path = f"{MODELS_DIR}/blobs/{missing[0].replace(':', '-')}"
                return progress(name, [], f"open {path}: no such file or directory")
            head = [{"status": "parsing GGUF"}] if kinds == {"gguf"} else [{"status": "converting model"}]
            items = head + [{"status": f"using existing layer {d}"} for d in files.values()] + new_layers + finish
            return progress(name, items, None, on_success=lambda: self._install(short))
        return progress(name, [], "neither 'from' or 'files' was specified", 400)

    def api_delete(self):
        req = self.bind(go.DELETE)
        name = req.get("model") or req.get("name") or ""
        parts, err = self._pull_name(name)
        if err is not None:
            invalid = f"name {go_quote(name)} is invalid"
            raise ApiError(400, invalid if err.kind == "invalid" else err.message)
        model = self.lookup(parts)
        if model is None:
            raise ApiError(404, f"model '{name}' not found")
        self.double.models.remove(model)
        self.send_body(200, b"", None)

    def api_copy(self):
        req = self.bind(go.COPY)
        source, destination = req.get("source", ""), req.get("destination", "")
        src = parse_name(source)
        if src is None:
            raise ApiError(400, f"source {go_quote(source)} is invalid")
        dst = parse_name(destination)
        if dst is None:
            raise ApiError(400, f"destination {go_quote(destination)} is invalid")
        model = self.lookup(src)
        if model is None:
            raise ApiError(404, f"model {go_quote(source)} not found")
        existing = self.lookup(dst)
        if existing is not None and existing is not model:
            self.double.models.remove(existing)
        if existing is not model:
            copied = copy.deepcopy(model)
            copied.update(name=display_shortest(dst), model=display_shortest(dst), modified_at=timestamp(local=True))
            self.double.models.insert(0, copied)
        self.send_body(200, b"", None)

    # -- blobs --------------------------------------------------------------------------------------------

    def api_blob_head(self):
        digest = self.params["digest"]
        if not DIGEST.match(digest):
            raise ApiError(400, "invalid digest format")
        if self.double._blob_key(digest) not in self.double.blobs:
            raise ApiError(404, f"blob {go_quote(digest)} not found")
        self.send_body(200, b"", None)

    def api_blob_post(self):
        digest = self.params["digest"]
        if not DIGEST.match(digest):
            raise ApiError(400, "invalid digest format")
        if self.double._blob_key(digest) in self.double.blobs:
            return self.send_body(200, b"", None)
        actual = "sha256:" + hashlib.sha256(self.raw).hexdigest()
        self.double.blobs[self.double._blob_key(actual)] = len(self.raw)  # stored under what it really is
        if actual != digest:
            raise ApiError(400, f"digest mismatch, expected {go_quote(digest)}, got {go_quote(actual)}")
        self.send_body(201, b"", None)

    # -- ollama.com account and cloud routes (this server is not signed in) ------------------------------

    def api_me(self):
        self.cloud_unauthorized()

    def api_signout(self):
        raise ApiError(401, "you are not currently signed in")

    def api_web(self):
        if not self.raw.strip():
            raise ApiError(400, "missing request body")
        self.cloud_unauthorized()



# -- building generate/chat objects ----------------------------------------------------------------------------


class Reply:
    """What one generation says: (text, logprobs or None) pairs for thinking and answer, and tool calls."""

    def __init__(self, thinking, tokens, calls, done_reason="stop"):
        self.thinking, self.tokens, self.calls, self.done_reason = thinking, tokens, calls, done_reason

    @property
    def eval_count(self) -> int:
        return len(self.thinking) + len(self.tokens) + len(self.calls or [])


def plan(model, req, script, prompt, chat, messages) -> Reply:
    """plan_reply plus num_predict (done_reason "length") and logprobs."""
    thinking, tokens, calls = plan_reply(model, req, script, prompt, chat, messages)
    reason = "stop"
    limit = (req.get("options") or {}).get("num_predict")
    if isinstance(limit, (int, float)) and not isinstance(limit, bool) and limit >= 0:
        limit = int(limit)
        if len(thinking) + len(tokens) > limit:
            keep = min(len(thinking), limit)
            thinking, tokens, calls, reason = thinking[:keep], tokens[:limit - keep], None, "length"
    top = req.get("top_logprobs", 0) if req.get("logprobs") else 0

    def with_logprobs(pieces):
        return [(p, [token_logprobs(p, top)] if req.get("logprobs") else None) for p in pieces]

    return Reply(with_logprobs(thinking), with_logprobs(tokens), calls, reason)


def _carries_text(item: dict) -> bool:
    holder = item.get("message", item)
    return bool(holder.get("content") or holder.get("response") or holder.get("thinking"))


def _piece(chat, name, text="", thinking=None, calls=None, created_at=None, logprobs=None) -> dict:
    """One generate/chat object in Go's field order (done is added by the caller or here as false)."""
    if chat:
        message = {"role": "assistant", "content": text}
        if thinking is not None:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = calls
        out = {"model": name, "created_at": created_at, "message": message, "done": False}
        if logprobs:
            out["logprobs"] = logprobs
        return out
    out = {"model": name, "created_at": created_at, "response": text}
    if thinking is not None:
        out["thinking"] = thinking
    out["done"] = False
    if logprobs:
        out["logprobs"] = logprobs
    return out


def _final(chat, name, reply: Reply, n_prompt, script, req, prompt) -> dict:
    final = {**_piece(chat, name), "done": True, "done_reason": reply.done_reason}
    if not chat and not req.get("raw"):
        final["context"] = context_ids(prompt + " " + "".join(t for t, _ in reply.tokens))
    final.update(stats(n_prompt, reply.eval_count, script))
    return final


def _whole(chat, name, reply: Reply, final: dict) -> dict:
    """The stream:false answer: the final object with all text, thinking, tool calls and logprobs."""
    text = "".join(t for t, _ in reply.tokens)
    thinking = "".join(t for t, _ in reply.thinking) or None
    logprobs = [lp for _, lps in reply.thinking + reply.tokens if lps for lp in lps]
    metrics = {k: v for k, v in final.items() if k not in ("model", "created_at", "message", "response", "done")}
    if chat:
        message = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        if reply.calls:
            message["tool_calls"] = reply.calls
        out = {"model": name, "created_at": timestamp(), "message": message, "done": True,
               "done_reason": metrics.pop("done_reason")}
        if logprobs:
            out["logprobs"] = logprobs
        out.update(metrics)
        return out
    out = {"model": name, "created_at": timestamp(), "response": text}
    if thinking:
        out["thinking"] = thinking
    out.update({"done": True, **metrics})
    if logprobs:
        out["logprobs"] = logprobs
    return out


def _insert_after(body: dict, after: str, key: str, value) -> dict:
    out = {}
    for k, v in body.items():
        out[k] = v
        if k == after:
            out[key] = value
    if key not in out:
        out[key] = value
    return out
