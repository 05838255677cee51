"""Print the README's model table (markdown): every registered model with parameters and MACs.

    .venv/bin/python scripts/models_table.py
"""

from resnetkit.models import list_models, model_defaults
from resnetkit.models.profile import profile_model


def main() -> None:
    print("| name | layout | input | params | MACs |")
    print("|---|---|---|---:|---:|")
    for name in list_models():
        d = model_defaults(name)
        r = profile_model(name)
        print(f"| `{name}` | {d['family']} | {d['input_size']} | {r['params'] / 1e6:.2f}M | {r['macs'] / 1e9:.3f}G |")


if __name__ == "__main__":
    main()
