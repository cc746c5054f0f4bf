"""Ollama wire-format helpers: Go-style JSON, timestamps, model names, the catalogue and reply planning."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import re
import socket
import struct
import time
import zlib
from base64 import b64encode, urlsafe_b64encode
from datetime import datetime
from decimal import Decimal

from .gojson import go_quote

VERSION = "0.33.0"  # the double imitates ollama/ollama at v0.33.0-rc2 (Aug 2026)
RUNNER_ERROR = "an error was encountered while running the model"
WEATHER_CALL = {"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Tokyo"}}}
DEFAULT_THINKING = ["Okay,", " the", " user", " wants", " an", " echo", "."]
MODELS_DIR = "/root/.ollama/models"  # where a stock Linux install keeps manifests and blobs
# The system prompt openai.FromTranscriptionRequest puts before the audio (then language and prompt, if given).
TRANSCRIBE_SYSTEM = ("Transcribe the audio exactly as spoken. Output only the spoken words. Do not answer any "
                     "question in the audio.")

_WORDS = re.compile(r"\w+")  # the double's "tokens" for embeddings

# Go's encoding/json escapes these even inside otherwise raw UTF-8 output.
_GO_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))
_FLOAT_MARK = "\x00gofloat:"

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
DETAIL_KEYS = ("parent_model", "format", "family", "families", "parameter_size", "quantization_level")


# -- JSON out -------------------------------------------------------------------------------------------------


def go_float(value: float) -> str:
    """A float64 as encoding/json writes it: shortest digits, exponent only below 1e-6 or from 1e21."""
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    if 1e-6 <= abs(value) < 1e21:
        return format(Decimal(repr(value)), "f").removesuffix(".0")
    text = repr(value)
    mantissa, _, exponent = text.partition("e")
    sign, digits = (exponent[0], exponent[1:]) if exponent[0] in "+-" else ("+", exponent)
    return f"{mantissa}e{sign}{digits.lstrip('0') or '0'}" if len(digits.lstrip("0")) < 2 else text


def _go_numbers(obj, marks: list):
    """Replace floats whose Python spelling differs from Go's by markers (ints and most floats match)."""
    if isinstance(obj, float) and not isinstance(obj, bool):
        if math.isfinite(obj) and obj == int(obj) and abs(obj) < 1e21:
            return int(obj)
        if not math.isfinite(obj) or 1e-4 <= abs(obj) < 1e16:
            return obj
        marks.append(go_float(obj))
        return f"{_FLOAT_MARK}{len(marks) - 1}"
    if isinstance(obj, dict):
        return {key: _go_numbers(value, marks) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_go_numbers(value, marks) for value in obj]
    return obj


def dumps(obj) -> bytes:
    """Encode like Go's encoding/json: compact, <>& escaped, raw UTF-8, Go's float spelling, no newline."""
    marks: list = []
    text = json.dumps(_go_numbers(obj, marks), separators=(",", ":"), ensure_ascii=False)
    for raw, escaped in _GO_ESCAPES:  # these characters only ever occur inside JSON strings
        text = text.replace(raw, escaped)
    for i, number in enumerate(marks):
        text = text.replace(f'"\\u0000gofloat:{i}"', number, 1)
    return text.encode("utf-8", "replace")


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


# -- model names (types/model/name.go, internal/modelref) ---------------------------------------------------

DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"
_PART_LIMITS = {"host": 350, "namespace": 80, "model": 80, "tag": 80}
_MISSING = "!MISSING!"


