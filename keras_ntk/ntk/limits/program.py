"""A network as a program of kernel maps: layouts, position-pair modes, memory, one tile.

Built once per model: every tensor gets a static Layout; a backward pass marks
the tensors whose consumers read pairs of different positions (pooling), which
are kept as "pairs" kernels, all other image tensors as "diag" (a network that
flattens its features never forms a cross-position pair); then the peak number
of kernel entries alive at once gives the memory of a tile.
"""

import dataclasses
import math

import tensorflow as tf

from keras_ntk.ntk.limits import graph, registry, spatial
from keras_ntk.ntk.limits.state import Kernels, Layout

BYTES = 8  # float64


@dataclasses.dataclass(frozen=True)
class Step:
    """One kernel map applied to tensors `inputs` (read in the modes of `reads`)."""

    map: object
    inputs: tuple
    output: int
    reads: tuple


def _input_layout(input_shape):
    """Images (H, W, C) keep their positions; vectors (d,) have none; any other
    shape (..., C) has its positions in one axis, (positions, 1)."""
    shape = tuple(input_shape)
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(
            "The infinite-width kernel needs a model input of known shape, (batch, features) "
            f"or (batch, height, width, channels), got (batch, *{shape})."
        )
    if len(shape) == 3:
        positions = shape[:2]
    else:
        positions = () if len(shape) == 1 else (math.prod(shape[:-1]), 1)
    return Layout(spatial=positions, source="input", fresh=None, ancestors=frozenset(), rank=len(shape) + 1)


