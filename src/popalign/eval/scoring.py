"""Rewards from models: the implicit reward of a DPO policy, a reward model's score, or a Python function.

Every scorer turns preferences into ``(chosen_rewards, rejected_rewards)``, each ``(N,)``, whose difference is
the predicted margin the metrics use:

- :class:`PolicyScorer`: ``r(x, y) = beta * (log pi(y|x) - log ref(y|x))`` (Eq. 3), completion tokens only;
- :class:`RewardModelScorer`: ``r(x, y)`` = the scalar head of a sequence-classification model (Eq. 2);
- :class:`FunctionScorer`: ``r(x, y) = f(prompt, response)`` for a callable named ``module:function`` or
  ``path/to/file.py:function`` (a testbed's ground-truth reward, a rule, ...).

Reward models and functions also score single ``(prompt, response)`` pairs (:meth:`score`), which is how
generations are judged.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from popalign.data.schema import PreferenceTable, Prompt
from popalign.data.tokenize import TokenizeSpec, tokenize_preferences
from popalign.errors import PopalignError
from popalign.losses.params import DEFAULT_BETA
from popalign.modeling.build import RANDOM_PREFIX


def read_run_config(model_dir: str | Path) -> dict[str, Any]:
    """The ``config.yaml`` a popalign run writes beside its final model, as a dict ({} when absent)."""
    import yaml

    path = Path(model_dir) / "config.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PopalignError(f"{path}: not valid YAML ({exc})") from None
    return data if isinstance(data, dict) else {}


def detect_kind(model_dir: str | Path, run_config: dict[str, Any] | None = None) -> str:
    """``"reward-model"`` or ``"policy"``: from the run's ``objective``, else the saved architecture."""
    objective = (run_config or {}).get("objective")
    if objective in ("policy", "reward-model"):
        return objective
    config = Path(model_dir) / "config.json"
    if config.is_file():
        archs = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
        if any(a.endswith("ForSequenceClassification") for a in archs):
            return "reward-model"
    return "policy"


def resolve_beta(beta: float | None, run_config: dict[str, Any]) -> float:
    """``beta`` if given, else the run's ``loss.beta``, else 0.1 (the paper's value, Table 6)."""
    if beta is not None:
        return float(beta)
    value = (run_config.get("loss") or {}).get("beta")
    return float(value) if value is not None else DEFAULT_BETA


def resolve_reference(reference: str | None, run_config: dict[str, Any]) -> str:
    """The reference model: ``reference`` if given, else the run's initial model ``model.name_or_path``."""
    if reference:
        return reference
    name = (run_config.get("model") or {}).get("name_or_path")
    if not name:
        raise PopalignError(
            "a DPO policy is scored against its reference model: pass --reference PATH (the model the run "
            "started from); the model folder has no config.yaml naming one"
        )
    return str(name)


def tokenize_spec_for(
    run_config: dict[str, Any], max_length: int | None = None, max_prompt_length: int | None = None
) -> TokenizeSpec:
    """The run's tokenisation settings (so scoring sees what training saw), with explicit overrides."""
    saved = run_config.get("tokenize") or {}
    spec = TokenizeSpec(
        max_length=int(max_length or saved.get("max_length", TokenizeSpec.max_length)),
        max_prompt_length=int(
            max_prompt_length or saved.get("max_prompt_length", TokenizeSpec.max_prompt_length)
        ),
        chat_template=bool(saved.get("chat_template", True)),
    )
    try:
        spec.validate()
    except ValueError as exc:
        raise PopalignError(str(exc)) from None
    return spec


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _load_policy(name: str, dtype: str, device: torch.device):
    from popalign.modeling.load import load_causal_lm

    return load_causal_lm(name, dtype=dtype).to(device).eval()


