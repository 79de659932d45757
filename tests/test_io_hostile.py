"""clstm.load on hostile files: each case a probe of issue 14 found on the old loader.

Every refusal must be a ValueError with a short message, raised before the model is
built: the memory a refusal costs (measured with tracemalloc, which sees NumPy's
buffers) stays small whatever sizes the file claims.
"""

import io
import json
import struct
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest

import clstm
from clstm.io import CONFIG_KEY, load, save
from clstm.layers import Dense, Dropout, Embedding
from clstm.models import Regressor, Sequential

SMALL = 8 << 20  # bytes: a refusal may allocate this much at most (the files are ~3 KB)


def members_of(path):
    """[(name, bytes)] of an archive, in order."""
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def write_members(path, members, compression=zipfile.ZIP_STORED):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        with zipfile.ZipFile(path, "w", compression) as z:
            for name, data in members:
                z.writestr(name, data)


def npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npy_header(shape, descr):
    """The bytes of a .npy header (format 1.0) declaring ``shape`` and ``descr``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def config_bytes(header):
    """A config member holding ``header`` as JSON (or the raw bytes given)."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return npy_bytes(np.frombuffer(text, dtype=np.uint8))


def edit_config(path, change):
    """Rewrite the archive with ``change(header)`` applied to its parsed config."""
    members = members_of(path)
    index = [n for n, _ in members].index(CONFIG_KEY + ".npy")
    header = json.loads(np.load(io.BytesIO(members[index][1])).tobytes())
    change(header)
    members[index] = (CONFIG_KEY + ".npy", config_bytes(header))
    write_members(path, members)


def refusal(path):
    """The ValueError load(path) raises, and the peak bytes traced while it ran."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as info:
            load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert type(info.value) is ValueError  # no other type, not even a subclass
    message = str(info.value)
    assert len(message) < 500 + len(str(path)), message[:1000]
    return message, peak


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.npz"
    save(Regressor(3, 4, output_size=2, dtype="float64", seed=1), path)
    return path


@pytest.fixture
def sequential(tmp_path):
    path = tmp_path / "seq.npz"
    save(Sequential([Embedding(9, 3, seed=1), clstm.LSTM(3, 4, seed=2), Dropout(0.1),
                     Dense(4, 2, seed=3)]), path)
    return path


# ------------------------------------------------------------ sizes the file cannot back

def test_a_million_layers_are_refused_without_building_them(saved):
    edit_config(saved, lambda h: h["config"].update(num_layers=1_000_000))
    message, peak = refusal(saved)
    assert "expected 4000002 weights for this config, got 6" in message
    assert peak < SMALL


def test_a_huge_hidden_size_is_refused_before_any_allocation(saved):
    edit_config(saved, lambda h: h["config"].update(hidden_size=8192))
    message, peak = refusal(saved)
    assert "expected shape (32768, 3) (from the config), got (16, 3)" in message
    assert peak < SMALL


def test_an_npy_header_declaring_a_huge_shape_is_refused(saved):
    members = dict(members_of(saved))
    data = members["2.bias.npy"][-16:]  # (2,) float64
    members["2.bias.npy"] = npy_header((2**40,), "<f8") + data
    write_members(saved, members.items())
    message, peak = refusal(saved)
    assert "expected shape (2,) (from the config), got (1099511627776,)" in message
    assert peak < SMALL


def test_a_config_member_declaring_a_huge_shape_is_refused(saved):
    members = dict(members_of(saved))
    text = np.load(io.BytesIO(members[CONFIG_KEY + ".npy"])).tobytes()
    members[CONFIG_KEY + ".npy"] = npy_header((2**40,), "|u1") + text
    write_members(saved, members.items())
    message, peak = refusal(saved)
    assert "as a 1-D uint8 array of at most" in message
    assert peak < SMALL


def add_deflated_zeros(path, name, shape, nbytes=None):
    """Append member ``name``: a float64 .npy header of ``shape``, then ``nbytes`` zero
    bytes (default: what the shape needs), deflated, with honest size and CRC; streamed,
    so the test never holds it whole."""
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as z, z.open(name, "w") as w:
        w.write(npy_header(shape, "<f8"))
        chunk = bytes(1 << 20)
        left = 8 * int(np.prod(shape)) if nbytes is None else nbytes
        while left:
            w.write(chunk[:min(left, len(chunk))])
            left -= min(left, len(chunk))


def patch_central(path, name, offset, fmt, value):
    """Overwrite a field of member ``name``'s central directory entry (at ``offset``
    from the entry's start: 8 flags, 10 method, 24 uncompressed size, 46 the name)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        entry = data.index(b"PK\x01\x02", z.start_dir)
    while data[entry + 46:entry + 46 + len(name)] != name.encode():
        entry = data.index(b"PK\x01\x02", entry + 4)
    if callable(value):
        value = value(struct.unpack_from(fmt, data, entry + offset)[0])
    struct.pack_into(fmt, data, entry + offset, value)
    path.write_bytes(bytes(data))


