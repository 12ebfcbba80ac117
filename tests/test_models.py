"""Every network: output shapes, and it overfits one batch through the recipe's own loss."""
import pytest
import torch

from models.cnn import ConvNet
from models.recipe import Recipe


def cnn_case(**knobs):
    net = ConvNet(in_channels=3, num_classes=10, image_size=(16, 16), **knobs)
    return net, (torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))), "multiclass", (16, 10)


# name -> () -> (network, batch (*inputs, targets), task, logits shape)
CASES = {
    "cnn": cnn_case,
    "cnn_no_bn_stride2_k5": lambda: cnn_case(batch_norm=False, stride=2, kernel_size=5, widths=(16, 32)),
    "cnn_two_convs_per_block": lambda: cnn_case(convs_per_block=2, widths=(8, 16, 32)),
}


def recipe_for(net, task):
    return Recipe(net, task=task, lr=1e-3, optimizer={"name": "adam"}, scheduler={"name": "none"},
                  net_kwargs={"num_classes": 10})


@pytest.mark.parametrize("name", CASES)
def test_output_shape(name):
    net, (*inputs, _), _, shape = CASES[name]()
    assert net(*inputs).shape == shape


@pytest.mark.parametrize("name", CASES)
def test_overfits_one_batch(name):
    torch.manual_seed(0)
    net, batch, task, _ = CASES[name]()
    recipe = recipe_for(net, task)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    *inputs, targets = batch
    losses = []
    for _ in range(30):
        loss = recipe._loss(net(*inputs), targets)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2, losses[::10]
