"""Ollama wire-format helpers: Go-style JSON, timestamps, the model catalogue and reply planning."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import time
import zlib
from datetime import datetime

VERSION = "0.12.6"
RUNNER_ERROR = "an error was encountered while running the model"
WEATHER_CALL = {"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Tokyo"}}}
DEFAULT_THINKING = ["Okay,", " the", " user", " wants", " an", " echo", "."]

# Go's encoding/json escapes these even inside otherwise raw UTF-8 output.
_GO_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))
# Python's decoder messages mapped to the phrase Go's decoder uses for the same mistake.
_GO_SYNTAX = {
    "Expecting value": "looking for beginning of value",
    "Expecting property name enclosed in double quotes": "looking for beginning of object key string",
    "Expecting ':' delimiter": "after object key",
    "Expecting ',' delimiter": "after object key:value pair",
    "Extra data": "after top-level value",
}
_GO_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "bool"}

DEFAULT_MODELS = [
    {"name": "llama3.2:latest", "modified_at": "2025-10-14T09:12:31.482915307-07:00", "size": 2019393189,
     "details": {"family": "llama", "parameter_size": "3.2B", "quantization_level": "Q4_K_M"},
     "capabilities": ["completion", "tools"]},
    {"name": "qwen3:latest", "modified_at": "2025-09-30T18:44:02.07731-07:00", "size": 5225387923,
     "details": {"family": "qwen3", "parameter_size": "8.2B", "quantization_level": "Q4_K_M"},
     "capabilities": ["completion", "thinking"]},
    {"name": "all-minilm:latest", "modified_at": "2025-08-21T11:03:57.9102-07:00", "size": 45960996,
     "details": {"family": "bert", "parameter_size": "23M", "quantization_level": "F16"},
     "capabilities": ["embedding"]},
]
TAG_KEYS = ("name", "model", "modified_at", "size", "digest", "details")


def dumps(obj) -> bytes:
    """Encode like Go's encoding/json: compact, <>& escaped, raw UTF-8, no trailing newline."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    for raw, escaped in _GO_ESCAPES:  # these characters only ever occur inside JSON strings
        text = text.replace(raw, escaped)
    return text.encode("utf-8", "replace")


def go_json_error(text: str, err: json.JSONDecodeError) -> str:
    """Phrase a JSON syntax error the way Ollama (Go's decoder) reports it."""
    if err.pos >= len(text.rstrip()) or err.msg.startswith("Unterminated"):
        return "unexpected EOF"
    return f"invalid character '{text[err.pos]}' {_GO_SYNTAX.get(err.msg, 'looking for beginning of value')}"


def go_type_error(value, target: str) -> str:
    """Go's message for a well-formed body of the wrong JSON type."""
    return f"json: cannot unmarshal {_GO_KINDS.get(type(value), 'value')} into Go value of type {target}"


def timestamp(ns: int | None = None, local: bool = False) -> str:
    """RFC 3339 with up to nine fractional digits, trailing zeros trimmed, like Go's RFC3339Nano."""
    ns = time.time_ns() if ns is None else ns
    sec, frac = divmod(ns, 1_000_000_000)
    tm = time.localtime(sec) if local else time.gmtime(sec)
    digits = f"{frac:09d}".rstrip("0")
    out = time.strftime("%Y-%m-%dT%H:%M:%S", tm) + ("." + digits if digits else "")
    offset = tm.tm_gmtoff // 60
    if not offset:
        return out + "Z"
    return f"{out}{'+' if offset > 0 else '-'}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"


