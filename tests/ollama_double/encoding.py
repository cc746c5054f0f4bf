"""`Content-Encoding: zstd` request bodies, as Ollama's cloudPassthroughMiddleware (server/cloud_proxy.go) reads them.

What Ollama does (facts, re-implemented): on the POST routes behind cloudPassthroughMiddleware (/v1/chat/completions,
/v1/completions, /v1/embeddings, /v1/responses, /v1/messages) a Content-Encoding header that is exactly "zstd"
makes it read the body through klauspost/compress's zstd stream decoder (WithDecoderMaxMemory(8 MiB)) and
http.MaxBytesReader(20 MiB), then drop the header. A body that fails to decode, or decodes to more than 20 MiB, is
a 400 `{"error": "<the reader's error>"}` (gin.H, so Ollama's native shape even on /v1) from that middleware.
Any other encoding (gzip, "ZSTD", "zstd, gzip") is left alone: the compressed bytes reach the JSON decoder.

The decoder's checks are imitated by walking the frames here (klauspost's messages, for a multi-core server whose
decoder runs asynchronously); the payload of each frame is then decompressed with the `zstandard` package.
"""

from __future__ import annotations

import io

MAX_BODY = 20 << 20  # maxDecompressedBodySize
MAX_MEMORY = 8 << 20  # WithDecoderMaxMemory(8<<20): bounds a single-segment frame's size
MAX_BLOCK = 128 << 10  # maxCompressedBlockSize
MIN_WINDOW = 1 << 10
FRAME_MAGIC = b"\x28\xb5\x2f\xfd"
TOO_LARGE = "http: request body too large"  # *http.MaxBytesError
UNEXPECTED_EOF = "unexpected EOF"
ERRORS = {
    "magic": "invalid input: magic number mismatch",
    "reserved_header": "reserved bit set on frame header",
    "decoder_size": "decompressed size exceeds configured limit",
    "window_small": "invalid input: window size was too small",
    "dictionary": "unknown dictionary",
    "reserved_block": "invalid input: reserved block type encountered",
    "window": "window size exceeded",
    "compressed_size": "invalid input: compressed size too big",
    "block_small": "block too small",
    "crc": "CRC check failed",
    "frame_size": "frame size does not match size on stream",
}


class DecodeError(Exception):
    """The body could not be read; .message is the error text Ollama puts in {"error": ...}."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class _Input:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DecodeError(UNEXPECTED_EOF)
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out


def _frame_end(src: _Input) -> tuple:
    """Check one frame header and its block headers as klauspost's frameDec.reset and blockDec.reset do; return
    (start, end) of the frame in the input, or None at a clean end of input (also after skippable frames)."""
    while True:
        start = src.pos
        if src.pos >= len(src.data):
            return None
        signature = src.take(4)  # 1..3 bytes left: readSmall's io.ErrUnexpectedEOF
        if signature[1:] == b"\x2a\x4d\x18" and signature[0] & 0xF0 == 0x50:
            size = int.from_bytes(src.take(4), "little")
            src.take(size)  # a skippable frame
            continue
        break
    if signature != FRAME_MAGIC:
        raise DecodeError(ERRORS["magic"])
    fhd = src.take(1)[0]
    single = bool(fhd & 0x20)
    if fhd & 0x08:
        raise DecodeError(ERRORS["reserved_header"])
    window = 0
    if not single:
        wd = src.take(1)[0]
        base = 1 << (10 + (wd >> 3))
        window = base + (base // 8) * (wd & 7)
    dict_size = {0: 0, 1: 1, 2: 2, 3: 4}[fhd & 3]
    dictionary = int.from_bytes(src.take(dict_size), "little") if dict_size else 0
    fcs_flag = fhd >> 6
    fcs_size = (1 if single else 0) if fcs_flag == 0 else 1 << fcs_flag
    content = None
    if fcs_size:
        content = int.from_bytes(src.take(fcs_size), "little") + (256 if fcs_size == 2 else 0)
    checksum = bool(fhd & 0x04)
    if window == 0 and single:
        window = max(content or 0, MIN_WINDOW)
        if window > MAX_MEMORY:
            raise DecodeError(ERRORS["decoder_size"])
    if window < MIN_WINDOW:
        raise DecodeError(ERRORS["window_small"])
    if dictionary != 0:
        raise DecodeError(ERRORS["dictionary"])  # the middleware registers no dictionaries
    while True:
        header = int.from_bytes(src.take(3), "little")
        last, kind, size = header & 1, (header >> 1) & 3, header >> 3
        if kind == 3:
            raise DecodeError(ERRORS["reserved_block"])
        if kind in (0, 1) and (size > MAX_BLOCK or size > window):
            raise DecodeError(ERRORS["window"])
        if kind == 2:
            if size > MAX_BLOCK or size > window:
                raise DecodeError(ERRORS["compressed_size"])
            if size < 2:
                raise DecodeError(ERRORS["block_small"])
        src.take(1 if kind == 1 else size)
        if last:
            break
    if checksum:
        src.take(4)
    return start, src.pos


def decompress(data: bytes, limit: int = MAX_BODY) -> bytes:
    """The decoded body, or DecodeError with the message Ollama answers (see the module docstring)."""
    try:
        import zstandard
    except ImportError:  # pragma: no cover - a dev dependency (requirements-dev.txt)
        raise DecodeError("the Ollama double needs the zstandard package for zstd bodies") from None
    src, out = _Input(data), bytearray()
    decompressor = zstandard.ZstdDecompressor()
    while True:
        try:
            span = _frame_end(src)
        except DecodeError:
            if len(out) > limit:
                raise DecodeError(TOO_LARGE) from None
            raise
        if span is None:
            return bytes(out)
        frame = data[span[0]:span[1]]
        try:
            with decompressor.stream_reader(io.BytesIO(frame), read_across_frames=False) as reader:
                while True:
                    piece = reader.read(1 << 16)
                    if not piece:
                        break
                    out += piece
                    if len(out) > limit:
                        raise DecodeError(TOO_LARGE)
        except zstandard.ZstdError as err:
            text = str(err).lower()
            if "checksum" in text:
                raise DecodeError(ERRORS["crc"]) from None
            if "size" in text and "content" in text:
                raise DecodeError(ERRORS["frame_size"]) from None
            # klauspost words each kind of corrupt block its own way; this is the gist, not its exact text.
            raise DecodeError("invalid input: " + str(err).removeprefix("zstd decompressor error: ")) from None
