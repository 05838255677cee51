"""Training recipes shipped with resnetkit: TOML files of config sections (as `--config` takes them) with a
top-level `description`. `resnetkit train --recipe NAME` starts from one; a config file, flags and `--set`
override it (resnetkit.train.config.resolve gives the order).

>>> list_recipes()["finetune"]
'fine-tune from pretrained weights: AdamW, low learning rate, short cosine schedule'
"""

from __future__ import annotations

from importlib import resources

from resnetkit._helpers import did_you_mean, tomllib
from resnetkit.errors import ConfigError


def _files() -> dict[str, resources.abc.Traversable]:
    folder = resources.files(__name__)
    return {f.name.removesuffix(".toml"): f for f in folder.iterdir() if f.name.endswith(".toml")}


def _read(name: str, file) -> dict:
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # a broken installation, not a user's mistake, but still one line
        raise ConfigError(f"recipe {name}: cannot read {file} ({e})") from None


def list_recipes() -> dict[str, str]:
    """{name: one-line description} of every shipped recipe, sorted by name."""
    return {name: str(_read(name, f).get("description", "")) for name, f in sorted(_files().items())}


def load_recipe(name: str) -> dict:
    """The config sections of recipe `name` (its description removed); ConfigError naming close matches."""
    files = _files()
    if name not in files:
        hint = did_you_mean(name, files, f"recipes: {', '.join(sorted(files))}")
        raise ConfigError(f"unknown recipe {name!r}; {hint}")
    d = _read(name, files[name])
    d.pop("description", None)
    return d
