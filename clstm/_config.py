"""Strict reading of a module's config from JSON (what :func:`clstm.load` does first).

A config is a module's constructor arguments as JSON values (``Module.get_config``).
Each module class reads its own back with :meth:`Module.read_config`, through a
:class:`Fields` reader, and says which parameters a config implies with
:meth:`Module.parameter_shapes`, so that a file from anywhere is checked against the
class before anything is built; the class is the one place that knows its config.
"""
import json

from ._npz_reader import short as _short

#: Every size must fit the C int that BLAS takes.
MAX_SIZE = 2**31 - 1
DTYPES = ("float32", "float64")


class BadConfig(Exception):
    """A config field that cannot build the module; load() adds the path and class."""


def what(value):
    """A JSON value for a message: its short repr and, where that is ambiguous, type."""
    kinds = {bool: "a bool", int: "an int", float: "a float", str: "a string",
             list: "an array", dict: "an object", type(None): "null"}
    return f"{_short(value)} ({kinds.get(type(value), type(value).__name__)})"


class Fields:
    """Reads the fields of one JSON object strictly, naming each one in its errors.

    JSON gives exact types, so a size must be an int (not a bool, a float or a string)
    and a flag a bool: a file that says ``"batch_first": "false"`` is refused rather
    than read as true. Every field save writes is required, and (after :meth:`done`) no
    other is allowed.
    """

    def __init__(self, data, where):
        if type(data) is not dict:
            raise BadConfig(f"{where}: expected a JSON object, got {what(data)}")
        self.data, self.where, self.read = data, where, set()

    def value(self, key):
        if key not in self.data:
            raise BadConfig(f"{self.where}.{key}: expected a value, got none (missing)")
        self.read.add(key)
        return self.data[key]

    def refuse(self, key, expected):
        raise BadConfig(f"{self.where}.{key}: expected {expected}, got "
                        f"{what(self.data[key])}")

    def int(self, key, minimum=1, maximum=MAX_SIZE, *, optional=False, default=None):
        """An int in [minimum, maximum] (or null when optional); with a default, a field
        that may be missing."""
        if default is not None and key not in self.data:
            return default
        value = self.value(key)
        if optional and value is None:
            return None
        if type(value) is not int or not minimum <= value <= maximum:
            self.refuse(key, f"an int in [{minimum}, {maximum}]"
                        + (" or null" if optional else ""))
        return value

    def bool(self, key, *, default=None):
        """A flag; with a default, a field that may be missing (one added to a class's
        config after files were saved without it)."""
        if default is not None and key not in self.data:
            return default
        value = self.value(key)
        if type(value) is not bool:
            self.refuse(key, "true or false")
        return value

    def probability(self, key):
        value = self.value(key)  # save may write an int 0 for a dropout given as 0
        if type(value) not in (int, float) or not 0.0 <= value < 1.0:
            self.refuse(key, "a number in [0, 1)")
        return value

    def choice(self, key, options, *, default=None):
        """One of ``options``; with a default, a field that may be missing."""
        if default is not None and key not in self.data:
            return default
        value = self.value(key)
        if type(value) not in (str, type(None)) or value not in options:
            self.refuse(key, "one of " + ", ".join(json.dumps(o) for o in options))
        return value

    def dtype(self, key="dtype", *, optional=False):
        return self.choice(key, DTYPES + ((None,) if optional else ()))

    def seed(self, key="seed"):
        value = self.value(key)
        if value is not None and (type(value) is not int or value < 0):
            self.refuse(key, "an int >= 0 or null")
        return value

    def done(self):
        unknown = sorted(set(self.data) - self.read)
        if unknown:
            raise BadConfig(f"{self.where}: expected only the fields "
                            f"{sorted(self.read)}, got also {_short(unknown)}")


def read_module_config(cls, config, where):
    """``cls.read_config`` over the JSON object ``config``, allowing no other field."""
    fields = Fields(config, where)
    checked = cls.read_config(fields)
    fields.done()
    return checked
