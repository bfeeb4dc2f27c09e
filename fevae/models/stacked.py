"""B independent parameter copies of one ``nn.Sequential``, run as one network.

Likelihood regret (:func:`fevae.scoring.baselines.likelihood_regret_score`) optimises one copy of the
encoder per image. :func:`stacked_forward` evaluates the B copies on their B images in one pass: a
convolution becomes one grouped convolution (``groups = B``), a linear layer one batched matrix product,
an evaluation-mode batch norm one per-copy affine map; ordinary autograd then gives every copy its own
gradient (the copies share nothing, so the gradient of the summed loss is each copy's own). The same
numbers as ``torch.func.vmap`` over ``functional_call`` (the general path, which handles any module) up to
float rounding, without its per-operator dispatch: a 4-image call's 50 regret steps take ~30% less time
on 2 CPU cores (``make bench``'s ``api`` row).

Only what the shipped VAE encoder uses is supported (:func:`stackable` says whether a module qualifies);
anything else falls back to ``vmap``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: parameter-free layers applied elementwise (eval mode: dropout is the identity)
ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Dropout)


def stackable(module: nn.Module) -> bool:
    """Whether :func:`stacked_forward` runs ``module``: an ``nn.Sequential`` in eval mode of Conv2d (zero
    padding) / BatchNorm2d (running statistics) layers on images, one ``Flatten()``, then Linear layers, with
    elementwise activations (and dropout) anywhere."""
    if not isinstance(module, nn.Sequential) or module.training:
        return False
    grid = True  # activations are [1, B*C, H, W] until the Flatten, then [B, F]
    for layer in module:
        if layer.training:
            return False
        if isinstance(layer, ELEMENTWISE):
            continue
        if isinstance(layer, nn.Conv2d) and type(layer) is nn.Conv2d:
            ok = grid and layer.padding_mode == "zeros"
        elif isinstance(layer, nn.BatchNorm2d) and type(layer) is nn.BatchNorm2d:
            ok = grid and layer.running_mean is not None and layer.running_var is not None
        elif type(layer) is nn.Flatten:
            ok, grid = grid and layer.start_dim == 1 and layer.end_dim == -1, False
        elif type(layer) is nn.Linear:
            ok = not grid
        else:
            ok = False
        if not ok:
            return False
    return not grid


def stacked_forward(module: nn.Sequential, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """``module``'s output for B copies: copy ``b`` has parameters ``params[name][b]`` (``name`` as in
    ``module.named_parameters()``, each ``[B, *shape]``) and input ``x[b]`` (``x`` ``[B, C, H, W]``) -> ``[B, F]``.
    Buffers (batch-norm running statistics) are the module's own, shared. Needs :func:`stackable`."""
    batch = x.shape[0]
    h = x.reshape(1, batch * x.shape[1], *x.shape[2:])
    for name, layer in module.named_children():
        weight, bias = params.get(f"{name}.weight"), params.get(f"{name}.bias")
        if isinstance(layer, ELEMENTWISE):
            h = layer(h)
        elif isinstance(layer, nn.Conv2d):
            h = F.conv2d(h, weight.reshape(-1, *weight.shape[2:]), None if bias is None else bias.reshape(-1),
                         layer.stride, layer.padding, layer.dilation, batch * layer.groups)
        elif isinstance(layer, nn.BatchNorm2d):
            scale = torch.rsqrt(layer.running_var + layer.eps).expand(batch, -1)
            if weight is not None:
                scale = weight * scale
            shift = -layer.running_mean * scale
            if bias is not None:
                shift = shift + bias
            h = h * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)
        elif isinstance(layer, nn.Flatten):
            h = h.reshape(batch, -1)
        else:  # nn.Linear
            out = torch.bmm(h.unsqueeze(1), weight.transpose(1, 2))
            h = (out if bias is None else out + bias.unsqueeze(1)).squeeze(1)
    return h
