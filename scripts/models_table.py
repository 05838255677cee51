"""Print the README's model tables (markdown): every registered model with parameters and MACs.

    .venv/bin/python scripts/models_table.py                      # classification
    .venv/bin/python scripts/models_table.py --task segmentation  # slimseg_* and deeplabv3_* at output stride 16
"""

import argparse

from resnetkit.models import TASKS, list_models, model_defaults
from resnetkit.models.profile import profile_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=TASKS, default="classification")
    task = p.parse_args().task
    print("| name | layout | input | params | MACs |")
    print("|---|---|---|---:|---:|")
    for name in list_models(task=task):
        d = model_defaults(name)
        r = profile_model(name)
        print(f"| `{name}` | {d['family']} | {d['input_size']} | {r['params'] / 1e6:.2f}M | {r['macs'] / 1e9:.3f}G |")


if __name__ == "__main__":
    main()
