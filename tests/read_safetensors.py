#!/usr/bin/python3
"""An independent safetensors reader (numpy + the format's spec, no Cohort code): prints, as JSON,
each tensor's dtype, shape and float64 values, for tests that check Cohort's files."""
import json, struct, sys
import numpy as np

DTYPES = {"F32": "<f4", "F64": "<f8", "I64": "<i8", "I32": "<i4", "U8": "u1", "BOOL": "?", "F16": "<f2"}

def read(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        raw = data[b:end]
        if e["dtype"] == "BF16":  # numpy has no bfloat16: widen the top 16 bits of a float32
            arr = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view("<f4")
        else:
            arr = np.frombuffer(raw, DTYPES[e["dtype"]])
        arr = arr.reshape(e["shape"])
        out[name] = {"dtype": e["dtype"], "shape": list(arr.shape), "values": arr.astype(np.float64).flatten().tolist()}
    return out

if __name__ == "__main__":
    print(json.dumps(read(sys.argv[1])))
