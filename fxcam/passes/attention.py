"""Explicit attention: make every attention's post-softmax probabilities a node of the graph.

Attention-based methods (LeGrad, gradient-weighted rollout) need the attention
probabilities ``A = softmax(q k^T * scale + bias)`` and their gradient. Three shapes occur in
traced vision transformers:

- explicit ``softmax`` -> ``matmul`` (timm Swin, timm ViT with ``fused_attn=False``, most
  hand-written attention): already a node; it is found and marked.
- ``F.scaled_dot_product_attention`` (timm ViT/DeiT/EVA with ``fused_attn=True``, the
  default): one fused call, the probabilities never exist. The call is rewritten into
  ``attention_logits(q, k, ...)`` -> ``torch.softmax`` -> ``attention_values(A, v)``, which is
  the reference semantics of the fused kernel (scale, boolean/additive mask, causal mask,
  grouped-query heads, dropout when ``dropout_p`` is not the literal 0).
- ``nn.MultiheadAttention`` (torchvision ViT): a leaf module to fx, so one opaque
  ``call_module`` node. Self- or cross-attention without masks or added bias tokens is
  rewritten into its math on the module's own parameters (``get_attr``): input projection,
  logits, softmax, values, output projection. Calls with masks or ``bias_k``/``add_zero_attn``
  are left fused (and then offer no attention node).

The rewrite is the *explicit* path the fused kernels optimise; outputs agree with the fused
graph to float rounding (about 1e-6 relative), not bit for bit. That is why only the graphs
built for attention methods go through this pass: the instrumented graph of every other
method keeps the model's fused kernels and its bit-identical logits.

Each probability node gets ``node.meta[ATTENTION]``: the qualified name of the attention
module it belongs to (``blocks.11.attn``, ``encoder.layers.encoder_layer_11.self_attention``).
"""

from __future__ import annotations

import inspect
import math
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .common import copy_graph_module, finish

NAME = "fxcam_name"  # the qualified-name meta key (fxcam.trace.NAME; passes do not import trace)
ATTENTION = "fxcam_attention"  # node.meta key on attention-probability nodes: the attention module's name

_SDPA = (F.scaled_dot_product_attention, torch._C._nn.scaled_dot_product_attention)
_SDPA_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_MHA_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)
_SOFTMAX_FUNCTIONS = (torch.softmax, F.softmax, torch.Tensor.softmax, torch.special.softmax)
_MATMUL_FUNCTIONS = (operator.matmul, torch.matmul, torch.bmm)
_PASS_THROUGH_MODULES = (nn.Dropout, nn.Identity)


# -- the explicit math (module-level functions, so the generated code can call them) ---------


