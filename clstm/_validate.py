"""Turning user input into the arrays the kernels take, or a clear error."""
import numpy as np

FLOAT_DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


def float_dtype(dtype):
    """np.float32 or np.float64 from a name, a NumPy dtype or a scalar type."""
    # A dtype that is not float32 or float64 is a wrong value of this argument:
    # ValueError, whether NumPy knows the name or not.
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype: expected 'float32' or 'float64', got {dtype!r}") from None
    if dt not in FLOAT_DTYPES.values():
        raise ValueError(f"dtype: expected 'float32' or 'float64', got {dt.name!r}")
    return dt


def as_real_array(value, name):
    """``value`` as an array of real numbers (int, bool or float: no conversion, no copy
    of an array), or TypeError as :func:`as_float_array` gives it."""
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError) as e:
            raise TypeError(f"{name}: expected an array of numbers, got {type(value).__name__} ({e})") from None
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name}: expected real numbers (float, int or bool), got dtype {arr.dtype}")
    return arr


def as_float_array(value, dtype, name, *, copy=False):
    """``value`` as a C-contiguous array of ``dtype``.

    Integers, booleans and floats convert (float64 to float32 rounds, as a float32 model
    computes in float32 anyway); complex numbers, strings and objects raise TypeError,
    since no conversion keeps their meaning.
    """
    arr = as_real_array(value, name)
    if copy:
        return np.array(arr, dtype=dtype, order="C", copy=True)
    return np.ascontiguousarray(arr, dtype=dtype)


def check_shape(arr, expected, name):
    if arr.shape != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)}, got {arr.shape}")


def positive_int(value, name, *, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


# The kernels and BLAS take every dimension (4 * hidden_size, input_size, a Dense layer's
# features) as a C int.
C_INT_MAX = 2**31 - 1

# The most parameters a layer may hold: 2**36 (64 Gi; 256 GiB in float32, plus as much
# again for the gradients) is past any model this CPU library could train, so a larger
# count is taken for a mistake in the sizes and refused before allocating (sizes are
# multiplied as Python ints, which do not overflow as NumPy's int64 did).
MAX_PARAMETERS = 2**36


def at_most(value, limit, name, why):
    """``value`` unchanged, or ValueError when it exceeds ``limit``."""
    if value > limit:
        raise ValueError(f"{name}: expected at most {limit} ({why}), got {value}")
    return value


def parameter_count(count, owner):
    """``count`` unchanged, or ValueError when it exceeds MAX_PARAMETERS."""
    return at_most(count, MAX_PARAMETERS, f"{owner}: number of parameters",
                   "2**36, 256 GiB of float32 weights: larger is taken for a mistake in the sizes")
