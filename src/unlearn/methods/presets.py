"""Named configurations of a method (``unlearn run --preset NAME``), measured in ``bench/efficacy.py``.

A preset sets ``method`` and ``method_config``; settings given explicitly (flags, a config file or the dict
passed to :func:`unlearn.run`) override the preset's.
"""

from __future__ import annotations

from ..errors import UnlearnError
from ..registry import Registry

PRESETS: Registry[dict] = Registry("preset")
PRESETS.add(
    "paper",
    {
        "summary": "the published selective pruning (Pochinkov & Schoots 2024): abs importance, 2 % of the "
        "feed-forward neurons per step, zero ablation, no healing",
        "method": "selective-pruning",
        "method_config": {"importance": "abs", "ff_frac": 0.02, "attn_frac": 0.0, "steps": 4, "heal_steps": 0},
    },
)
PRESETS.add(
    "prune-heal",
    {
        "summary": "prune 6 % of the feed-forward and attention neurons (rms, 1 % + 1 % per step), then heal: "
        "40 steps of next-token training on 40k retain tokens with the pruned neurons held pruned and a forget "
        "floor (the forget loss may not fall below where pruning left it)",
        "method": "selective-pruning",
        "method_config": {
            "importance": "rms",
            "ff_frac": 0.01,
            "attn_frac": 0.01,
            "steps": 6,
            "heal_steps": 40,
            "heal_lr": 5e-5,
            "heal_batch_size": 4,
            "heal_tokens": 40960,
            "heal_forget_weight": 1.0,
            "heal_target": "nll",
            "heal_floor_scale": 1.0,
        },
    },
)


def apply_preset(name: str, method: str | None, method_config: dict) -> tuple[str, dict]:
    """The method and method settings of preset ``name``, with ``method_config`` (explicit settings) on top."""
    preset = PRESETS.lookup(name)
    if method is not None and method != preset["method"]:
        raise UnlearnError(f"preset {name} is a {preset['method']} preset: drop --method {method}")
    return preset["method"], {**preset["method_config"], **method_config}
