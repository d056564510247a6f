import pytest
import torch
import torchvision


def _seeded(builder, seed=0, **kw):
    torch.manual_seed(seed)
    return builder(weights=None, **kw).eval()


@pytest.fixture(scope="session")
def resnet18():
    return _seeded(torchvision.models.resnet18)


@pytest.fixture(scope="session")
def vgg11():
    return _seeded(torchvision.models.vgg11)


@pytest.fixture(scope="session")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 64, 64, generator=g)
