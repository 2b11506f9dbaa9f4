"""Why a model could not be loaded, in one line: the checks run on a checkpoint folder before transformers
reads it, and the translation of transformers' and the hub client's errors into messages that say what to do."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UnlearnError


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The gist of an exception's message in one line: its first line, or, where that line only announces a
    list (ends with ':'), the lines that follow too, up to ``limit`` characters."""
    lines = [" ".join(line.split()) for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = " ".join(lines) if lines[0].endswith(":") else lines[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def exception_chain(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and the exceptions behind it (``raise ... from``, or raised while handling them)."""
    seen: list[BaseException] = []
    while exc is not None and not any(exc is e for e in seen):
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def check_config_json(spec: str, directory: Path) -> None:
    """config.json must be a JSON object (transformers' own errors for anything else are cryptic)."""
    import json

    path = directory / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UnlearnError(f"could not load model {spec!r}: cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise UnlearnError(f"could not load model {spec!r}: {path} is not valid JSON ({first_line(exc)})") from exc
    if not isinstance(config, dict):
        raise UnlearnError(
            f"could not load model {spec!r}: {path} must hold a JSON object of settings, not {type(config).__name__}"
        )


def check_architecture(spec: str, directory: Path) -> None:
    """config.json must describe a model transformers can build: a bad setting (a head count that does not divide
    the width, a width that is not a number) is named here, not blamed on the tokenizer read next."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(directory)
        with torch.device("meta"):
            AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # noqa: BLE001 - transformers raises anything for a bad config
        raise UnlearnError(
            f"could not load model {spec!r}: {directory / 'config.json'} describes no model transformers can build "
            f"({first_line(exc)}): fix the file, or use the checkpoint's original config.json"
        ) from exc


def check_weight_files(spec: str, directory: Path) -> None:
    """Read the header of every safetensors file: a truncated or corrupt one is named before transformers fails
    on it with a message that names no file."""
    from safetensors import safe_open

    for path in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(path), "pt"):
                pass
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type
            raise UnlearnError(
                f"could not load model {spec!r}: weights file {path.name} is damaged or incomplete "
                f"({first_line(exc)}): copy or download it again"
            ) from exc


def shape_mismatch(directory: Path) -> str:
    """The first tensor whose shape in the weight files differs from the one config.json implies ("" if none
    is found)."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory))
        expected = {name: list(t.shape) for name, t in model.state_dict().items()}
        for path in sorted(directory.glob("*.safetensors")):
            with safe_open(str(path), "pt") as fh:
                for name in fh.keys():
                    shape = list(fh.get_slice(name).get_shape())
                    if name in expected and expected[name] != shape:
                        return f"{name} is {shape} in {path.name}, config.json implies {expected[name]}"
    except Exception:  # noqa: BLE001 - only a detail of the message
        return ""
    return ""


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spm.model", "vocab.json", "vocab.txt", "tokenizer_config.json")


def tokenizer_error(spec: str, directory: Path, exc: BaseException) -> UnlearnError:
    """One line for a checkpoint folder whose tokenizer cannot be loaded (most often: it has none)."""
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        return UnlearnError(
            f"could not load model {spec!r}: it has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): copy "
            "the tokenizer files of the model it was trained from into it"
        )
    return UnlearnError(f"could not load the tokenizer of model {spec!r}: {first_line(exc)}")


def local_error(spec: str, directory: Path, exc: BaseException) -> UnlearnError:
    """One line for a checkpoint folder that transformers cannot load."""
    if isinstance(exc, RuntimeError) and ("mismatched_sizes" in str(exc) or "size mismatch" in str(exc)):
        detail = shape_mismatch(directory)
        return UnlearnError(
            f"could not load model {spec!r}: its weights do not have the shapes its config.json gives"
            f"{f' ({detail})' if detail else ''}: was config.json edited, or do the weights belong to another model?"
        )
    return UnlearnError(f"could not load model {spec!r}: {first_line(exc)}")


def hub_error(spec: str, exc: BaseException) -> UnlearnError:
    """One line for a hub id that could not be loaded: not found, gated, offline without a cache, or a download
    that failed part-way — each with what to do about it."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError
    from huggingface_hub.utils import httpx

    chain = exception_chain(exc)

    def found(*types):
        return next((e for e in chain if isinstance(e, types)), None)

    local = "or pass a local checkpoint folder"
    if found(GatedRepoError):
        return UnlearnError(
            f"model {spec!r} is gated on the Hugging Face hub: accept its terms at https://huggingface.co/{spec} "
            f"and log in with `hf auth login`, {local}"
        )
    if found(RepositoryNotFoundError):
        return UnlearnError(
            f"model {spec!r} not found on the Hugging Face hub: check the id (a private model needs "
            f"`hf auth login`), {local}"
        )
    if constants.HF_HUB_OFFLINE and found(LocalEntryNotFoundError, ConnectionError):
        return UnlearnError(
            f"model {spec!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it: "
            f"unset HF_HUB_OFFLINE to download it (or fetch it with `hf download {spec}`), {local}"
        )
    network = next(  # the root cause: the last one in the chain (later attempts may fail differently)
        (
            e
            for e in reversed(chain)
            if isinstance(e, (httpx.TransportError, LocalEntryNotFoundError, ConnectionError, TimeoutError))
            or "Consistency check failed" in str(e)  # a file that arrived incomplete
        ),
        None,
    )
    if network is not None:
        return UnlearnError(
            f"could not download model {spec!r} from the Hugging Face hub: the download failed or was interrupted "
            f"({type(network).__name__}: {first_line(network)}): check the network connection and run the "
            f"command again (finished files are cached and a partial one resumes), {local}"
        )
    return UnlearnError(f"could not load model {spec!r}: {first_line(exc)}")
