#!/usr/bin/env python3
"""Independent reader for safetensors files, written from the format's
specification with only the Python standard library.

Format: an 8-byte little-endian unsigned header length N; N bytes of UTF-8
JSON mapping tensor names to {"dtype", "shape", "data_offsets": [begin, end]}
(offsets relative to the byte after the header) plus an optional
"__metadata__" object of string values; then the raw little-endian
row-major tensor bytes.

Usage:
  read_safetensors.py FILE                 list tensors with crc32 and sums
  read_safetensors.py FILE --expect J      compare with expectations J (JSON:
        {"tensors": {name: {"shape": [...], "crc32": int, "sum": float,
         "first": [...], "last": [...]}}, "metadata": {...}})
  read_safetensors.py FILE --dump NAME OUT write NAME's raw bytes to OUT
Exit status 0 when the file is valid (and matches), 1 otherwise.
"""
import json
import math
import struct
import sys
import zlib

DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4,
               "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
MAX_HEADER = 100 * 1024 * 1024


class FormatError(Exception):
    pass


def read(path):
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise FormatError("file shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > MAX_HEADER or 8 + n > len(blob):
        raise FormatError("header length %d does not fit a %d-byte file" % (n, len(blob)))
    raw_header = blob[8:8 + n]
    try:
        header = json.loads(raw_header.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise FormatError("header is not UTF-8 JSON: %s" % e)
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object")
    data = blob[8 + n:]
    meta = header.pop("__metadata__", None)
    if meta is not None:
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise FormatError("__metadata__ must map strings to strings")
    tensors = {}
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise FormatError("tensor %r: entry must have exactly dtype, shape, data_offsets" % name)
        dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPE_SIZES:
            raise FormatError("tensor %r: unknown dtype %r" % (name, dtype))
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise FormatError("tensor %r: bad shape %r" % (name, shape))
        if (not isinstance(offs, list) or len(offs) != 2 or not all(isinstance(o, int) for o in offs)
                or not 0 <= offs[0] <= offs[1] <= len(data)):
            raise FormatError("tensor %r: bad data_offsets %r (data is %d bytes)" % (name, offs, len(data)))
        count = 1
        for d in shape:
            count *= d
        if count * DTYPE_SIZES[dtype] != offs[1] - offs[0]:
            raise FormatError("tensor %r: %d bytes for shape %r of %s" % (name, offs[1] - offs[0], shape, dtype))
        tensors[name] = (dtype, shape, data[offs[0]:offs[1]])
        spans.append((offs[0], offs[1], name))
    # The byte buffer must be covered exactly, without holes or overlaps.
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            raise FormatError("tensor %r starts at %d, expected %d (hole or overlap)" % (name, begin, pos))
        pos = end
    if pos != len(data):
        raise FormatError("tensors cover %d of %d data bytes" % (pos, len(data)))
    return meta or {}, tensors


def floats(dtype, raw):
    if dtype != "F32":
        raise FormatError("only F32 values are decoded, got %s" % dtype)
    return struct.unpack("<%df" % (len(raw) // 4), raw)


def summary(dtype, shape, raw):
    vals = floats(dtype, raw)
    return {"shape": shape, "crc32": zlib.crc32(raw) & 0xFFFFFFFF,
            "sum": math.fsum(vals), "first": list(vals[:4]), "last": list(vals[-4:])}


def close(a, b):
    return a == b or abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


def compare(meta, tensors, expect):
    problems = []
    want = expect.get("tensors", {})
    if set(want) != set(tensors):
        problems.append("tensor names differ: missing %s, extra %s"
                        % (sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))))
    for name in sorted(set(want) & set(tensors)):
        got = summary(*tensors[name])
        w = want[name]
        if got["shape"] != w["shape"]:
            problems.append("%s: shape %s, want %s" % (name, got["shape"], w["shape"]))
        if got["crc32"] != w["crc32"]:
            problems.append("%s: crc32 %08x, want %08x" % (name, got["crc32"], w["crc32"]))
        if not close(got["sum"], w["sum"]):
            problems.append("%s: sum %r, want %r" % (name, got["sum"], w["sum"]))
        for key in ("first", "last"):
            if len(got[key]) != len(w[key]) or not all(x == y for x, y in zip(got[key], w[key])):
                problems.append("%s: %s values %s, want %s" % (name, key, got[key], w[key]))
    for k, v in expect.get("metadata", {}).items():
        if meta.get(k) != v:
            problems.append("metadata %r = %r, want %r" % (k, meta.get(k), v))
    return problems


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    path = argv[1]
    try:
        meta, tensors = read(path)
    except (OSError, FormatError) as e:
        print("%s: invalid: %s" % (path, e), file=sys.stderr)
        return 1
    if len(argv) == 4 and argv[2] == "--expect":
        with open(argv[3]) as f:
            expect = json.load(f)
        problems = compare(meta, tensors, expect)
        for p in problems:
            print("%s: %s" % (path, p), file=sys.stderr)
        if problems:
            return 1
        print("%s: %d tensors match" % (path, len(tensors)))
        return 0
    if len(argv) == 5 and argv[2] == "--dump":
        if argv[3] not in tensors:
            print("%s: no tensor %r" % (path, argv[3]), file=sys.stderr)
            return 1
        with open(argv[4], "wb") as f:
            f.write(tensors[argv[3]][2])
        return 0
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps({"metadata": meta, "tensors": {n: summary(*t) for n, t in sorted(tensors.items())}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
