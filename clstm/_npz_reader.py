"""Reading an untrusted ``.npz`` archive with bounded cost, for :func:`clstm.io.load`.

Nothing here trusts a size that the file states: a member is read only after its
``.npy`` header has been checked against the shape and dtype the caller expects, never
past the byte count those imply, and every failure of the zip, zlib or ``.npy`` parsers
becomes a :class:`Refused` (a ``ValueError``) with a short message.
"""
import contextlib
import io
import math
import reprlib
import struct
import zipfile
import zlib

import numpy as np
from numpy.lib import format as npy_format

# A .npy header is a padded dict literal; NumPy itself refuses one over 10 000
# characters, and np.save writes 128 bytes or so.
MAX_NPY_HEADER = 1 << 16

# Members may be deflated (np.savez_compressed), but float weights barely compress: an
# archive whose members would expand to more than this many times the file's size is
# not a model's weights but a decompression bomb.
MAX_EXPANSION = 16

# What the zip, zlib and .npy parsers raise on malformed input: from a truncated archive
# (EOFError, BadZipFile, OSError for a seek before its start) to an encrypted or oddly
# flagged member (RuntimeError, NotImplementedError), a name that is not the UTF-8 it
# claims (UnicodeDecodeError, a ValueError) or a header nested too deep
# (RecursionError, a RuntimeError).
_PARSER_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, struct.error,
                  EOFError, OSError, ValueError, KeyError, IndexError, OverflowError,
                  RuntimeError, MemoryError, SyntaxError)

_repr = reprlib.Repr()
_repr.maxlevel = 3
_repr.maxdict = _repr.maxlist = _repr.maxtuple = _repr.maxset = 6
_repr.maxstring = _repr.maxother = 80
_repr.maxlong = 40


class Refused(ValueError):
    """A file that :func:`clstm.io.load` refuses; the message says why."""


def short(value, limit=100):
    """``value`` for an error message: its repr, cut to at most ``limit`` characters.

    Whatever a hostile file holds is echoed only through this or :func:`short_text`, so
    that no message grows with the file.
    """
    return short_text(_repr.repr(value), limit)


def short_text(text, limit=100):
    """``text`` cut to at most ``limit`` characters."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


@contextlib.contextmanager
def parsing(path, what):
    """Turn the parsers' exceptions into a :class:`Refused` naming ``what`` was read."""
    try:
        yield
    except Refused:
        raise
    except _PARSER_ERRORS as e:
        raise Refused(f"{path}: expected a complete .npz archive, but it cannot be read "
                      f"(truncated or corrupt?): {what}: {type(e).__name__}: "
                      f"{short_text(str(e))}") from e


def open_archive(f, path):
    """The zip archive in the open binary file ``f``: (ZipFile, {key: ZipInfo}).

    Keys are the member names without ``.npy``, as ``np.load`` gives them.

    Refuses duplicate names, names that are not ``<key>.npy``, encrypted members,
    compression other than stored or deflated (bzip2 and lzma decompress without an
    output bound in zipfile), and members that declare more bytes in all than
    ``MAX_EXPANSION`` times the file's size.
    """
    size = f.seek(0, io.SEEK_END)
    f.seek(0)
    with parsing(path, "the zip directory"):
        archive = zipfile.ZipFile(f)
        infos = archive.infolist()
    members = {}
    for info in infos:
        name = info.filename
        if not name.endswith(".npy"):
            raise Refused(f"{path}: expected only .npy arrays in the archive, got a member "
                          f"{short(name)} that is not one")
        if name[:-4] in members:
            raise Refused(f"{path}: expected each member name once, got {short(name)} "
                          "more than once")
        if info.flag_bits & 0x1:
            raise Refused(f"{path}: expected unencrypted members, got {short(name)} "
                          "encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise Refused(f"{path}: expected members stored or deflated, got "
                          f"{short(name)} with compression method {info.compress_type}")
        members[name[:-4]] = info
    declared = sum(info.file_size for info in infos)
    if declared > MAX_EXPANSION * size + MAX_NPY_HEADER:
        raise Refused(f"{path}: expected members adding up to at most {MAX_EXPANSION} "
                      f"times the file's {size} bytes, got {declared} bytes declared "
                      "(a decompression bomb?)")
    return archive, members


class _Capped:
    """A read-only stream that yields at most ``limit`` bytes of ``stream``.

    numpy's header reader asks for as many bytes as the header says it has; through
    this, a lying length cannot make a deflated member inflate past the limit.
    """

    def __init__(self, stream, limit):
        self._stream = stream
        self.left = limit

    def read(self, n=-1):
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self._stream.read(n)
        self.left -= len(data)
        return data


class Header:
    """A member's .npy header: shape, dtype, fortran order, and where its data starts."""

    def __init__(self, shape, dtype, fortran, offset):
        self.shape, self.dtype, self.fortran, self.offset = shape, dtype, fortran, offset


def read_header(archive, info, path, label):
    """The .npy header of member ``info``, read without its data (``label`` names it).

    Refuses object arrays, whose data would be a pickle.
    """
    with parsing(path, label), archive.open(info) as member:
        stream = _Capped(member, MAX_NPY_HEADER)
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(stream)
        else:
            raise Refused(f"{path}: {label}: expected a .npy array of format 1.0 or 2.0, "
                          f"got format {short(version)}")
    if dtype.hasobject:
        raise Refused(f"{path}: {label}: expected arrays of numbers, got pickled objects, "
                      "which are refused: unpickling can run arbitrary code")
    return Header(shape, dtype, fortran, MAX_NPY_HEADER - stream.left)


def check_header(header, info, path, label, dtype, shape):
    """Refuse a member whose header does not give ``dtype`` and ``shape``, or that does
    not hold exactly the bytes they imply after its header."""
    if header.shape != tuple(shape):
        raise Refused(f"{path}: {label}: expected shape {tuple(shape)} (from the config), "
                      f"got {short(header.shape)}")
    if header.dtype != dtype:
        raise Refused(f"{path}: {label}: expected dtype {np.dtype(dtype)} (from the "
                      f"config), got {short_text(str(header.dtype))}")
    nbytes = header.dtype.itemsize * math.prod(shape)
    if info.file_size != header.offset + nbytes:
        raise Refused(f"{path}: {label}: expected {nbytes} bytes of data after the .npy "
                      f"header, got a member with {info.file_size - header.offset}")


def read_data(archive, info, header, path, label, dtype, shape):
    """The array of member ``info``, checked by :func:`check_header` first.

    Read with a bound of exactly the header's and the data's bytes (which ``shape``
    implies), so a member cannot inflate further; zipfile checks the CRC on reaching
    the member's end.
    """
    check_header(header, info, path, label, dtype, shape)
    with parsing(path, label), archive.open(info) as member:
        # header and data in one read: ZipExtFile copies what it joins from two
        raw = member.read(info.file_size)
    if len(raw) != info.file_size:
        raise Refused(f"{path}: {label}: expected {info.file_size} bytes, got "
                      f"{len(raw)} (truncated or corrupt?)")
    array = np.frombuffer(raw, dtype=header.dtype, offset=header.offset)
    return array.reshape(shape[::-1]).T if header.fortran else array.reshape(shape)
