"""One flat parameter buffer with named views, and its twin for gradients.

Every parameter of a model is a view into ``data`` (one contiguous 1-D array); every gradient is
the matching view into ``grad``.  An optimiser therefore updates all parameters with a handful of
whole-buffer operations, a checkpoint is one array, and a gradient check can perturb one vector.

    buf = ParamBuffer({"enc.0.W": (784, 400), "enc.0.b": (400,)}, xp=np, dtype=np.float32)
    buf.params["enc.0.W"]   # (784, 400) view of buf.data
    buf.grads["enc.0.W"]    # (784, 400) view of buf.grad
"""
import math

import numpy as np

from .errors import MinivaeError

MAX_ELEMENTS = 2 ** 31              # parameters in one buffer (8 GiB of float32)
GRAD_TAIL = 4                       # slots after the gradient in reduce_buffer


class ParamBuffer:
    """Named views into one flat ``data`` buffer and one flat ``grad`` buffer of equal size.

    shapes: ordered mapping name -> shape.  Views are laid out in that order, C-contiguous.
    """

    def __init__(self, shapes, xp=np, dtype=np.float32):
        self.shapes = {name: tuple(int(d) for d in shape) for name, shape in shapes.items()}
        self.offsets = {}
        total = 0
        for name, shape in self.shapes.items():
            self.offsets[name] = total
            total += math.prod(shape)
        self.size = total
        if total > MAX_ELEMENTS:
            raise MinivaeError(f"{self._too_big()} exceed the bound of {MAX_ELEMENTS} (2**31); "
                               "not enough memory for these sizes: choose smaller ones")
        try:
            self.data = xp.zeros(total, dtype=dtype)
            # the gradient and 4 slots after it, so that a data-parallel step reduces the
            # gradient and its batch sums in one collective (parallel.py)
            self.reduce_buffer = xp.zeros(total + GRAD_TAIL, dtype=dtype)
            self.grad = self.reduce_buffer[:total]
        except (MemoryError, ValueError):
            raise MinivaeError(f"{self._too_big()} do not fit in memory (twice, with their "
                               "gradients): choose smaller sizes") from None
        self.params = self._views(self.data)
        self.grads = self._views(self.grad)

    def _too_big(self):
        name = max(self.shapes, key=lambda n: math.prod(self.shapes[n]))
        return (f"{self.size} parameters (the largest, {name}, has shape "
                f"{self.shapes[name]})")

    def _views(self, flat):
        views = {}
        for name, shape in self.shapes.items():
            o = self.offsets[name]
            views[name] = flat[o:o + math.prod(shape)].reshape(shape)
        return views

    def __len__(self):
        return self.size
