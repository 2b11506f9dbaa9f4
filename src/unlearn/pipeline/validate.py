"""Every check of a run that needs no model: the config, the method and its settings, the data, the suites,
the run folder, and a sequential request's parent run."""

from __future__ import annotations

from pathlib import Path
from .. import distributed
from ..config import RunConfig, load_config_file, parse_config
from ..errors import UnlearnError
from ..methods import get_method
from ..runs.folder import RunFolder
from ..pipeline.corpora import check_data_exists


def coerce_config(config: RunConfig | dict | str | Path | None) -> RunConfig:
    if config is None:
        return RunConfig()
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, (str, Path)):
        return parse_config(load_config_file(config))
    return parse_config(dict(config))


def validated_config(
    config, resuming: bool = False, verify: bool = True
) -> tuple[RunConfig, dict | None, object, object]:
    """Every check that needs no model: the config, the method's settings, the data, the evaluation suites, the
    run folder and a ``--from`` parent (its files checked against its manifest unless not ``verify``). Returns
    the resolved config, the parent, the method and its config."""
    cfg, parent = _parent_run(coerce_config(config), verify)  # a sequential request: verified parent, its model
    if cfg.preset is not None:
        from ..methods.presets import apply_preset

        given = cfg.method if "method" in cfg.model_fields_set else None
        name, settings = apply_preset(cfg.preset, given, cfg.method_config)
        cfg = cfg.model_copy(update={"method": name, "method_config": settings})
    method = get_method(cfg.method)
    method_cfg = method.make_config(cfg.method_config)
    if cfg.control is not None and "importance" not in type(method_cfg).model_fields:
        raise UnlearnError(f"--control {cfg.control} is selective pruning's control: {method.name} prunes no neurons")
    if cfg.control is not None and distributed.launched():
        raise UnlearnError("--control runs its control in this process: run it without --launcher accelerate")
    if not method.budget and cfg.stop.active:
        raise UnlearnError(f"{method.name} is a single edit: it cannot stop on a budget (drop --budget)")
    cfg = cfg.model_copy(update={"method": method.name, "method_config": method_cfg.model_dump()})
    for data in (cfg.forget, cfg.retain, cfg.utility):
        if data is not None:
            check_data_exists(data)
    if method.check is not None:  # the method's own checks (exact: the model learnt the records to delete)
        method.check(cfg, method_cfg)
    _check_evals(cfg)
    if cfg.device_map is not None:
        from ..methods.training import TrainConfig

        if isinstance(method_cfg, TrainConfig):
            raise UnlearnError(
                f"--device-map serves statistics and evaluation; {method.name} trains: shard it with "
                "--launcher accelerate and an FSDP or DeepSpeed config (configs/accelerate/)"
            )
        if distributed.launched():
            raise UnlearnError("--device-map spreads one model over all devices: run it in one process")
    if not resuming and distributed.is_main():  # process 0 makes the folder (the others may see its work folder)
        RunFolder(cfg.out_dir, cfg.name, method.name).check()
    return cfg, parent, method, method_cfg


def _check_evals(cfg: RunConfig) -> None:
    """Validate the run's evaluation suites (names, settings, data) before any expensive work."""
    from ..eval.suites import resolve_parts
    from ..eval.suites.base import suite_and_settings

    seen = set()
    for spec in cfg.evals:
        suite, settings = suite_and_settings(spec.suite, spec.settings)
        if suite.name in seen:
            raise UnlearnError(f"suite {suite.name!r} listed twice in evals: merge its data into one entry")
        seen.add(suite.name)
        suite.check_data(resolve_parts(suite, spec.data), suite.make_config(settings))


def _parent_run(cfg: RunConfig, verify: bool = True) -> tuple[RunConfig, dict | None]:
    """A sequential request (``from_run``): verify the parent run folder against its manifest and point the
    config at its saved model (in the dtype it was saved in, so that the hash chain links). ``(cfg, None)``
    for a request on a model that no run produced."""
    if cfg.from_run is None:
        return cfg, None
    from ..runs.ledger import parent_record, read_manifest, verify_run

    given = cfg.from_run
    parent_dir = Path(given).expanduser().resolve()
    manifest, raw = read_manifest(parent_dir, "--from run folder")
    saved = manifest["model"]
    model_dir = parent_dir / "model"
    if not saved.get("files") or not saved.get("sha256_after"):  # a saved model's files are verified below
        raise UnlearnError(f"run {given} has no saved model to unlearn further (was it run with --no-save-model?)")
    if "model" in cfg.model_fields_set and Path(cfg.model).expanduser().resolve() != model_dir:
        raise UnlearnError(f"--from {given} unlearns that run's model ({model_dir}): drop --model {cfg.model}")
    problems = verify_run(parent_dir, manifest) if verify else []
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise UnlearnError(
            f"parent run {given} failed verification: {problems[0]}{more}; --no-verify builds on it anyway (the "
            "new manifest records that)"
        )
    dtype = saved.get("dtype") or cfg.dtype
    if cfg.dtype not in ("auto", dtype):
        raise UnlearnError(
            f"--from {given}: its model was saved in {dtype} and is unlearnt further as saved: drop --dtype {cfg.dtype}"
        )
    out = Path(cfg.out_dir).expanduser().resolve()
    if out == parent_dir or parent_dir in out.parents:
        raise UnlearnError(f"--out {cfg.out_dir} is inside the parent run folder {given}, which must stay unchanged")
    cfg = cfg.model_copy(update={"from_run": str(parent_dir), "model": str(model_dir), "dtype": dtype})
    record = parent_record(parent_dir, manifest, raw)
    if not verify:  # said in the chain: this request was built on a parent nobody checked
        record["verified"] = False
    return cfg, {"dir": parent_dir, "manifest": manifest, "record": record}


def check_parent_model(parent: dict | None, model_hash: str) -> None:
    """The loaded parent model must be the one its run saved (what the child's ``sha256_before`` links to)."""
    if parent is not None and model_hash != parent["manifest"]["model"]["sha256_after"]:
        raise UnlearnError(
            f"the model loaded from {parent['dir'] / 'model'} does not hash to the sha256_after its manifest records"
        )
