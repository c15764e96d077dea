"""`python -m training {audit,split,train,finetune,evaluate,ablation,soup} ...`: one entry point, one module per command."""
from __future__ import annotations

import sys

COMMANDS = {
    "audit": "training.data_audit",
    "split": "training.data_split",
    "train": "training.train",
    "finetune": "training.finetune",
    "evaluate": "training.evaluate",
    "ablation": "training.ablation",
    "soup": "training.soup",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m training {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    import importlib

    result = importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