class RefError(Exception):
    """A model reference Ollama refuses; .kind is 'required', 'invalid' or 'conflict'."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


def _valid_part(kind: str, part: str) -> bool:
    if not 1 <= len(part) <= _PART_LIMITS[kind]:
        return False
    for i, char in enumerate(part):
        word = char.isascii() and (char.isalnum() or char == "_")
        if i == 0:
            if not word:
                return False
        elif not (word or char in "-_" or (char == "." and kind != "namespace") or (char == ":" and kind == "host")):
            return False
    return True


def parse_name(text: str):
    """(host, namespace, model, tag) with Ollama's defaults, or None when the name is not valid."""
    host = namespace = tag = ""
    rest = text
    if rest.rfind(":") > rest.rfind("/"):
        rest, _, tag = rest.rpartition(":")
        rest, tag = rest or _MISSING, tag or _MISSING
    if "/" in rest:
        rest, _, model = rest.rpartition("/")
        rest, model = rest or _MISSING, model or _MISSING
        if "/" in rest:
            rest, _, namespace = rest.rpartition("/")
            host, namespace = rest or _MISSING, namespace or _MISSING
            host = host.split("://", 1)[-1]
        else:
            namespace = rest
    else:
        model = rest
    parts = (host or DEFAULT_HOST, namespace or DEFAULT_NAMESPACE, model, tag or DEFAULT_TAG)
    ok = all(_valid_part(kind, part) for kind, part in zip(("host", "namespace", "model", "tag"), parts))
    return parts if ok else None


def _source_suffix(raw: str):
    head, sep, suffix = raw.rpartition(":")
    if sep:
        low = suffix.strip().lower()
        if low in ("cloud", "local"):
            return head, low, True
        if "/" not in suffix and low.endswith("-cloud"):
            return f"{head}:{suffix.strip()[:-len('-cloud')]}", "cloud", True
    return raw, "", False


def parse_ref(raw) -> tuple:
    """(name parts, source) for a request's model string; source is '', 'local' or 'cloud'."""
    raw = str(raw or "").strip()
    if not raw:
        raise RefError("required", "model is required")
    base, source, explicit = _source_suffix(raw)
    if explicit and _source_suffix(base)[2]:
        raise RefError("conflict", f"use either :local or :cloud, not both: {go_quote(raw)}")
    parts = parse_name(base)
    if parts is None:
        raise RefError("invalid", "invalid model name")
    return parts, source


def ref_base(raw) -> str:
    """The reference without its ':cloud'/':local'/'-cloud' source suffix."""
    return _source_suffix(str(raw or "").strip())[0]


def name_key(parts) -> tuple:
    """Names match case-insensitively, part by part."""
    return tuple(part.lower() for part in parts)


def full_name(parts) -> str:
    """model.Name.String(): host/namespace/model:tag."""
    host, namespace, model, tag = parts
    return f"{host}/{namespace}/{model}:{tag}"


def display_shortest(parts) -> str:
    host, namespace, model, tag = parts
    if host.lower() != DEFAULT_HOST:
        return f"{host}/{namespace}/{model}:{tag}"
    if namespace.lower() != DEFAULT_NAMESPACE:
        return f"{namespace}/{model}:{tag}"
    return f"{model}:{tag}"


def canonical(name) -> str:
    """A catalogue name for `name`: the shortest display form, lower-cased (unparseable names pass through)."""
    parts = parse_name(str(name or "").strip())
    return display_shortest(name_key(parts)) if parts else str(name or "").strip().lower()


# -- the catalogue --------------------------------------------------------------------------------------------


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


def _lengths(model: dict) -> tuple:
    embeds = "embedding" in model["capabilities"]
    return (512, 384) if embeds else (131072, 3072)


def tags_entry(model: dict) -> dict:
    """The /api/tags view of a model: current servers add capabilities and context/embedding lengths."""
    entry = {key: model[key] for key in TAG_KEYS}
    context, embedding = _lengths(model)
    entry["details"] = {**{k: model["details"][k] for k in DETAIL_KEYS}, "context_length": context,
                        "embedding_length": embedding}
    if model["capabilities"]:
        entry["capabilities"] = list(model["capabilities"])
    return entry


def ps_entry(model: dict, expires_ns: int | None = None) -> dict:
    """The /api/ps view: loaded until `expires_ns` (time.time_ns() scale; default: another five minutes)."""
    entry = {key: model[key] for key in TAG_KEYS if key != "modified_at"}
    entry["details"] = {k: model["details"][k] for k in DETAIL_KEYS}
    expires = timestamp(time.time_ns() + 300 * 1_000_000_000 if expires_ns is None else expires_ns, local=True)
    return {**entry, "expires_at": expires, "size_vram": model["size"], "context_length": 4096}


