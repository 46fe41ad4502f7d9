"""A small safetensors reader/writer that also handles bfloat16, which numpy (and therefore
`safetensors.numpy`) cannot represent.

The format: 8-byte little-endian header length N, N bytes of JSON
`{name: {"dtype": "F32"|"BF16"|..., "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {str: str}}`
(padded with spaces to a multiple of 8), then the raw little-endian tensor bytes; offsets are relative
to the end of the header and the data of successive tensors is contiguous.

bfloat16 is the top 16 bits of an IEEE float32. `fp32_to_bf16_bits` rounds to nearest, ties to even
(NaN stays NaN), which is what `torch.Tensor.bfloat16()` and Ascend do; the bits are stored as uint16
and written with dtype "BF16". Reading converts BF16 back to float32 exactly (`bf16_bits_to_fp32`).
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

# safetensors dtype name -> numpy dtype of the stored bytes (BF16 is carried as raw uint16 bits)
_NUMPY_OF = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
_NAME_OF = {np.dtype(v): k for k, v in _NUMPY_OF.items() if k != "BF16"}
EXPORT_DTYPES = ("fp32", "bf16")


def fp32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 array -> uint16 bfloat16 bit patterns, round-to-nearest-even (NaN kept quiet NaN)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)  # +0x7FFF, +1 more when the kept lsb is odd
    out = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)  # keep sign/payload, force quiet
    return out


def bf16_bits_to_fp32(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns -> float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def write(path: str, tensors: dict[str, np.ndarray], dtype: str = "fp32", metadata: dict | None = None) -> int:
    """Write `tensors` ({name: array}) to `path` in insertion order; floating tensors are stored as
    F32 (dtype="fp32") or BF16 (dtype="bf16"), other dtypes as they are. Returns the data bytes."""
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype: unknown {dtype!r}; use one of {EXPORT_DTYPES}")
    header, blobs, offset = {}, [], 0
    for name, value in tensors.items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating):
            if dtype == "bf16":
                st_dtype, data = "BF16", fp32_to_bf16_bits(value.astype(np.float32, copy=False))
            else:
                st_dtype, data = "F32", value.astype(np.float32, copy=False)
        else:
            if value.dtype not in _NAME_OF:
                raise ValueError(f"{name}: dtype {value.dtype} cannot be stored in safetensors; cast it first")
            st_dtype, data = _NAME_OF[value.dtype], value
        raw = np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": st_dtype, "shape": list(value.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for raw in blobs:
            f.write(raw)
    os.replace(tmp, path)
    return offset


def read_header(path: str) -> dict:
    """The parsed JSON header of a safetensors file (including `__metadata__` when present)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > os.path.getsize(path) - 8:
            raise ValueError(f"{path}: not a safetensors file (header length {n} past the end)")
        return json.loads(f.read(n))


class Reader:
    """Reads one tensor at a time from a safetensors file; BF16/F16 come back as float32."""

    def __init__(self, path: str):
        self.path = path
        self.header = read_header(path)
        self.metadata = self.header.pop("__metadata__", {}) or {}
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
        self._data_start = 8 + n

    def names(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def dtype(self, name: str) -> str:
        return self.header[name]["dtype"]

    def get(self, name: str) -> np.ndarray:
        meta = self.header[name]
        begin, end = meta["data_offsets"]
        if meta["dtype"] not in _NUMPY_OF:
            raise ValueError(f"{self.path}: {name} has unsupported dtype {meta['dtype']}")
        with open(self.path, "rb") as f:
            f.seek(self._data_start + begin)
            raw = f.read(end - begin)
        arr = np.frombuffer(raw, dtype=np.dtype(_NUMPY_OF[meta["dtype"]]).newbyteorder("<"))
        if arr.size != int(np.prod(meta["shape"], dtype=np.int64)):
            raise ValueError(f"{self.path}: {name} holds {arr.size} values, shape {meta['shape']} needs "
                             f"{int(np.prod(meta['shape']))}; the file is truncated or corrupted")
        arr = arr.reshape(meta["shape"])
        if meta["dtype"] == "BF16":
            return bf16_bits_to_fp32(arr)
        if meta["dtype"] == "F16":
            return arr.astype(np.float32)
        return arr.astype(arr.dtype.newbyteorder("="), copy=True)


def parse_size(text: str | int) -> int:
    """'2GB' / '500MB' / '64KiB' / '1024' -> bytes (decimal units, like transformers' max_shard_size)."""
    if isinstance(text, int):
        return text
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    s = str(text).strip().upper().replace(" ", "")
    num = s.rstrip("KMGTIB")
    unit = s[len(num):]
    try:
        value = float(num)
    except ValueError:
        value = -1
    if unit not in units or value <= 0:
        raise ValueError(f"--shard-size: cannot parse {text!r}; use e.g. 2GB, 500MB or a byte count")
    return int(value * units[unit])
