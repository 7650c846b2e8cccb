from .shapes import make_shapes
