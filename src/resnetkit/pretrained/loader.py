"""Loading catalogued weights: download into the cache, verify the hash, convert once to our format, and
the resolver behind `create_model(name, pretrained=...)`."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from torch import nn

from resnetkit import convert, download
from resnetkit._helpers import load_state_dict_strict
from resnetkit.errors import CheckpointError, ConfigError
from resnetkit.models import create_model
from resnetkit.pretrained.catalogue import REGISTRY, PretrainedWeights, get_weights, list_pretrained
from resnetkit.weights import load, preset, save_weights

log = logging.getLogger(__name__)


def _convert(w: PretrainedWeights, raw: Path, cache: Path) -> nn.Module:
    if w.kind == "tf-slim":
        folder = download.safe_extract_tar(raw, cache / "extracted" / w.tag)
        try:
            return convert.from_tf_slim(convert.find_tf_checkpoint(folder), arch=w.arch)
        finally:  # the converted file is what is kept; the tarball stays in downloads/
            shutil.rmtree(folder, ignore_errors=True)
    if w.kind == "torchvision":
        return convert.from_torchvision(raw, arch=w.arch)
    if w.kind == "keras":
        return convert.from_keras(raw, arch=w.arch)
    raise ConfigError(f"catalogue entry {w.tag}: unknown weights kind {w.kind!r}")


def load_pretrained(tag: str, *, cache: str | os.PathLike | None = None, opener=None) -> nn.Module:
    """The model of catalogued weights `tag`, ready for inference (eval mode, `.card`). Downloads and
    converts on first use; later calls read the converted file from the cache."""
    w = get_weights(tag)
    cache = Path(cache) if cache is not None else download.cache_dir()
    converted = cache / "converted" / f"{tag}.safetensors"
    if not converted.is_file():
        kw = {"opener": opener} if opener is not None else {}
        raw = download.download(w.url, cache / "downloads" / w.filename, sha256=w.sha256,
                                sha256_prefix=w.sha256_prefix, md5=w.md5, **kw)
        model = _convert(w, raw, cache)
        save_weights(model, converted, class_names=w.class_names(), preprocessing=preset(w.preprocessing),
                     source=f"{tag} converted from {w.url}", metrics={"top1": w.top1, "top5": w.top5},
                     extra={"tag": tag, "metrics_source": w.metrics_source,
                            "file_sha256": download.file_hashes(raw)["sha256"]})
        log.info("converted %s -> %s", raw, converted)
    return load(converted)


def pretrained_model(name: str, pretrained: bool | str | os.PathLike, **kwargs) -> nn.Module:
    """`create_model(name, pretrained=...)`: `pretrained` is True (the first catalogued weights of `name`),
    a catalogue tag, or a path to one of our weights files. Extra kwargs rebuild the model around the
    loaded weights (output_stride, global_pool, ...); they must keep every tensor's shape."""
    if pretrained is True:
        tags = list_pretrained(name)
        if not tags:
            raise ConfigError(f"no catalogued pretrained weights for {name!r}; pass a weights file instead")
        pretrained = tags[0]
    src = str(pretrained)
    if src in REGISTRY:
        if REGISTRY[src].arch != name:
            raise ConfigError(f"weights {src!r} are for {REGISTRY[src].arch}, not {name}")
        model = load_pretrained(src)
    elif Path(src).is_file():
        model = load(src)
    else:
        tags = list_pretrained(name)
        raise ConfigError(f"pretrained={src!r} is neither a weights file nor a catalogue tag"
                          f"{' (for ' + name + ': ' + ', '.join(tags) + ')' if tags else ''}")
    if model.config.arch != name:
        raise ConfigError(f"{src} holds a {model.config.arch}, not a {name}")
    if not kwargs:
        return model
    rebuilt = create_model(name, **{**model.config.kwargs, **kwargs})
    try:
        load_state_dict_strict(rebuilt, model.state_dict(), source=src)
    except CheckpointError as e:
        raise ConfigError(f"options {sorted(kwargs)} do not fit the weights in {src}: {e}") from None
    rebuilt.eval()  # every tensor loaded strictly, so the class names and preprocessing still apply
    rebuilt.card = model.card.replace(config=rebuilt.config)
    return rebuilt