def _random_reference(policy: torch.nn.Module, run_config: dict[str, Any]) -> torch.nn.Module:
    """Rebuild a ``random:`` initial model: same architecture as the policy, same seed, hence same weights."""
    seed = int((run_config.get("model") or {}).get("seed", 0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        reference = type(policy)(copy.deepcopy(policy.config))
    return reference.to(dtype=policy.dtype, device=policy.device).eval()


def load_reference_model(name: str, policy: torch.nn.Module, run_config: dict[str, Any], dtype: str = "auto"):
    """The reference ``name`` (from :func:`resolve_reference`) in eval mode, on the policy's device."""
    if name.startswith(RANDOM_PREFIX):
        return _random_reference(policy, run_config)
    return _load_policy(name, dtype, policy.device)


class PolicyScorer:
    """Implicit rewards of a DPO policy against its reference (Eq. 3), batched over completion tokens."""

    kind = "policy"

    def __init__(
        self,
        policy,
        reference,
        tokenizer,
        beta: float,
        spec: TokenizeSpec,
        batch_size: int = 8,
        reference_cache_dir: str | None = None,
    ):
        self.policy, self.reference, self.tokenizer = policy, reference, tokenizer
        self.beta, self.spec, self.batch_size = float(beta), spec, batch_size
        self.reference_cache_dir = reference_cache_dir

    def rewards(self, table: PreferenceTable, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(beta * (pc - rc), beta * (pr - rr))``, each ``(N,)`` float64: Eq. 3's implicit rewards."""
        from popalign.losses.rewards import implicit_rewards
        from popalign.modeling.reference import cached_reference_logps, compute_reference_logps

        tokenized = tokenize_preferences(table, self.tokenizer, self.spec)
        pad = self.tokenizer.pad_token_id
        kw = {"batch_size": self.batch_size, "progress": progress}
        pc, pr = compute_reference_logps(self.policy, tokenized, pad, desc="policy log-probs", **kw)
        if self.reference_cache_dir:
            # Keyed by the reference's weights and the tokenized data, so a hit is the same computation.
            rc, rr, _ = cached_reference_logps(self.reference, tokenized, pad, self.reference_cache_dir, **kw)
        else:
            rc, rr = compute_reference_logps(self.reference, tokenized, pad, desc="reference log-probs", **kw)
        logps = [torch.from_numpy(np.asarray(a, dtype=np.float64)) for a in (pc, pr, rc, rr)]
        chosen, rejected = implicit_rewards(*logps, self.beta)
        return chosen.numpy(), rejected.numpy()


class RewardModelScorer:
    """Scalar rewards of a sequence-classification model on ``prompt + response + eos``."""

    kind = "reward-model"

    def __init__(self, model, tokenizer, spec: TokenizeSpec, batch_size: int = 8):
        self.model, self.tokenizer, self.spec, self.batch_size = model, tokenizer, spec, batch_size

    @torch.no_grad()
    def _score_rows(self, rows: list[list[int]], progress: bool, desc: str) -> np.ndarray:
        from tqdm.auto import tqdm

        from popalign.modeling.batching import pad_rows
        from popalign.modeling.logps import sequence_scores

        device = next(self.model.parameters()).device
        # Longest first: similar lengths share a batch and an out-of-memory shows up at once.
        order = np.argsort([-len(r) for r in rows], kind="stable")
        out = np.zeros(len(rows), dtype=np.float64)
        for start in tqdm(range(0, len(rows), self.batch_size), desc=desc, disable=not progress, leave=False):
            part = order[start : start + self.batch_size]
            ids, mask = pad_rows([rows[i] for i in part], self.tokenizer.pad_token_id)
            out[part] = sequence_scores(self.model, ids.to(device), mask.to(device)).double().cpu().numpy()
        return out

    def rewards(self, table: PreferenceTable, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        tok = tokenize_preferences(table, self.tokenizer, self.spec)
        chosen = [p + c for p, c in zip(tok.prompt_ids, tok.chosen_ids, strict=True)]
        rejected = [p + r for p, r in zip(tok.prompt_ids, tok.rejected_ids, strict=True)]
        return (
            self._score_rows(chosen, progress, "rewards (chosen)"),
            self._score_rows(rejected, progress, "rewards (rejected)"),
        )

    def score(self, prompts: list[Prompt], responses: list[str], progress: bool = True) -> np.ndarray:
        """``(N,)`` rewards of single responses, tokenised exactly like a preference's chosen side."""
        # An empty rejected side (eos only) never affects how the chosen side is truncated.
        table = PreferenceTable(
            ids=[str(i) for i in range(len(prompts))],
            prompts=list(prompts),
            chosen=list(responses),
            rejected=[""] * len(prompts),
        )
        tok = tokenize_preferences(table, self.tokenizer, self.spec)
        rows = [p + c for p, c in zip(tok.prompt_ids, tok.chosen_ids, strict=True)]
        return self._score_rows(rows, progress, "judging")


class FunctionScorer:
    """Rewards from a Python callable ``f(prompt, response) -> float``."""

    kind = "function"

    def __init__(self, fn: Callable[[Prompt, str], float], name: str = "function"):
        self.fn, self.name = fn, name

    def score(self, prompts: list[Prompt], responses: list[str], progress: bool = True) -> np.ndarray:
        from tqdm.auto import tqdm

        pairs = zip(prompts, responses, strict=True)
        out = [
            float(self.fn(p, r))
            for p, r in tqdm(pairs, total=len(prompts), disable=not progress, leave=False)
        ]
        return np.asarray(out, dtype=np.float64)

    def rewards(self, table: PreferenceTable, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        return self.score(table.prompts, table.chosen, progress), self.score(
            table.prompts, table.rejected, progress
        )


def load_score_function(spec: str) -> Callable[[Prompt, str], float]:
    """Import ``module:function`` or ``path/to/file.py:function``; the callable takes (prompt, response)."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise PopalignError(f"--score-fn {spec!r}: expected module:function or path/to/file.py:function")
    try:
        if target.endswith(".py") or Path(target).is_file():
            path = Path(target)
            if not path.is_file():
                raise PopalignError(f"--score-fn: file {target!r} does not exist")
            module_spec = importlib.util.spec_from_file_location(f"popalign_score_fn_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ImportError as exc:
        raise PopalignError(f"--score-fn {spec!r}: cannot import {target!r} ({exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise PopalignError(f"--score-fn {spec!r}: {target!r} has no callable {attr!r}")
    return fn


def load_reward_model(path: str, dtype: str, device: torch.device):
    """A sequence-classification model and its tokenizer from a local folder."""
    from transformers import AutoModelForSequenceClassification

    from popalign.modeling.load import DTYPES, load_tokenizer

    if dtype not in DTYPES:
        raise PopalignError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    tokenizer = load_tokenizer(path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, local_files_only=True, dtype="auto" if dtype == "auto" else getattr(torch, dtype)
        )
    except OSError as exc:
        raise PopalignError(f"cannot load a reward model from {path!r}: {exc}") from None
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


def load_scorer(
    model: str | None,
    *,
    kind: str = "auto",
    reference: str | None = None,
    beta: float | None = None,
    score_fn: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    batch_size: int = 8,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    reference_cache_dir: str | None = None,
) -> tuple[PolicyScorer | RewardModelScorer | FunctionScorer, dict[str, Any]]:
    """The scorer for ``model`` (a folder) or for ``score_fn``, and a record of what was loaded."""
    if score_fn:
        return FunctionScorer(load_score_function(score_fn), score_fn), {
            "kind": "function",
            "score_fn": score_fn,
        }
    if not model:
        raise PopalignError("give a model folder or --score-fn")
    if not Path(model).is_dir():
        raise PopalignError(f"model folder {model!r} does not exist")
    run_config = read_run_config(model)
    kind = detect_kind(model, run_config) if kind == "auto" else kind
    spec = tokenize_spec_for(run_config, max_length, max_prompt_length)
    dev = pick_device(device)
    info: dict[str, Any] = {"kind": kind, "model": str(model), "method": run_config.get("method")}
    info["tokenize"] = {"max_length": spec.max_length, "max_prompt_length": spec.max_prompt_length}
    if kind == "reward-model":
        rm, tokenizer = load_reward_model(model, dtype, dev)
        return RewardModelScorer(rm, tokenizer, spec, batch_size), info
    if kind != "policy":
        raise PopalignError(f"--kind must be auto, policy or reward-model, got {kind!r}")
    from popalign.modeling.load import load_tokenizer

    tokenizer = load_tokenizer(model)
    policy = _load_policy(model, dtype, dev)
    ref_name = resolve_reference(reference, run_config)
    ref_model = load_reference_model(ref_name, policy, run_config, dtype)
    info.update(reference=ref_name, beta=resolve_beta(beta, run_config))
    scorer = PolicyScorer(policy, ref_model, tokenizer, info["beta"], spec, batch_size, reference_cache_dir)
    return scorer, info
