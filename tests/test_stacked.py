"""fevae.models.stacked: B parameter copies of a Sequential run as one network, against each copy run alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from fevae.models.stacked import stackable, stacked_forward
from fevae.models.vae import VAE


def network() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.ReLU(), nn.BatchNorm2d(4), nn.Dropout(0.3),
        nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2, bias=False), nn.Tanh(), nn.BatchNorm2d(6, affine=False),
        nn.Flatten(), nn.Linear(6 * 5 * 5, 7, bias=False), nn.GELU(), nn.Linear(7, 3),
    )
    for m in net.modules():  # running statistics that are not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return net.eval()


def copies(net: nn.Module, batch: int) -> dict[str, torch.Tensor]:
    """``batch`` different parameter sets: the module's own, perturbed per copy."""
    g = torch.Generator().manual_seed(1)
    return {n: (p.detach() + 0.1 * torch.randn(batch, *p.shape, generator=g)).requires_grad_()
            for n, p in net.named_parameters()}


def test_stacked_forward_and_gradients_equal_each_copy_run_alone():
    net, batch = network(), 3
    assert stackable(net)
    params = copies(net, batch)
    x = torch.randn(batch, 2, 10, 10, generator=torch.Generator().manual_seed(2))
    out = stacked_forward(net, params, x)
    alone = torch.cat([functional_call(net, {n: p[b] for n, p in params.items()}, (x[b : b + 1],)) for b in range(batch)])
    assert out.shape == (batch, 3)
    torch.testing.assert_close(out, alone, rtol=1e-5, atol=1e-5)
    loss = (out ** 2).sum()  # each copy's loss depends on its own parameters only: the gradients are each copy's own
    stacked_grads = torch.autograd.grad(loss, list(params.values()))
    alone_grads = torch.autograd.grad((alone ** 2).sum(), list(params.values()))
    for name, a, b in zip(params, stacked_grads, alone_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("image_shape", [(1, 28, 28), (3, 32, 32)])
def test_the_shipped_encoder_takes_the_stacked_path(image_shape):
    vae = VAE({"name": "gaussian"}, image_shape=image_shape, latent_dim=4, hidden_dim=16)
    assert not stackable(vae.encoder)  # training mode: dropout and batch statistics are not what the copies run
    assert stackable(vae.eval().encoder)


@pytest.mark.parametrize("layers", [
    [nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 13 * 13, 2)],  # an unsupported layer
    [nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), nn.Flatten(), nn.Linear(2 * 28 * 28, 2)],
    [nn.Linear(28, 2)],  # a linear layer on images, and no Flatten
    [nn.Flatten(), nn.Conv2d(1, 2, 3)],  # a convolution after the Flatten
    [nn.Conv2d(1, 2, 3), nn.Flatten(start_dim=2)],
    [nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False), nn.Flatten(), nn.Linear(2 * 26 * 26, 2)],
], ids=["maxpool", "reflect-padding", "no-flatten", "conv-after-flatten", "partial-flatten", "batch-statistics"])
def test_what_is_not_stackable(layers):
    assert not stackable(nn.Sequential(*layers).eval())


def test_a_module_that_is_not_a_sequential_or_is_training_is_not_stackable():
    net = network()
    assert not stackable(nn.ModuleList(list(net)))
    net[2].train()  # one batch norm in training mode
    assert not stackable(net)