def layer_digests(model: dict) -> list:
    """sha256:<hex> digests of the model's blobs (weights, template, license, params), stable per model."""
    labels = ("model", "template", "license", "params")
    return ["sha256:" + hashlib.sha256(f"{model['digest']}/{label}".encode()).hexdigest() for label in labels]


def _tensors(model: dict) -> list:
    """GGUF tensor descriptions, as many as a model of that family has (255 for a llama 3B)."""
    if "embedding" in model["capabilities"]:
        names = ["token_embd.weight", "position_embd.weight", "token_types.weight"]
        names += [f"blk.{i}.{part}" for i in range(6) for part in (
            "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight", "ffn_up.weight",
            "ffn_down.weight")]
        return [{"name": n, "type": "F16", "shape": [384, 384]} for n in names]
    blocks = 28
    out = [{"name": "token_embd.weight", "type": "Q6_K", "shape": [3072, 128256]}]
    for i in range(blocks):
        for part, kind, shape in (("attn_norm.weight", "F32", [3072]), ("attn_q.weight", "Q4_K", [3072, 3072]),
                                  ("attn_k.weight", "Q4_K", [3072, 1024]), ("attn_v.weight", "Q6_K", [3072, 1024]),
                                  ("attn_output.weight", "Q4_K", [3072, 3072]), ("ffn_norm.weight", "F32", [3072]),
                                  ("ffn_gate.weight", "Q4_K", [3072, 8192]), ("ffn_up.weight", "Q4_K", [3072, 8192]),
                                  ("ffn_down.weight", "Q6_K", [8192, 3072])):
            out.append({"name": f"blk.{i}.{part}", "type": kind, "shape": shape})
    out += [{"name": "output_norm.weight", "type": "F32", "shape": [3072]},
            {"name": "rope_freqs.weight", "type": "F32", "shape": [64]}]
    return out


def _vocabulary(size: int) -> list:
    """Synthetic tokenizer entries ('<0x00>'-style bytes first, then word pieces)."""
    out = [f"<0x{i:02X}>" for i in range(min(size, 256))]
    out += [f"\u0120tok{i}" for i in range(max(0, size - 256))]
    return out


def show_payload(model: dict, verbose: bool = False, verbose_bytes: int = 0) -> dict:
    """The /api/show answer, in Go's field order.

    The template holds '<' and '>' to exercise Go escaping. Tensors come back whether or not `verbose` is set
    (as in current Ollama); `verbose` only stops model_info arrays longer than 5 items being replaced by [].
    With `verbose_bytes` the vocabulary grows until the body is about that many bytes.
    """
    family, embeds = model["details"]["family"], "embedding" in model["capabilities"]
    scale = {"B": 10**9, "M": 10**6, "K": 10**3}
    size = model["details"]["parameter_size"]
    try:
        params = int(float(size[:-1]) * scale[size[-1].upper()])
    except (KeyError, ValueError, IndexError):
        params = 0
    context, embedding = _lengths(model)
    vocab = _vocabulary(300)
    info = {"general.architecture": family, "general.file_type": 15, "general.parameter_count": params,
            "general.quantization_version": 2, f"{family}.block_count": 6 if embeds else 28,
            f"{family}.context_length": context, f"{family}.embedding_length": embedding,
            "tokenizer.ggml.model": "bert" if embeds else "gpt2", "tokenizer.ggml.tokens": vocab,
            "tokenizer.ggml.token_type": [1] * len(vocab), "tokenizer.ggml.bos_token_id": 1}
    if not verbose:
        info = {k: ([] if isinstance(v, list) and len(v) > 5 else v) for k, v in info.items()}
    blobs = layer_digests(model)
    short = display_shortest(parse_name(model["name"]) or (DEFAULT_HOST, DEFAULT_NAMESPACE, model["name"], "latest"))
    modelfile = ('# Modelfile generated by "ollama show"\n'
                 "# To build a new Modelfile based on this, replace FROM with:\n"
                 f"# FROM {short}\n\nFROM {MODELS_DIR}/blobs/{blobs[0].replace(':', '-')}\n")
    out = {"license": "Synthetic weights served by the Ollama test double.", "modelfile": modelfile,
           "parameters": "" if embeds else 'stop                           "<|end|>"',
           "template": "" if embeds else "{{ if .System }}<|system|>{{ .System }}<|end|>{{ end }}"
                                         "<|user|>{{ .Prompt }}<|end|><|assistant|>",
           "details": {k: model["details"][k] for k in DETAIL_KEYS}, "model_info": info,
           "tensors": _tensors(model), "capabilities": model["capabilities"], "modified_at": model["modified_at"]}
    out = {key: value for key, value in out.items() if value not in ("", [])}  # Go's omitempty
    if verbose and verbose_bytes:
        grow = max(0, verbose_bytes - len(dumps(out)))
        pieces = grow // 16  # each added token is '"\u0120tokNNNNNN",' plus its token_type '1,'
        vocab = _vocabulary(300 + pieces)
        info.update({"tokenizer.ggml.tokens": vocab, "tokenizer.ggml.token_type": [1] * len(vocab)})
    return out


