import ipaddress
import os
import shutil
import socket
import tempfile

import pytest
import torch

# Two cores: keep intra-op threads at 2 and make runs repeatable; under pytest-xdist (`make test` runs
# `-n 2`) each worker takes its share of them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

# A fresh machine, whatever this one holds: resnetkit's caches (downloads, data sets, the backend decisions of
# `--backend auto`) start empty in a folder of this run, set in os.environ so CLI subprocesses inherit it.
_CACHE = tempfile.mkdtemp(prefix="resnetkit-test-cache-")
os.environ["RESNETKIT_CACHE"] = os.path.join(_CACHE, "cache")
os.environ["RESNETKIT_DATA"] = os.path.join(_CACHE, "data")


def _loopback(host) -> bool:
    try:
        return host in ("localhost", "", None) or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _offline(*_a, **_k):
    raise socket.gaierror(socket.EAI_NONAME, "tests run offline: loopback only (tests/conftest.py)")


@pytest.fixture(autouse=True, scope="session")
def _fresh_machine():
    """No test may lean on what a developer's machine happens to have: the Debian data set folders
    (/usr/share/datasets/...) are hidden and any connection off this host fails at once, as offline."""
    from resnetkit.data import datasets

    mp = pytest.MonkeyPatch()
    for name, entry in datasets.IDX_DATASETS.items():
        if str(entry[3]).startswith("/usr/share/"):
            mp.setitem(datasets.IDX_DATASETS, name, entry[:3] + (os.path.join(_CACHE, "no-system-dir"),) + entry[4:])
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo
    mp.setattr(socket.socket, "connect", lambda self, address: real_connect(self, address) if not isinstance(
        address, tuple) or _loopback(address[0]) else _offline())
    mp.setattr(socket, "getaddrinfo", lambda host, *a, **k: real_getaddrinfo(host, *a, **k) if _loopback(
        host) else _offline())
    yield
    mp.undo()
    shutil.rmtree(_CACHE, ignore_errors=True)


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
