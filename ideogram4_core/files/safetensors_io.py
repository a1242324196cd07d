"""Safe, bounded reading of safetensors files.

Format: 8-byte little-endian header length N, N bytes of JSON, then one data region. The JSON maps
tensor names to {dtype, shape, data_offsets: [begin, end]} relative to the data region, plus an
optional "__metadata__" of string pairs. The spec requires the offsets to tile the data region
exactly (no holes, no overlap).

Everything is checked against the file size before anything is allocated: the header length is
capped, the number of tensors is counted on the raw bytes before the JSON is parsed, and every
tensor's byte range must equal its shape x dtype size and lie inside the file. So a malicious or
damaged header can neither make us allocate more than the file holds nor read outside it.

Tensors are read one at a time with plain positioned reads into freshly allocated tensors (no
memory map): the returned tensors own their memory, so resident memory while loading is what we
keep plus one tensor in flight, and a file replaced on disk later cannot fault a running model
(a truncated mmap raises SIGBUS). Pickle-based formats are refused by name and by content and are
never deserialised.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import CorruptCheckpointError, NotSafetensorsError

# The largest real header we know of (a Qwen3-VL text encoder with its vision tower) is ~0.3 MB;
# parsing 16 MiB of adversarial JSON costs at most a few hundred MB of Python objects.
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_TENSORS = 100_000
MAX_DIMS = 8
# JSON blobs stored as uint8 tensors (bnb quant_state, comfy_quant) are a few hundred bytes.
MAX_JSON_BLOB_BYTES = 64 * 1024

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}

# safetensors dtype string -> (torch dtype, bytes per element)
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "BOOL": (torch.bool, 1),
    "U8": (torch.uint8, 1),
    "I8": (torch.int8, 1),
    "I16": (torch.int16, 2),
    "U16": (torch.uint16, 2),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I32": (torch.int32, 4),
    "U32": (torch.uint32, 4),
    "F32": (torch.float32, 4),
    "F64": (torch.float64, 8),
    "I64": (torch.int64, 8),
    "U64": (torch.uint64, 8),
    "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors spelling, e.g. "BF16", "F8_E4M3"
    shape: tuple[int, ...]
    begin: int  # byte offsets inside the data region
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype][0]


@dataclass
class SafetensorsHeader:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int  # absolute file offset of the data region
    file_size: int
    mtime_ns: int
    header_bytes: bytes = field(repr=False)  # raw JSON, for fingerprints and same-file checks


def refuse_non_safetensors(path: str | Path) -> None:
    """Refuse pickle-based and other formats by their suffix, before opening the file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise NotSafetensorsError(
            f"{path}: refusing to read a '{suffix}' file. These are Python pickles (torch.save), and "
            "unpickling a file can run arbitrary code from it. Only .safetensors files are loaded; "
            "use the .safetensors release of the model or convert it with a tool you trust.",
            path,
        )
    if suffix == ".gguf":
        raise NotSafetensorsError(f"{path}: GGUF files are not supported; use a .safetensors file.", path)


def _sniff(head: bytes) -> str:
    """What a file that failed to parse probably is, from its first bytes ("" if unknown)."""
    if head.startswith(b"PK\x03\x04"):
        return " It is a zip archive, which is how torch.save writes pickled checkpoints; those are never loaded."
    if len(head) > 1 and head[0] == 0x80 and head[1] in (2, 3, 4, 5):
        return " It is a Python pickle; pickles are never loaded because they can run code."
    if head.startswith(b"version https://git-lfs"):
        return " It is a Git LFS pointer, not the model: fetch the real file (git lfs pull)."
    if head.lstrip()[:1] in (b"<", b"{"):
        return (
            " It starts with text (HTML or JSON): probably an error page saved in place of the model "
            "(for example a gated Hugging Face download without a token)."
        )
    if head.startswith(b"GGUF"):
        return " It is a GGUF file, which is not supported."
    return ""


def read_header(path: str | Path) -> SafetensorsHeader:
    """Parse and validate the header of one safetensors file without reading any tensor data."""
    path = Path(path)
    refuse_non_safetensors(path)
    try:
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
            size = stat.st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CorruptCheckpointError(
                    f"{path}: not a safetensors file: it holds only {size} bytes, fewer than the 8-byte "
                    "header length." + _sniff(prefix),
                    path,
                )
            header_len = int.from_bytes(prefix, "little")
            if header_len > MAX_HEADER_BYTES or header_len + 8 > size or header_len < 2:
                what = (
                    f"is larger than the {MAX_HEADER_BYTES} bytes we accept"
                    if header_len > MAX_HEADER_BYTES
                    else f"does not fit in the file ({size} bytes)" if header_len + 8 > size else "is too small"
                )
                raise CorruptCheckpointError(
                    f"{path}: not a valid safetensors file (truncated or corrupt): the header length "
                    f"{header_len} {what}." + _sniff(prefix + f.read(64)),
                    path,
                )
            raw = f.read(header_len)
    except OSError as e:
        raise CorruptCheckpointError(f"{path}: cannot read the file: {e}", path) from e
    tensors, metadata = _parse_header(path, raw)
    data_start = 8 + header_len
    _check_offsets(path, tensors, size - data_start)
    return SafetensorsHeader(path, tensors, metadata, data_start, size, stat.st_mtime_ns, raw)