# -- generation ----------------------------------------------------------------------------------------------


def last_user_text(messages) -> str:
    """Text of the last user message (OpenAI content-part arrays included), else of the last message."""
    picked = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"),
                  messages[-1] if messages else {})
    content = picked.get("content", "") if isinstance(picked, dict) else ""
    if isinstance(content, list):
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def default_tokens(prompt: str, prefix: str = "You said:") -> list:
    """Deterministic reply: the words of 'You said: <prompt>', each after its leading space."""
    words = f"{prefix} {prompt}".split()
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


def thinks(model: dict, think) -> bool:
    """Whether a generation thinks: thinking models do unless told think:false."""
    return "thinking" in model["capabilities"] and think is not False


def plan_reply(model: dict, req: dict, script: dict, prompt: str, chat: bool, messages=None):
    """Decide (thinking tokens, answer tokens, tool calls or None) for one generation."""
    if script["thinking"] is not None:
        thinking = list(script["thinking"])
    elif thinks(model, req.get("think")):
        thinking = list(DEFAULT_THINKING)
    else:
        thinking = []
    if script["tokens"] is not None:
        return thinking, list(script["tokens"]), None
    last = messages[-1] if chat and messages else {}
    audio = _transcription_audio(messages) if chat else None
    if audio is not None:
        # Ollama's transcription request (see audio_layer.py): the model "hears" how long the audio is.
        return thinking, default_tokens(f"of {len(audio)} bytes of audio.", "Transcript"), None
    if isinstance(last, dict) and last.get("role") == "tool":
        # The answer after a tool result quotes the result instead of asking for the tool again.
        return thinking, default_tokens(str(last.get("content", "")), "The tool said:"), None
    if chat and req.get("tools") and "tools" in model["capabilities"]:
        if "search" in prompt.lower() and any(((t or {}).get("function") or {}).get("name") == "web_search"
                                              for t in req["tools"] if isinstance(t, dict)):
            # A model offered a web_search function searches for what it was asked.
            call = {"function": {"index": 0, "name": "web_search", "arguments": {"query": prompt}}}
            return thinking, [], [{"id": tool_call_id(prompt, call), **call}]
        if "weather" in prompt.lower():
            call = copy.deepcopy(WEATHER_CALL)
            return thinking, [], [{"id": tool_call_id(prompt, call), **call}]
    return thinking, default_tokens(prompt), None


def _transcription_audio(messages):
    """The audio of a chat that is Ollama's transcription request (its system prompt, then a user message with
    the audio as its only image), else None."""
    if not messages or len(messages) < 2:
        return None
    first, last = messages[0], messages[-1]
    if not (isinstance(first, dict) and first.get("role") == "system" and
            str(first.get("content", "")).startswith(TRANSCRIBE_SYSTEM)):
        return None
    if not (isinstance(last, dict) and last.get("role") == "user" and isinstance(last.get("images"), list)
            and len(last["images"]) == 1 and isinstance(last["images"][0], (bytes, bytearray))):
        return None
    return last["images"][0]


