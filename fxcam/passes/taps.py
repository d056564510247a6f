"""Taps: make the chosen nodes explicit graph outputs."""

from __future__ import annotations

from collections.abc import Mapping

import torch.fx as fx

from ..errors import LayerNotFoundError
from .common import copy_graph_module, finish


def insert_taps(gm: fx.GraphModule, taps: Mapping[str, str]) -> fx.GraphModule:
    """Return a copy of ``gm`` whose forward returns ``(original output, {layer: activation})``.

    ``taps`` maps the user-facing layer name to the fx node name, in the order the
    activations dict should have. The original output is returned untouched (a tensor for a
    classifier, or whatever structure the model returns).
    """
    gm = copy_graph_module(gm)
    graph = gm.graph
    nodes = {n.name: n for n in graph.nodes}
    missing = [n for n in taps.values() if n not in nodes]
    if missing:
        raise LayerNotFoundError(f"insert_taps: no node named {missing} in the graph; see fxcam.list_layers(model).")
    (output,) = [n for n in graph.nodes if n.op == "output"]
    (result,) = output.args
    output.args = ((result, {layer: nodes[name] for layer, name in taps.items()}),)
    return finish(gm)