def _parse_header(path: Path, raw: bytes) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    def corrupt(why: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"{path}: corrupt safetensors header: {why}", path)

    # Count entries on the raw bytes so an absurd tensor count is refused before JSON parsing.
    if raw.count(b'"data_offsets"') > MAX_TENSORS:
        raise corrupt(f"more than {MAX_TENSORS} tensors")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise corrupt(f"the header is not valid JSON ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(obj, dict):
        raise corrupt("the header is not a JSON object")
    metadata = obj.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise corrupt("__metadata__ must map strings to strings")
    tensors: dict[str, TensorInfo] = {}
    for name, entry in obj.items():
        if not isinstance(entry, dict):
            raise corrupt(f"entry {name!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPES:
            raise corrupt(f"tensor {name!r} has unknown dtype {dtype!r}")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_DIMS
            or not all(type(d) is int and 0 <= d < 2**48 for d in shape)
        ):
            raise corrupt(f"tensor {name!r} has an invalid shape {str(shape)[:80]}")
        if not (
            isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)
        ):
            raise corrupt(f"tensor {name!r} has invalid data_offsets {str(offsets)[:80]}")
        begin, end = offsets
        expected = math.prod(shape) * DTYPES[dtype][1]
        if end - begin != expected:
            raise corrupt(
                f"tensor {name!r} {dtype}{shape} needs {expected} bytes but its offsets span {end - begin}"
            )
        tensors[name] = TensorInfo(name, dtype, tuple(shape), begin, end)
    return tensors, metadata


def _check_offsets(path: Path, tensors: dict[str, TensorInfo], data_len: int) -> None:
    """The tensors must tile the data region: in order, no overlap, no hole, nothing past the end."""
    declared = max((t.end for t in tensors.values()), default=0)
    if declared > data_len:
        raise CorruptCheckpointError(
            f"{path}: the file is truncated: its header declares {declared} bytes of tensor data but "
            f"only {data_len} follow the header (incomplete download or copy?).",
            path,
        )
    position = 0
    for t in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if t.begin != position:
            kind = "overlaps the previous tensor" if t.begin < position else "leaves a gap before it"
            raise CorruptCheckpointError(f"{path}: corrupt safetensors file: tensor {t.name!r} {kind}.", path)
        position = t.end
    if position != data_len:
        raise CorruptCheckpointError(
            f"{path}: corrupt safetensors file: {data_len - position} bytes after the last tensor are "
            "not described by the header.",
            path,
        )


class TensorReader:
    """Reads tensors of one validated file, one at a time, into memory the caller owns."""

    def __init__(self, header: SafetensorsHeader):
        self.header = header
        self._file = None

    def __enter__(self) -> "TensorReader":
        h = self.header
        self._file = open(h.path, "rb", buffering=0)
        stat = os.fstat(self._file.fileno())
        if stat.st_size != h.file_size or stat.st_mtime_ns != h.mtime_ns:
            self._file.close()
            raise CorruptCheckpointError(
                f"{h.path}: the file changed on disk after it was inspected; load it again.", h.path
            )
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()
        self._file = None

    def read(self, name: str) -> torch.Tensor:
        info = self.header.tensors[name]
        buf = torch.empty(info.nbytes, dtype=torch.uint8)
        if info.nbytes:
            view = memoryview(buf.numpy())
            self._file.seek(self.header.data_start + info.begin)
            got = 0
            while got < info.nbytes:
                n = self._file.readinto(view[got:])
                if not n:
                    raise CorruptCheckpointError(
                        f"{self.header.path}: the file ended while reading tensor {name!r} (truncated?).",
                        self.header.path,
                    )
                got += n
        return buf.view(info.torch_dtype).reshape(info.shape)

    def read_json_blob(self, name: str) -> dict:
        """A small JSON object stored as a uint8 tensor (bnb `quant_state`, Comfy `comfy_quant`)."""
        info = self.header.tensors[name]
        if info.dtype != "U8" or info.nbytes > MAX_JSON_BLOB_BYTES:
            raise CorruptCheckpointError(
                f"{self.header.path}: {name!r} should be a small uint8 JSON blob, "
                f"found {info.dtype}{list(info.shape)}.",
                self.header.path,
            )
        try:
            obj = json.loads(bytes(self.read(name).tolist()).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise CorruptCheckpointError(
                f"{self.header.path}: {name!r} is not valid JSON ({e}).", self.header.path
            ) from None
        if not isinstance(obj, dict):
            raise CorruptCheckpointError(f"{self.header.path}: {name!r} is not a JSON object.", self.header.path)
        return obj
