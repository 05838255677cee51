import os

import pytest
import torch

# Two cores: keep intra-op threads at 2 and make runs repeatable.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: on a busy 2-core machine one intra-op thread is several times faster than two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BN non-trivial statistics and affine values, so that a wrong mapping cannot pass."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def seg_model(backbone: str, num_classes: int, head: str = "slim", output_stride: int = 16, **kw) -> torch.nn.Module:
    """A registered segmentation model by its parts: ('resnet20', 3, 'aspp', 4) -> deeplabv3_resnet20."""
    import resnetkit
    from resnetkit.models import segmentation_name

    return resnetkit.create_model(segmentation_name(head, backbone), num_classes=num_classes,
                                  output_stride=output_stride, **kw)