class Program:
    """The kernel maps of a network in execution order.

    Args:
      input_shape: one example's shape, (d,) or (H, W, C).
      calls: (input tensor numbers, output number, maps_for(input layouts) ->
        list of kernel maps applied in order); tensor 0 is the network input.
      output: the number of the network's output tensor.
    """

    def __init__(self, input_shape, calls, output):
        self.input_shape = tuple(input_shape)
        layouts = {0: _input_layout(self.input_shape)}
        renamed = {0: 0}
        steps = []
        for inputs, out, maps_for in calls:
            current = [renamed[i] for i in inputs]
            for kernel_map in maps_for([layouts[i] for i in current]):
                number = len(layouts)
                layouts[number] = kernel_map.layout([layouts[i] for i in current])
                steps.append((kernel_map, tuple(current), number))
                current = [number]
            renamed[out] = current[0]
        self.output = renamed[output]

        needs_pairs = dict.fromkeys(layouts, False)
        reads_pairs = []
        for kernel_map, inputs, out in reversed(steps):
            reads = kernel_map.input_needs_pairs(needs_pairs[out], [layouts[i] for i in inputs])
            reads_pairs.append(reads)
            for i in inputs:
                needs_pairs[i] |= reads
        reads_pairs.reverse()

        def mode(layout, pairs):
            return "flat" if not layout.spatial else ("pairs" if pairs else "diag")

        self.layouts = {
            t: dataclasses.replace(layout, mode=mode(layout, needs_pairs[t])) for t, layout in layouts.items()
        }
        self.steps = [
            Step(
                kernel_map,
                inputs,
                out,
                tuple(
                    dataclasses.replace(self.layouts[i], mode=mode(self.layouts[i], reads)) for i in inputs
                ),
            )
            for (kernel_map, inputs, out), reads in zip(steps, reads_pairs)
        ]
        self._count_entries()

    @classmethod
    def from_model(cls, model, hermite_terms):
        """The program of a built Keras model (graph.py walks it, registry.py maps each layer)."""
        calls, output = graph.layer_calls(model)

        def maps_for(layer):
            return lambda layouts: registry.kernel_maps(layer, layouts[0].rank, hermite_terms)

        return cls(
            model.input_shape[1:], [(c.inputs, c.output, maps_for(c.layer)) for c in calls], output
        )

    @classmethod
    def chain(cls, input_shape, kernel_maps):
        """The program of maps applied one after the other to the input."""
        return cls(input_shape, [((0,), 1, lambda layouts: list(kernel_maps))], 1)

    # -- sizes ------------------------------------------------------------------
    def _entries(self, layout):
        return spatial.position_count(layout.mode, layout.spatial)

    def _count_entries(self):
        last_use = {self.output: len(self.steps)}
        for index, step in enumerate(self.steps):
            for i in step.inputs:
                last_use[i] = max(last_use.get(i, index), index)
        live = {0}
        peak = self._entries(self.layouts[0])
        for index, step in enumerate(self.steps):
            converted = sum(
                self._entries(read) for i, read in zip(step.inputs, step.reads) if read.mode != self.layouts[i].mode
            )
            out = self._entries(self.layouts[step.output])
            during = sum(self._entries(self.layouts[t]) for t in live) + converted
            peak = max(peak, during + out * (1 + step.map.temporaries))
            live.add(step.output)
            live -= {t for t in live if last_use.get(t, -1) <= index}
        self.peak_entries = peak
        self.total_entries = sum(self._entries(self.layouts[step.output]) for step in self.steps)

    def tile_bytes(self, rows, cols, ntk):
        """Estimated peak bytes of one tile: every kernel alive at once plus the maps'
        temporaries, rows x cols example pairs (nngp and ntk) and rows + cols self kernels."""
        arrays = 2 if ntk else 1
        inputs = (rows + cols) * math.prod(self.input_shape)
        return BYTES * (self.peak_entries * (rows * cols * arrays + rows + cols) + inputs)

    def describe(self):
        """[(layer name, map, mode, spatial shape)] of every step, in order."""
        return [
            (s.map.name, type(s.map).__name__, self.layouts[s.output].mode, self.layouts[s.output].spatial)
            for s in self.steps
        ]

    # -- evaluation -------------------------------------------------------------
    def _input_kernels(self, a, b, ntk):
        layout = self.layouts[0]
        channels = self.input_shape[-1]
        if layout.spatial:  # (n, H, W, C), or (n, positions, 1, C)
            a = tf.reshape(a, (-1, *layout.spatial, channels))
            b = None if b is None else tf.reshape(b, (-1, *layout.spatial, channels))
        if layout.mode == "flat":
            cross, self_ = "nd,md->nm", "nd,nd->n"
        elif layout.mode == "diag":
            cross, self_ = "nhwc,mhwc->nmhw", "nhwc,nhwc->nhw"
        else:
            cross, self_ = "nhwc,mijc->nmhwij", "nhwc,nijc->nhwij"
        nngp = tf.einsum(cross, a, a if b is None else b) / channels
        cov1 = tf.einsum(self_, a, a)[:, None] / channels
        cov2 = None if b is None else tf.einsum(self_, b, b)[None] / channels
        return Kernels(cov1, cov2, nngp, tf.zeros_like(nngp) if ntk else None)

    def evaluate(self, a, b, ntk):
        """(nngp, ntk or None), each (n, m) float64, of inputs a (n, ...) and b (m, ...)
        (b None: b = a). Outputs with positions give the mean over positions."""
        kernels = {0: self._input_kernels(a, b, ntk)}
        for step in self.steps:
            inputs = [
                _convert(kernels[i], self.layouts[i].mode, read.mode) for i, read in zip(step.inputs, step.reads)
            ]
            kernels[step.output] = step.map(inputs, list(step.reads), self.layouts[step.output])
        out, layout = kernels[self.output], self.layouts[self.output]
        nngp = spatial.mean_positions(out.nngp, layout.mode)
        if out.ntk is None:
            return nngp, None
        return nngp, spatial.mean_positions(out.ntk, layout.mode) + layout.self_share * nngp


def _convert(kernels, have, want):
    if have == want:
        return kernels
    if (have, want) != ("pairs", "diag"):
        raise AssertionError(f"cannot convert a {have!r} kernel to {want!r}")
    cov1, cov2 = kernels.covariances(spatial.diagonal)
    ntk = None if kernels.ntk is None else spatial.diagonal(kernels.ntk)
    return Kernels(cov1, cov2, spatial.diagonal(kernels.nngp), ntk)
