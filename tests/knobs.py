"""Temporarily changed kernel tuning knobs, restored whatever the test does."""
import contextlib


@contextlib.contextmanager
def kernel_knob(setter, value):
    """Run the block with ``setter(value)`` in effect; ``setter`` returns the old value
    (as the kernels' ``_set_*`` functions do), which is put back afterwards."""
    old = setter(value)
    try:
        yield
    finally:
        setter(old)
