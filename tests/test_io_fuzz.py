"""Fuzzing clstm.load: damaged copies of real saved files of every model kind.

A seeded generator truncates files, flips bytes, edits, drops, duplicates and renames
archive members, rewrites their .npy headers and zip fields, and edits the JSON config
(hostile values, missing and unknown fields, broken text). Each case must either load a
model or raise ValueError, never any other exception, and must allocate little (the
files are a few KB; tracemalloc sees NumPy's buffers). A fixed number of cases keeps the
test's time bounded without timing anything; the memory is measured on every third.
"""

import io
import json
import random
import struct
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest

import clstm
from clstm.io import CONFIG_KEY, load, save
from clstm.layers import Dense, Dropout, Embedding
from clstm.models import Classifier, LanguageModel, LastStep, Regressor, Sequential

CASES = 2100
SMALL = 8 << 20  # bytes a case may allocate at most
TRACED = 3  # every third case runs under tracemalloc, which makes a load ~3x slower

MODELS = {
    "LSTM": lambda: clstm.LSTM(3, 4, num_layers=2, peephole=True, dtype="float64", seed=1),
    "Sequential": lambda: Sequential([Embedding(9, 3, padding_idx=0, seed=1),
                                      clstm.LSTM(3, 4, seed=2), Dropout(0.1), LastStep(),
                                      Dense(4, 2, bias=False, seed=3)], loss="mse"),
    "LanguageModel": lambda: LanguageModel(9, 3, 4, num_layers=2, dropout=0.2, seed=1),
    "Regressor": lambda: Regressor(3, 4, output_size=2, dtype="float64", seed=1),
    "Classifier(features)": lambda: Classifier(3, 4, 5, seed=1),
    "Classifier(tokens)": lambda: Classifier(hidden_size=4, num_classes=2, vocab_size=9,
                                             embed_dim=3, padding_idx=0, seed=1),
}

HOSTILE = [-1, 0, 1, 2, 3, 4, 8192, 10**6, 2**31, 2**63, 10**40, "4", "", "x" * 5000,
           4.0, 0.5, 1.5, -0.0, 1e308, True, False, None, [], [1] * 50, {}, {"a": {"b": 1}},
           "float16", "float32", "float64", "mse", "LSTM", "Dense"]
DESCRS = ["<f4", "<f8", ">f8", "|u1", "<i8", "|O", "<c16", "|V8", "<U3", "|b1"]


# ------------------------------------------------------------------------ archives

def unpack(data):
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def pack(members, compression=zipfile.ZIP_STORED):
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names, on purpose
        with zipfile.ZipFile(buffer, "w", compression) as z:
            for name, data in members:
                z.writestr(name, data)
    return buffer.getvalue()


def npy_parts(data):
    """(header dict, data bytes) of a .npy member."""
    stream = io.BytesIO(data)
    np.lib.format.read_magic(stream)
    shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    header = {"shape": shape, "fortran_order": fortran,
              "descr": np.lib.format.dtype_to_descr(dtype)}
    return header, data[stream.tell():]


def npy_join(header, payload, version=b"\x01\x00"):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    raw = buffer.getvalue()
    return raw[:6] + version + raw[8:] + payload


def config_of(members):
    for name, data in members:
        if name == CONFIG_KEY + ".npy":
            return json.loads(npy_parts(data)[1])
    raise AssertionError("no config")


def with_config(members, header_or_text):
    text = header_or_text if isinstance(header_or_text, bytes) else \
        json.dumps(header_or_text).encode()
    config = npy_join({"descr": "|u1", "fortran_order": False, "shape": (len(text),)}, text)
    return [(n, config if n == CONFIG_KEY + ".npy" else d) for n, d in members]


# ----------------------------------------------------------------------- mutations

def truncate(rng, data):
    return data[:rng.randrange(len(data))]


def flip_bytes(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] ^= rng.randint(1, 255)
    return bytes(data)


def zip_field(rng, data):
    """One field of a local header, central directory entry or end record set to an
    odd value: flags, methods, sizes, offsets, name lengths."""
    data = bytearray(data)
    records = [(at, sig) for sig in ZIP_FIELDS for at in find_all(data, sig)]
    at, sig = rng.choice(records)
    offset, fmt = rng.choice(ZIP_FIELDS[sig])
    bits = 8 * struct.calcsize(fmt)
    value = rng.choice([0, 1, 2, 8, 12, 14, 99, 0x20, 0x40, 0x800, 2**bits - 1,
                        rng.randrange(2**bits)])
    struct.pack_into(fmt, data, at + offset, value)
    return bytes(data)


def find_all(data, sub):
    at = data.find(sub)
    while at >= 0:
        yield at
        at = data.find(sub, at + 1)


ZIP_FIELDS = {  # signature: (offset, struct format) of its fields
    b"PK\x03\x04": [(4, "<H"), (6, "<H"), (8, "<H"), (14, "<I"), (18, "<I"), (22, "<I"),
                    (26, "<H"), (28, "<H")],
    b"PK\x01\x02": [(6, "<H"), (8, "<H"), (10, "<H"), (16, "<I"), (20, "<I"), (24, "<I"),
                    (28, "<H"), (30, "<H"), (32, "<H"), (42, "<I")],
    b"PK\x05\x06": [(8, "<H"), (10, "<H"), (12, "<I"), (16, "<I"), (20, "<H")],
}


