"""Fold BatchNorm into the preceding convolution (FX graph pass)."""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new convolution equal to bn(conv(x)) with bn in eval mode."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, True, conv.padding_mode)
    inv_std = torch.rsqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(bn.running_mean)
    beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    factor = gamma * inv_std
    fused.weight.copy_(conv.weight * factor.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * factor + beta)
    return fused


def _module(gm: fx.GraphModule, node: fx.Node):
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def fold_batchnorm(gm: fx.GraphModule) -> int:
    """Fold every conv → BatchNorm pair whose conv output feeds only the BatchNorm.

    timm's BatchNormAct2d (BN with its activation inside) is folded too; its activation
    stays in the graph. Returns the number of folded pairs.
    """
    folded = 0
    for node in list(gm.graph.nodes):
        bn = _module(gm, node)
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        src = node.args[0]
        conv = _module(gm, src) if isinstance(src, fx.Node) else None
        if type(conv) is not nn.Conv2d or len(src.users) != 1:
            continue
        name = f"{src.target.replace('.', '_')}_bnfolded_{folded}"
        gm.add_submodule(name, fold_conv_bn(conv, bn))
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(name, src.args, src.kwargs)
            out = new
            act = getattr(bn, "act", None)
            if act is not None and not isinstance(act, nn.Identity):
                act_name = f"{name}_act"
                gm.add_submodule(act_name, act)
                out = gm.graph.call_module(act_name, (new,))
        node.replace_all_uses_with(out)
        gm.graph.erase_node(node)
        gm.graph.erase_node(src)
        folded += 1
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return folded