def unix_time(stamp: str) -> int:
    """Seconds since the epoch for an RFC 3339 string (fromisoformat takes at most 6 fraction digits)."""
    return int(datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", stamp).replace("Z", "+00:00")).timestamp())


def canonical(name) -> str:
    """Normalise a model reference the way Ollama matches it: default registry, ':latest', any case."""
    name = str(name or "").strip().lower()
    for prefix in ("registry.ollama.ai/library/", "library/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def make_model(spec: dict) -> dict:
    """Complete a partial model dict (only 'name' is required) with plausible catalogue fields."""
    name = spec["name"] if ":" in spec["name"].rsplit("/", 1)[-1] else spec["name"] + ":latest"
    details = {"parent_model": "", "format": "gguf", "family": "llama", "families": None,
               "parameter_size": "1B", "quantization_level": "Q4_K_M", **copy.deepcopy(spec.get("details", {}))}
    details["families"] = details["families"] or [details["family"]]
    return {"name": name, "model": spec.get("model", name),
            "modified_at": spec.get("modified_at") or timestamp(local=True),
            "size": spec.get("size", 1_234_567_890),
            "digest": spec.get("digest") or hashlib.sha256(name.encode()).hexdigest(),
            "details": details, "capabilities": list(spec.get("capabilities", ["completion"]))}


def tags_entry(model: dict) -> dict:
    """The /api/tags view of a model (v0.12.6 lists no capabilities there)."""
    return {key: model[key] for key in TAG_KEYS}


def ps_entry(model: dict) -> dict:
    """The /api/ps view: loaded for another five minutes."""
    entry = {key: model[key] for key in TAG_KEYS if key != "modified_at"}
    expires = timestamp(time.time_ns() + 300 * 1_000_000_000, local=True)
    return {**entry, "expires_at": expires, "size_vram": model["size"], "context_length": 4096}


def show_payload(model: dict) -> dict:
    """The /api/show answer; the template deliberately holds '<' and '>' to exercise Go escaping."""
    family, embeds = model["details"]["family"], "embedding" in model["capabilities"]
    scale = {"B": 10**9, "M": 10**6, "K": 10**3}
    size = model["details"]["parameter_size"]
    try:
        params = int(float(size[:-1]) * scale[size[-1].upper()])
    except (KeyError, ValueError, IndexError):
        params = 0
    info = {"general.architecture": family, "general.parameter_count": params,
            f"{family}.context_length": 512 if embeds else 131072,
            f"{family}.embedding_length": 384 if embeds else 3072}
    out = {"license": "Synthetic weights served by the Ollama test double.",
           "modelfile": f"# Modelfile of the Ollama test double\nFROM {model['name']}\n",
           "parameters": "" if embeds else 'stop                           "<|end|>"',
           "template": "" if embeds else "{{ if .System }}<|system|>{{ .System }}<|end|>{{ end }}"
                                         "<|user|>{{ .Prompt }}<|end|><|assistant|>",
           "details": model["details"], "model_info": info,
           "capabilities": model["capabilities"], "modified_at": model["modified_at"]}
    return {key: value for key, value in out.items() if value != ""}  # Go's omitempty


def last_user_text(messages) -> str:
    """Text of the last user message (OpenAI content-part arrays included), else of the last message."""
    picked = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"),
                  messages[-1] if messages else {})
    content = picked.get("content", "") if isinstance(picked, dict) else ""
    if isinstance(content, list):
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def default_tokens(prompt: str) -> list:
    """Deterministic reply: the words of 'You said: <prompt>', each after its leading space."""
    words = f"You said: {prompt}".split()
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


def plan_reply(model: dict, req: dict, script: dict, prompt: str, chat: bool):
    """Decide (thinking tokens, answer tokens, tool calls or None) for one generation."""
    if script["thinking"] is not None:
        thinking = list(script["thinking"])
    elif "thinking" in model["capabilities"] and req.get("think") is not False:
        thinking = list(DEFAULT_THINKING)
    else:
        thinking = []
    if script["tokens"] is not None:
        return thinking, list(script["tokens"]), None
    if chat and req.get("tools") and "tools" in model["capabilities"] and "weather" in prompt.lower():
        return thinking, [], [copy.deepcopy(WEATHER_CALL)]
    return thinking, default_tokens(prompt), None


def prompt_count(text: str) -> int:
    """A plausible prompt token count: the words plus the chat template's own tokens."""
    return len(text.split()) + 11


def stats(n_prompt: int, n_eval: int, script: dict) -> dict:
    """Timing metrics (integer nanoseconds) consistent with the script's pacing."""
    load = 2_481_250 + int(script["first_delay"] * 1e9)
    prompt_ns = 18_000_000 + n_prompt * 1_250_000
    eval_ns = max(n_eval, 1) * max(int(script["delay"] * 1e9), 21_500_000)
    return {"total_duration": load + prompt_ns + eval_ns + 730_000, "load_duration": load,
            "prompt_eval_count": n_prompt, "prompt_eval_duration": prompt_ns,
            "eval_count": n_eval, "eval_duration": eval_ns}


def context_ids(text: str) -> list:
    """Stand-in token ids for generate's deprecated 'context' array."""
    return [zlib.crc32(word.encode()) % 128000 for word in text.split()]


def embed_vector(text: str, dims: int = 8) -> list:
    """A deterministic, L2-normalised vector derived from the text's SHA-256."""
    raw = [(b - 127.5) / 127.5 for b in hashlib.sha256(text.encode("utf-8", "replace")).digest()[:dims]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [float(f"{x / norm:.8g}") for x in raw]  # float32-like precision, as Ollama prints
