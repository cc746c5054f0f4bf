"""Ollama's native /api routes for the double."""

from __future__ import annotations

import hashlib

from .transport import ApiError, ndjson
from .wire import (RUNNER_ERROR, VERSION, canonical, context_ids, dumps, embed_vector, make_model,
                   last_user_text, plan_reply, prompt_count, ps_entry, show_payload, stats, tags_entry, timestamp)

NDJSON_TYPE = "application/x-ndjson"
BAD_NDJSON = b'{"response": tru\n'
ERROR_NDJSON = dumps({"error": RUNNER_ERROR}) + b"\n"
NO_FAULTS = {"tokens": None, "thinking": None, "first_delay": 0.0, "delay": 0.0, "fault": None, "fault_after": 0}


class NativeRoutes:
    """Handlers for /, /api/*; mixed into server.Handler together with Transport."""

    def find_model(self, name, embed: bool = False) -> dict:
        """The catalogue entry for `name`, or Ollama's 404."""
        wanted = canonical(name)
        for model in self.double.models:
            if model["name"].lower() == wanted:
                return model
        shown = "" if name is None else name
        # /api/embed still words it the pre-0.12 way (see the reference, section 3.5).
        message = f'model "{shown}" not found, try pulling it first' if embed else f"model '{shown}' not found"
        raise ApiError(404, message)

    def api_root(self):
        self.send_body(200, b"Ollama is running", "text/plain; charset=utf-8")

    def _slow_meta(self):
        script = self.double._snapshot()
        if script["fault"] == "slow_version":  # a health check against a stalled server
            self.wait(script["first_delay"])

    def api_version(self):
        self._slow_meta()
        self.send_json({"version": VERSION})

    def api_tags(self):
        self._slow_meta()
        self.send_json({"models": [tags_entry(m) for m in self.double.models]})

    def api_ps(self):
        loaded = [m for m in self.double.models if "completion" in m["capabilities"]][:1]
        self.send_json({"models": [ps_entry(m) for m in loaded]})

    def api_show(self):
        req = self.json_body()
        name = req.get("model") or req.get("name")
        if not name:
            raise ApiError(400, "model is required")
        self.send_json(show_payload(self.find_model(name)))

    def api_generate(self):
        self._generation(chat=False)

    def api_chat(self):
        self._generation(chat=True)

    def _generation(self, chat: bool):
        req = self.json_body()
        name = req.get("model")
        if chat and not name:
            raise ApiError(400, "model is required")
        model = self.find_model(name)
        script = self.double._snapshot()
        stream = req.get("stream") is not False  # absent (or null) means stream
        if chat:
            messages = req.get("messages") or []
            prompt, n_prompt = last_user_text(messages), sum(prompt_count(str(m.get("content", "")))
                                                             for m in messages if isinstance(m, dict))
        else:
            prompt = req.get("prompt") or ""
            messages, n_prompt = None, prompt_count(prompt)
        if not (messages if chat else prompt):
            # Load-only request: one object even when streaming was asked for.
            self.prelude(script)
            reason = "unload" if req.get("keep_alive") in (0, "0", "0s") else "load"
            obj = _piece(chat, name, created_at=timestamp())
            return self.send_json({**obj, "done": True, "done_reason": reason})
        thinking, tokens, calls = plan_reply(model, req, script, prompt, chat)
        final = {**_piece(chat, name), "done": True, "done_reason": "stop"}
        if not chat:
            final["context"] = context_ids(prompt + " " + "".join(tokens))
        final.update(stats(n_prompt, len(thinking) + len(tokens) + len(calls or []), script))
        items = [_piece(chat, name, thinking=t) for t in thinking] + [_piece(chat, name, text=t) for t in tokens]
        items += [_piece(chat, name, calls=calls)] if calls else []
        items.append(final)
        if stream:
            rec = self.double._open_stream(self.route, name)
            self.prelude(script, rec)
            return self.stream(rec, items, NDJSON_TYPE, script, ndjson, BAD_NDJSON, ERROR_NDJSON)
        self.prelude(script)
        whole = _piece(chat, name, "".join(tokens), "".join(thinking) or None, calls, created_at=timestamp())
        body = dict(whole)
        body.update((k, v) for k, v in final.items() if k not in ("created_at", "message", "response"))
        self.finish_unstreamed(script, len(items), body, BAD_NDJSON.rstrip())

    def api_embed(self):
        req = self.json_body()
        name = req.get("model")
        self.find_model(name, embed=True)
        texts = req.get("input")
        texts = [texts] if isinstance(texts, str) else [] if texts is None else texts
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "invalid input type")
        if not any(texts):  # "" or [] only loads the model
            return self.send_json({"model": name, "embeddings": []})
        timing = stats(sum(len(t.split()) for t in texts), 0, NO_FAULTS)
        self.send_json({"model": name, "embeddings": [embed_vector(t) for t in texts],
                        "total_duration": timing["total_duration"], "load_duration": timing["load_duration"],
                        "prompt_eval_count": timing["prompt_eval_count"]})

    def api_embeddings(self):
        req = self.json_body()
        self.find_model(req.get("model"), embed=True)
        prompt = req.get("prompt") or ""
        # The legacy endpoint returns an unnormalised float64 vector.
        self.send_json({"embedding": [x * 7.5 for x in embed_vector(prompt)] if prompt else []})

    def api_pull(self):
        req = self.json_body()
        name = req.get("model") or req.get("name")
        if not name:
            raise ApiError(400, "invalid model name")
        if req.get("stream") is False:
            self._install(name)
            return self.send_body(200, dumps({"status": "success"}), "application/json")
        items = [{"status": "pulling manifest"}]
        for i, total in enumerate((2019377376, 1481)):
            digest = hashlib.sha256(f"{canonical(name)}#{i}".encode()).hexdigest()
            head = {"status": "pulling " + digest[:12], "digest": "sha256:" + digest, "total": total}
            items += [head, {**head, "completed": total // 3}, {**head, "completed": total}]
        items += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]
        # The script's pacing and mid-stream faults apply to the progress lines as to tokens.
        script = self.double._snapshot()
        rec = self.double._open_stream(self.route, name)
        self.stream(rec, items, NDJSON_TYPE, script, ndjson, BAD_NDJSON, ERROR_NDJSON)
        if script["fault"] is None:  # a pull that failed installs nothing
            self._install(name)

    def _install(self, name):
        try:
            self.find_model(name)
        except ApiError:
            self.double.models.insert(0, make_model({"name": canonical(name)}))  # newest first, as tags sorts

    def api_delete(self):
        req = self.json_body()
        name = req.get("model") or req.get("name")
        model = self.find_model(name)
        self.double.models.remove(model)
        self.send_body(200, b"", None)


def _piece(chat, name, text="", thinking=None, calls=None, created_at=None) -> dict:
    """One generate/chat object in Go's field order (done is added by the caller or here as false)."""
    if chat:
        message = {"role": "assistant", "content": text}
        if thinking is not None:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = calls
        return {"model": name, "created_at": created_at, "message": message, "done": False}
    out = {"model": name, "created_at": created_at, "response": text}
    if thinking is not None:
        out["thinking"] = thinking
    out["done"] = False
    return out
