"""Read a TensorFlow checkpoint's tensors without TensorFlow.

A TF checkpoint (``tf.train.Saver`` V2 format) is a prefix ``P`` with two kinds of file:

- ``P.index``: a LevelDB-style SSTable mapping each tensor name to a serialized
  ``BundleEntryProto`` (dtype, shape, shard, byte offset, byte size, crc32c);
- ``P.data-SSSSS-of-NNNNN``: the raw little-endian tensor bytes, back to back.

That is all :func:`read_checkpoint` parses: the table's footer, index block and data
blocks (uncompressed, as TF writes them), and the few protobuf fields it needs, with a
hand-rolled varint decoder, so no TensorFlow or protobuf is needed at run time.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from audiogen.errors import AudiogenError

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_LEN = 48
# tensorflow/core/framework/types.proto DataType -> numpy
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
           9: np.int64, 10: np.bool_, 19: np.float16}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at ``pos``; return (value, next position)."""
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """A protobuf message as [(field number, wire type, value)]: ints for varint/fixed, bytes for length-delimited."""
    out, pos = [], 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire == 1:
            val, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 5:
            val, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        elif wire == 2:
            n, pos = _varint(buf, pos)
            val, pos = buf[pos : pos + n], pos + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((field, wire, val))
    return out


def _block_entries(data: bytes, offset: int, size: int) -> list[tuple[bytes, bytes]]:
    """The (key, value) pairs of one SSTable block (keys are prefix-compressed against the previous key)."""
    if data[offset + size] != 0:  # the 5-byte trailer: compression type, then crc
        raise ValueError("compressed SSTable block (TensorFlow writes them uncompressed)")
    block = data[offset : offset + size]
    n_restarts = struct.unpack_from("<I", block, size - 4)[0]
    end = size - 4 - 4 * n_restarts
    pos, key, out = 0, b"", []
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        vlen, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        out.append((key, block[pos : pos + vlen]))
        pos += vlen
    return out


def _index_entries(index: bytes) -> list[tuple[str, bytes]]:
    """All (tensor name, BundleEntryProto bytes) pairs of a ``.index`` file, header entry ('') dropped."""
    if len(index) < _FOOTER_LEN or struct.unpack_from("<Q", index, len(index) - 8)[0] != _TABLE_MAGIC:
        raise ValueError("not an SSTable (bad magic number)")
    footer = index[-_FOOTER_LEN:]
    _, pos = _varint(footer, 0)  # metaindex handle: unused
    _, pos = _varint(footer, pos)
    idx_off, pos = _varint(footer, pos)
    idx_size, pos = _varint(footer, pos)
    entries = []
    for _, handle in _block_entries(index, idx_off, idx_size):
        off, p = _varint(handle, 0)
        size, _ = _varint(handle, p)
        entries += [(k.decode(), v) for k, v in _block_entries(index, off, size) if k]
    return entries


def read_checkpoint(prefix: str | Path) -> dict[str, np.ndarray]:
    """All tensors of the TF checkpoint at ``prefix`` (the path before ``.index``) as numpy arrays.

    Raises :class:`AudiogenError` when the files are missing or not a checkpoint.
    """
    prefix = str(prefix)
    index_path = Path(prefix + ".index")
    if not index_path.is_file():
        raise AudiogenError(f"TensorFlow checkpoint index not found: {index_path}")
    try:
        entries = _index_entries(index_path.read_bytes())
    except (ValueError, IndexError, struct.error) as e:
        raise AudiogenError(f"{index_path}: not a TensorFlow checkpoint index ({e})") from None
    shards: dict[int, bytes] = {}
    n_shards = None
    tensors = {}
    for name, value in entries:
        dtype, shape, shard, offset, size = 1, [], 0, 0, 0
        for field, _, val in _proto_fields(value):
            if field == 1:
                dtype = val
            elif field == 2:  # TensorShapeProto: repeated Dim dim = 2 {int64 size = 1}
                shape = [next((v for f, _, v in _proto_fields(d) if f == 1), 0)
                         for f, _, d in _proto_fields(val) if f == 2]
            elif field == 3:
                shard = val
            elif field == 4:
                offset = val
            elif field == 5:
                size = val
            elif field == 7:
                raise AudiogenError(f"{index_path}: partitioned tensor '{name}' is not supported")
        if dtype not in _DTYPES:
            raise AudiogenError(f"{index_path}: tensor '{name}' has unsupported dtype {dtype}")
        if shard not in shards:
            if n_shards is None:
                n_shards = len(list(index_path.parent.glob(index_path.name[: -len(".index")] + ".data-*")))
            data_path = Path(f"{prefix}.data-{shard:05d}-of-{n_shards:05d}")
            if not data_path.is_file():
                raise AudiogenError(f"TensorFlow checkpoint data not found: {data_path}")
            shards[shard] = data_path.read_bytes()
        raw = shards[shard][offset : offset + size]
        arr = np.frombuffer(raw, dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<"))
        tensors[name] = arr.reshape([int(s) for s in shape]).copy()
    return tensors