def attention_logits(
    query: Tensor,
    key: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """Pre-softmax attention scores ``q k^T * scale + bias``: ``(..., L, E), (..., S, E) -> (..., L, S)``.

    Follows ``F.scaled_dot_product_attention``'s reference code: ``scale`` defaults to
    ``1/sqrt(E)``; a boolean ``attn_mask`` keeps the ``True`` positions, a float mask is added;
    ``is_causal`` masks the upper triangle.
    """
    if enable_gqa and key.size(-3) != query.size(-3):
        key = key.repeat_interleave(query.size(-3) // key.size(-3), -3)
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    logits = (query @ key.transpose(-2, -1)) * scale
    L, S = query.size(-2), key.size(-2)
    if is_causal:
        causal = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
        logits = logits.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        else:
            logits = logits + attn_mask
    return logits


def attention_values(probs: Tensor, value: Tensor, enable_gqa: bool = False) -> Tensor:
    """``A v``: ``(..., L, S), (..., S, Ev) -> (..., L, Ev)``."""
    if enable_gqa and value.size(-3) != probs.size(-3):
        value = value.repeat_interleave(probs.size(-3) // value.size(-3), -3)
    return probs @ value


def mha_in_projection(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    in_proj_weight: Tensor | None,
    in_proj_bias: Tensor | None,
    q_proj_weight: Tensor | None,
    k_proj_weight: Tensor | None,
    v_proj_weight: Tensor | None,
    num_heads: int,
    batch_first: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``nn.MultiheadAttention``'s input projection, split into heads: ``(N, heads, L, E/heads)`` each."""
    if not batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    if in_proj_weight is not None:
        wq, wk, wv = in_proj_weight.chunk(3)
    else:
        wq, wk, wv = q_proj_weight, k_proj_weight, v_proj_weight
    bq, bk, bv = in_proj_bias.chunk(3) if in_proj_bias is not None else (None, None, None)
    if key is query and value is query and in_proj_weight is not None:
        q, k, v = F.linear(query, in_proj_weight, in_proj_bias).chunk(3, dim=-1)
    else:
        q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)
    return tuple(t.unflatten(-1, (num_heads, -1)).transpose(1, 2) for t in (q, k, v))


def mha_output(
    context: Tensor,
    probs: Tensor,
    out_weight: Tensor,
    out_bias: Tensor | None,
    batch_first: bool,
    need_weights: bool,
    average_attn_weights: bool,
) -> tuple[Tensor, Tensor | None]:
    """Merge heads, output projection; returns what ``nn.MultiheadAttention.forward`` returns."""
    out = F.linear(context.transpose(1, 2).flatten(2), out_weight, out_bias)
    if not batch_first:
        out = out.transpose(0, 1)
    weights = (probs.mean(1) if average_attn_weights else probs) if need_weights else None
    return out, weights


# -- the pass ------------------------------------------------------------------------------


def _parent(qualname: str) -> str:
    return qualname.rsplit(".", 1)[0] if "." in qualname else qualname


def _rewrite_sdpa(graph: fx.Graph, node: fx.Node) -> fx.Node:
    bound = dict(zip(_SDPA_PARAMS, node.args))
    bound.update(node.kwargs)
    q, k, v = bound["query"], bound["key"], bound["value"]
    gqa = bound.get("enable_gqa", False)
    with graph.inserting_before(node):
        logits = graph.call_function(
            attention_logits,
            (q, k),
            {"attn_mask": bound.get("attn_mask"), "is_causal": bound.get("is_causal", False),
             "scale": bound.get("scale"), "enable_gqa": gqa},
        )
        probs = graph.call_function(torch.softmax, (logits, -1))
        dropout_p = bound.get("dropout_p", 0.0)
        kept = probs
        if isinstance(dropout_p, fx.Node) or dropout_p:
            kept = graph.call_function(F.dropout, (probs, dropout_p, True))
        out = graph.call_function(attention_values, (kept, v), {"enable_gqa": gqa})
    node.replace_all_uses_with(out)
    graph.erase_node(node)
    return probs


def _rewrite_mha(gm: fx.GraphModule, graph: fx.Graph, node: fx.Node, module: nn.MultiheadAttention) -> fx.Node | None:
    try:
        bound = _MHA_SIGNATURE.bind(None, *node.args, **node.kwargs).arguments
    except TypeError:
        return None
    if (
        bound.get("key_padding_mask") is not None
        or bound.get("attn_mask") is not None
        or bound.get("is_causal", False) is not False
        or module.bias_k is not None
        or module.bias_v is not None
        or module.add_zero_attn
        or module.out_proj.weight is None
    ):
        return None
    path = node.target

    def attr(name: str) -> fx.Node | None:
        return graph.get_attr(f"{path}.{name}") if getattr(module, name, None) is not None else None

    with graph.inserting_before(node):
        names = ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight")
        params = [attr(n) for n in names]
        qkv = graph.call_function(
            mha_in_projection,
            (bound["query"], bound["key"], bound["value"], *params, module.num_heads, module.batch_first),
        )
        q, k, v = (graph.call_function(operator.getitem, (qkv, i)) for i in range(3))
        probs = graph.call_function(torch.softmax, (graph.call_function(attention_logits, (q, k)), -1))
        kept = probs
        if module.training and module.dropout > 0:
            kept = graph.call_function(F.dropout, (probs, module.dropout, True))
        context = graph.call_function(attention_values, (kept, v))
        out_bias = graph.get_attr(f"{path}.out_proj.bias") if module.out_proj.bias is not None else None
        result = graph.call_function(
            mha_output,
            (context, probs, graph.get_attr(f"{path}.out_proj.weight"), out_bias, module.batch_first,
             bound.get("need_weights", True), bound.get("average_attn_weights", True)),
        )
    node.replace_all_uses_with(result)
    graph.erase_node(node)
    return probs


def _feeds_matmul(gm: fx.GraphModule, node: fx.Node, depth: int = 3) -> bool:
    """Whether ``node`` is the left operand of a matmul, possibly through dropout/identity."""
    for user in node.users:
        if user.op == "call_function" and user.target in _MATMUL_FUNCTIONS and user.args and user.args[0] is node:
            return True
        if user.op == "call_function" and user.target is torch.einsum and node in user.args[1:2]:
            return True  # einsum("... i j, ... j d -> ... i d", A, v) (torchvision MaxViT)
        if user.op == "call_function" and user.target in (attention_values,):
            return True
        if user.op == "call_method" and user.target in ("matmul", "bmm") and user.args[0] is node:
            return True
        passes = (
            (user.op == "call_module" and isinstance(gm.get_submodule(user.target), _PASS_THROUGH_MODULES))
            or (user.op == "call_function" and user.target is F.dropout)
            or (user.op == "call_method" and user.target in ("contiguous", "to", "type_as"))
        )
        if passes and depth > 0 and _feeds_matmul(gm, user, depth - 1):
            return True
    return False


def _is_softmax(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _SOFTMAX_FUNCTIONS
    if node.op == "call_method":
        return node.target == "softmax"
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), nn.Softmax)
    return False


def explicit_attention(gm: fx.GraphModule) -> fx.GraphModule:
    """Return a copy of ``gm`` in which every attention's probabilities are a marked softmax node.

    Fused ``F.scaled_dot_product_attention`` calls and mask-free ``nn.MultiheadAttention``
    calls are rewritten into explicit matmul-softmax-matmul; softmax nodes that already feed
    a matmul are marked as they are. See :func:`attention_nodes`.
    """
    gm = copy_graph_module(gm)
    graph = gm.graph
    marked: list[tuple[fx.Node, str]] = []
    for node in list(graph.nodes):
        owner = node.meta.get(NAME, node.name)
        if node.op == "call_function" and node.target in _SDPA:
            marked.append((_rewrite_sdpa(graph, node), _parent(owner)))
        elif node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.MultiheadAttention):
            probs = _rewrite_mha(gm, graph, node, gm.get_submodule(node.target))
            if probs is not None:
                marked.append((probs, node.target))  # the module path: immune to node renaming
        elif _is_softmax(gm, node) and _feeds_matmul(gm, node):
            marked.append((node, _parent(owner)))
    seen: dict[str, int] = {}
    for probs, name in marked:
        k = seen.get(name, 0)
        seen[name] = k + 1
        probs.meta[ATTENTION] = name if k == 0 else f"{name}_{k}"
        probs.meta.setdefault(NAME, f"{probs.meta[ATTENTION]}.softmax")
    return finish(gm)


def attention_nodes(gm: fx.GraphModule) -> dict[str, str]:
    """``{attention module name: probability node name}`` for the nodes marked by :func:`explicit_attention`."""
    return {n.meta[ATTENTION]: n.name for n in gm.graph.nodes if ATTENTION in n.meta}


__all__ = [
    "ATTENTION",
    "attention_logits",
    "attention_nodes",
    "attention_values",
    "explicit_attention",
    "mha_in_projection",
    "mha_output",
]
