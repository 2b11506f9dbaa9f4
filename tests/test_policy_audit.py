"""The audit on a run folder whose model carries a generation policy (guard, icul, alu): the attacks that score
prompts and in-context material run unchanged, on the model with its policy attached, so the audit's "after
unlearning" is the run's own after-metric."""

from __future__ import annotations

import pytest

import unlearn

CONFIGS = {
    "guard": {"tokens": 1024, "min_prompt": 8, "n_tokens": 6, "n_phrases": 4, "min_ratio": 3, "exclude_common": 10},
    "icul": {"shots_forget": 2, "shots_retain": 2, "prompt_tokens": 8, "answer_tokens": 6},
    "alu": {"tokens": 1024, "min_prompt": 8, "n_tokens": 6, "n_phrases": 4, "min_ratio": 3, "exclude_common": 10},
}


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_prompt_in_context_and_quantize_attacks_run_on_a_policy_run(run_tiny, method):
    run = run_tiny(method, method, CONFIGS[method])
    record = unlearn.audit(str(run.run_dir), attacks=["prompt", "in-context", "quantize"], settings={"quant_bits": [8]})
    names = {r["attack"] for r in record["attacks"]}
    assert names == {"prompt", "in-context", "quantize"}
    # the audit scored the unlearned model with its policy attached: the same forget top-1 as the run's after
    for entry in record["attacks"]:
        assert entry["after_unlearning"] == pytest.approx(run.after["forget"]["top1"], abs=1e-6)


def test_a_saved_guard_config_with_an_infinite_penalty_parses_again_and_nan_is_still_refused():
    from unlearn.config import RunConfig
    from unlearn.errors import UnlearnError
    from unlearn.validation import build

    for penalty in ("inf", float("inf")):
        assert build(RunConfig, {"method": "guard", "method_config": {"penalty": penalty}}, "config").method == "guard"
    for bad in ("nan", float("nan"), "-inf", float("-inf")):
        with pytest.raises(UnlearnError, match="finite number"):
            build(RunConfig, {"method": "guard", "method_config": {"penalty": bad}}, "config")