def member_edit(rng, data):
    members = unpack(data)
    i = rng.randrange(len(members))
    name, body = members[i]
    what = rng.randrange(8)
    if what == 0:
        del members[i]
    elif what == 1:
        members.append((name, rng.choice(members)[1]))  # a duplicate name
    elif what == 2:
        members[i] = (rng.choice(["x.npy", "weight", name[:-4], name + ".npy", "0.weight.npy",
                                  "a" * 300 + ".npy", "dir/", CONFIG_KEY + ".npy"]), body)
    elif what == 3:
        members[i] = (name, bytes(rng.randrange(256) for _ in range(rng.randrange(300))))
    elif what == 4:
        j = rng.randrange(len(members))
        members[i], members[j] = (name, members[j][1]), (members[j][0], body)
    elif what == 5:
        members.append((rng.choice(["extra.npy", "0.weight_ih_l9.npy"]),
                        npy_join({"descr": "<f8", "fortran_order": False, "shape": (2,)},
                                 bytes(16))))
    elif what == 6:
        members[i] = (name, body + bytes(rng.choice([1, 8, 100])))
    else:
        return pack(members, zipfile.ZIP_DEFLATED)
    return pack(members)


def npy_header_edit(rng, data):
    members = unpack(data)
    i = rng.randrange(len(members))
    name, body = members[i]
    header, payload = npy_parts(body)
    what = rng.randrange(5)
    shape = list(header["shape"])
    if what == 0:
        shape[rng.randrange(len(shape))] = rng.choice([0, 1, 2, 3, 17, 2**31, 2**40, 2**62])
        header["shape"] = tuple(shape)
    elif what == 1:
        header["shape"] = tuple(shape + [1]) if rng.random() < 0.5 else tuple(shape[:-1])
    elif what == 2:
        header["descr"] = rng.choice(DESCRS)
    elif what == 3:
        header["fortran_order"] = not header["fortran_order"]
    else:
        version = bytes([rng.choice([0, 1, 2, 3, 255]), rng.choice([0, 1])])
        return pack([(n, npy_join(header, payload, version) if n == name else d)
                     for n, d in members])
    members[i] = (name, npy_join(header, payload))
    return pack(members)


def config_edit(rng, data):
    members = unpack(data)
    header = config_of(members)
    # a random JSON object in the header: the header itself, its config, or a layer's
    objects = [header, header["config"]] + [layer for layer in
                                            header["config"].get("layers", [])]
    target = rng.choice(objects)
    what = rng.randrange(4)
    key = rng.choice(sorted(target))
    if what == 0:
        del target[key]
    elif what == 1:
        target[rng.choice(["extra", "seed", "type", "layers"])] = rng.choice(HOSTILE)
    else:
        target[key] = rng.choice(HOSTILE)
    return pack(with_config(members, header))


def config_text_edit(rng, data):
    members = unpack(data)
    text = json.dumps(config_of(members)).encode()
    what = rng.randrange(4)
    at = rng.randrange(len(text))
    if what == 0:
        text = text[:at]
    elif what == 1:
        text = text[:at] + bytes([rng.choice(b'{}[]",:0e-\\\xff\x00 ')]) + text[at:]
    elif what == 2:
        text = b"[" * 50_000 + b"]" * 50_000
    else:
        text = text.replace(b"0.", b"NaN ", 1).replace(b"false", b'"false"', 1)
    return pack(with_config(members, text))


MUTATIONS = [truncate, flip_bytes, zip_field, member_edit, npy_header_edit, config_edit,
             config_text_edit]


# --------------------------------------------------------------------------- the test

@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fuzz")
    files = {}
    for kind, make in MODELS.items():
        path = directory / f"{kind}.npz"
        save(make(), path)
        files[kind] = path.read_bytes()
    return files


def test_originals_load(originals, tmp_path):
    for kind, data in originals.items():
        path = tmp_path / "m.npz"
        path.write_bytes(data)
        assert type(load(path)) is type(MODELS[kind]())


def run_load(path, traced):
    """(the model or the exception load raised, the peak bytes traced meanwhile or 0)."""
    if traced:
        tracemalloc.start()  # around load only: tracing slows down all it sees
    try:
        try:
            result = load(path)
        except Exception as e:  # noqa: BLE001 -- the test sorts them
            result = e
        return result, tracemalloc.get_traced_memory()[1] if traced else 0
    finally:
        if traced:
            tracemalloc.stop()


def test_damaged_files_load_or_raise_value_error_with_little_memory(originals, tmp_path):
    rng = random.Random(14)
    path = tmp_path / "case.npz"
    failures, refused = [], 0
    for case in range(CASES):
        kind = rng.choice(sorted(originals))
        mutation = MUTATIONS[case % len(MUTATIONS)]
        path.write_bytes(mutation(rng, originals[kind]))
        # 3 and the 7 mutations are coprime: each mutation is traced as often
        result, peak = run_load(path, traced=case % TRACED == 0)
        where = (case, kind, mutation.__name__)
        if isinstance(result, ValueError):
            refused += 1
            if len(str(result)) > 600 + len(str(path)):
                failures.append(where + ("a long message", str(result)[:300]))
        elif isinstance(result, Exception):
            failures.append(where + (type(result).__name__, str(result)[:300]))
        elif not isinstance(result, (clstm.LSTM, Sequential)):
            failures.append(where + ("loaded", type(result).__name__))
        if peak > SMALL:
            failures.append(where + ("peak bytes", peak))
    assert not failures, "\n".join(map(repr, failures[:20]))
    assert refused > CASES // 2, refused  # the mutations do damage