def test_a_decompression_bomb_is_not_inflated(saved):
    write_members(saved, [m for m in members_of(saved) if m[0] != "2.weight.npy"])
    add_deflated_zeros(saved, "2.weight.npy", (8 << 20,))  # 64 MiB from ~64 KiB
    assert saved.stat().st_size < 200_000
    message, peak = refusal(saved)
    assert "a decompression bomb?" in message
    assert peak < SMALL


def test_a_member_that_understates_its_size_is_read_no_further(saved):
    # 2.weight's header says (2, 4) float64, as the config does, but 64 MiB follow it
    # where its directory entry declares the 128 + 64 bytes that shape takes
    write_members(saved, [m for m in members_of(saved) if m[0] != "2.weight.npy"])
    add_deflated_zeros(saved, "2.weight.npy", (2, 4), 64 << 20)
    patch_central(saved, "2.weight.npy", 24, "<I", 128 + 64)
    message, peak = refusal(saved)
    assert "'2.weight'" in message
    assert peak < SMALL


# ----------------------------------------------------------------- malformed contents

def test_deeply_nested_json_is_refused(saved):
    members = dict(members_of(saved))
    members[CONFIG_KEY + ".npy"] = config_bytes(b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
    write_members(saved, members.items())
    message, _ = refusal(saved)
    assert "expected the config as UTF-8 JSON" in message and "RecursionError" in message
    with pytest.raises(ValueError) as info:
        load(saved)
    assert isinstance(info.value.__cause__, RecursionError)  # chained, for debugging


def test_invalid_utf8_in_the_config_is_refused(saved):
    members = dict(members_of(saved))
    members[CONFIG_KEY + ".npy"] = config_bytes(b'{"a": "\xff"}')
    write_members(saved, members.items())
    message, _ = refusal(saved)
    assert "UnicodeDecodeError" in message


@pytest.mark.parametrize("offset, value, words", [
    (8, lambda flags: flags | 0x1, "expected unencrypted members"),  # was RuntimeError
    (8, lambda flags: flags | 0x40, "NotImplementedError: strong encryption"),  # was too
    (8, lambda flags: flags | 0x20, "NotImplementedError: compressed patched data"),
    (10, 12, "expected members stored or deflated"),  # bzip2: zipfile has no output bound
    (10, 99, "expected members stored or deflated"),  # was NotImplementedError
])
def test_altered_zip_flags_are_refused(saved, offset, value, words):
    patch_central(saved, "2.bias.npy", offset, "<H", value)
    message, _ = refusal(saved)
    assert words in message


def test_a_member_name_that_is_not_the_utf8_it_claims_is_refused(saved):
    patch_central(saved, "2.bias.npy", 8, "<H", lambda flags: flags | 0x800)
    patch_central(saved, "2.bias.npy", 46, "B", 0xFF)  # '2' -> an invalid UTF-8 byte
    assert "UnicodeDecodeError" in refusal(saved)[0]


# ------------------------------------------------------------------ strict JSON types

@pytest.mark.parametrize("field, value, words", [
    ("batch_first", "false", "batch_first: expected true or false, got 'false' (a string)"),
    ("peephole", 0, "peephole: expected true or false, got 0 (an int)"),
    ("hidden_size", "4", "hidden_size: expected an int in [1, 2147483647], got '4'"),
    ("hidden_size", 4.0, "hidden_size: expected an int in [1, 2147483647], got 4.0"),
    ("hidden_size", True, "hidden_size: expected an int in [1, 2147483647], got True (a bool)"),
    ("input_size", 2**31, "input_size: expected an int in [1, 2147483647]"),
    ("dropout", "0.0", "dropout: expected a number in [0, 1), got '0.0'"),
    ("dropout", False, "dropout: expected a number in [0, 1), got False (a bool)"),
    ("dtype", "float16", "dtype: expected one of \"float32\", \"float64\""),
])
def test_an_lstm_config_is_read_with_strict_json_types(tmp_path, field, value, words):
    path = tmp_path / "lstm.npz"
    save(clstm.LSTM(3, 4), path)
    edit_config(path, lambda h: h["config"].update({field: value}))
    message, _ = refusal(path)
    assert "the config cannot build a LSTM: config." + words in message


@pytest.mark.parametrize("layer, field, value", [
    (0, "num_embeddings", "9"),  # each of these loaded on the old code
    (0, "embedding_dim", 3.0),
    (3, "in_features", 4.0),
    (3, "bias", "true"),
    (2, "p", "0.1"),
    (1, "peephole", ""),
])
def test_sequential_layer_fields_are_read_strictly(sequential, layer, field, value):
    edit_config(sequential, lambda h: h["config"]["layers"][layer].update({field: value}))
    message, _ = refusal(sequential)
    assert f"config.layers[{layer}].{field}: expected" in message


def test_unknown_and_missing_config_fields_are_refused(saved):
    edit_config(saved, lambda h: h["config"].update(extra=1))
    assert "got also ['extra']" in refusal(saved)[0]
    def drop(header):
        del header["config"]["extra"], header["config"]["seed"]

    edit_config(saved, drop)
    assert "config.seed: expected a value, got none (missing)" in refusal(saved)[0]


def test_a_bool_format_version_is_refused(saved):
    edit_config(saved, lambda h: h.update(format_version=True))
    assert "expected format_version 1, got True" in refusal(saved)[0]


def test_duplicate_json_keys_are_refused(saved):
    members = dict(members_of(saved))
    header = json.loads(np.load(io.BytesIO(members[CONFIG_KEY + ".npy"])).tobytes())
    text = json.dumps(header)[:-1] + ', "class": "LSTM"}'
    members[CONFIG_KEY + ".npy"] = config_bytes(text.encode())
    write_members(saved, members.items())
    assert "expected each key once in a JSON object, got 'class'" in refusal(saved)[0]


def test_nan_in_the_config_is_refused(saved):
    members = dict(members_of(saved))
    header = json.loads(np.load(io.BytesIO(members[CONFIG_KEY + ".npy"])).tobytes())
    text = json.dumps(header).replace('"dropout": 0.0', '"dropout": NaN')
    members[CONFIG_KEY + ".npy"] = config_bytes(text.encode())
    write_members(saved, members.items())
    assert "expected finite numbers, got NaN" in refusal(saved)[0]


# --------------------------------------------------------------------- archive members

def test_a_duplicated_member_name_is_refused(saved):
    members = members_of(saved)
    members.append(("2.bias.npy", npy_bytes(np.full(2, 7.0))))  # the old loader took this
    write_members(saved, members)
    assert "expected each member name once, got '2.bias.npy' more than once" in \
        refusal(saved)[0]


def test_a_member_that_is_not_npy_is_refused(saved):
    members = members_of(saved) + [("notes.txt", b"hello")]
    write_members(saved, members)
    assert "expected only .npy arrays in the archive, got a member 'notes.txt'" in \
        refusal(saved)[0]


@pytest.mark.parametrize("extra, words", [
    (60, "missing [], unexpected ['extra0000xxx"),  # a near miss: named, briefly
    (300, "expected 6 weights for this config, got 306 in the archive"),
])
def test_many_unexpected_members_are_refused_briefly(saved, extra, words):
    members = members_of(saved) + [(f"extra{i:04d}" + "x" * 200 + ".npy",
                                    npy_bytes(np.zeros(1))) for i in range(extra)]
    write_members(saved, members)
    message, _ = refusal(saved)
    assert words in message


def test_a_member_with_extra_bytes_after_its_data_is_refused(saved):
    members = dict(members_of(saved))
    members["2.bias.npy"] += b"\0" * 8
    write_members(saved, members.items())
    assert "'2.bias': expected 16 bytes of data after the .npy header, got a member " \
        "with 24" in refusal(saved)[0]


def test_deflated_and_fortran_members_still_load(saved, tmp_path):
    model = load(saved)
    members = dict(members_of(saved))
    weight = model.params["2.weight"]
    members["2.weight.npy"] = npy_bytes(np.asfortranarray(weight))
    assert b"'fortran_order': True" in members["2.weight.npy"]
    write_members(tmp_path / "deflated.npz", members.items(), zipfile.ZIP_DEFLATED)
    loaded = load(tmp_path / "deflated.npz")
    for name, value in model.params.items():
        np.testing.assert_array_equal(loaded.params[name], value, err_msg=name)
