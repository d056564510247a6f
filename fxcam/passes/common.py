"""Small helpers shared by the passes: copy a GraphModule, finish (lint + recompile) one."""

from __future__ import annotations

import copy

import torch.fx as fx


def copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A new GraphModule over a deep copy of ``gm``'s graph; submodules and parameters are shared."""
    new = fx.GraphModule(gm, copy.deepcopy(gm.graph), type(gm).__name__)
    new.meta = dict(getattr(gm, "meta", {}))
    return new


def finish(gm: fx.GraphModule) -> fx.GraphModule:
    """Lint and recompile ``gm`` after a rewrite; returns it."""
    gm.graph.lint()
    gm.recompile()
    return gm