def tool_call_id(seed: str, call: dict) -> str:
    """'call_' and 8 lowercase alphanumerics, derived from the prompt and the call (deterministic)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    digest = hashlib.sha256(f"{seed}|{json.dumps(call, sort_keys=True)}".encode()).digest()
    return "call_" + "".join(alphabet[b % len(alphabet)] for b in digest[:8])


_ALTERNATIVES = [" the", " a", ",", ".", " and", " to", " of", " is", " in", " that", " it", " you", " for", " I",
                 " on", " with", " as", " was", " be", " at", " this"]


def token_logprobs(token: str, top: int) -> dict:
    """One api.Logprob for a token: its log probability, its UTF-8 bytes and `top` alternatives."""
    value = -round(0.01 + (zlib.crc32(token.encode("utf-8", "replace")) % 4000) / 1000, 4)
    entry = {"token": token, "logprob": value}
    if token:
        entry["bytes"] = list(token.encode("utf-8", "replace"))
    if top > 0:
        alternatives = [token] + [alt for alt in _ALTERNATIVES if alt != token]
        entry["top_logprobs"] = []
        for rank, alt in enumerate(alternatives[:top]):
            item = {"token": alt, "logprob": round(value - 0.75 * rank, 4)}
            if alt:
                item["bytes"] = list(alt.encode("utf-8", "replace"))
            entry["top_logprobs"].append(item)
    return entry


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


def float32(value: float) -> float:
    """The float32 nearest `value`, spelt with the fewest digits that still name it (as Go prints float32)."""
    exact = struct.unpack("<f", struct.pack("<f", value))[0]
    for digits in range(1, 10):
        text = f"{exact:.{digits}g}"
        if struct.unpack("<f", struct.pack("<f", float(text)))[0] == exact:
            return float(text)
    return exact


def embedding_length(model: dict) -> int:
    """The size of a model's vectors, as /api/show and /api/tags declare it (384 for embedding models)."""
    return _lengths(model)[1]


@functools.lru_cache(maxsize=65536)
def _bucket(word: str, dims: int) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8", "replace"), digest_size=8).digest(), "little") % dims


def embed_vector(text: str, dims: int) -> list:
    """A bag-of-words vector of `dims` float32 values, L2-normalised: each lowercased word counts once more in
    the bucket its BLAKE2b hash picks, so texts that share words point alike (a text without words is one word).
    Deterministic across processes; /api/embed's `dimensions` hashes into fewer buckets."""
    counts = [0] * dims
    for word in _WORDS.findall(text.lower()) or [text]:
        counts[_bucket(word, dims)] += 1
    norm = math.sqrt(sum(x * x for x in counts))
    return [float32(x / norm) if x else 0.0 for x in counts]


def float32_base64(vector: list) -> str:
    """The OpenAI layer's encoding_format=base64: little-endian float32 bytes."""
    return b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


# -- the account of a server that is not signed in to ollama.com -------------------------------------------

PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI" + b64encode(hashlib.sha256(b"ollama-double").digest()).decode()


def signin_url() -> str:
    """https://ollama.com/connect?name=<hostname>&key=<base64url of the public key>, as Ollama builds it."""
    from urllib.parse import quote
    key = urlsafe_b64encode(PUBLIC_KEY.encode()).decode().rstrip("=")
    return f"https://ollama.com/connect?name={quote(socket.gethostname(), safe='')}&key={key}"


MODEL_RECOMMENDATIONS = [
    {"model": "gpt-oss:120b-cloud", "description": "Large open-weight reasoning model served from ollama.com",
     "context_length": 131072, "max_output_tokens": 32768},
    {"model": "qwen3-coder:480b-cloud", "description": "Agentic coding on ollama.com",
     "context_length": 262144, "max_output_tokens": 65536},
    {"model": "llama3.2", "description": "Small general model that runs locally", "vram_bytes": 3_000_000_000},
    {"model": "qwen3", "description": "Local reasoning with thinking", "vram_bytes": 6_000_000_000},
]
