"""Where a model-based judge gets its answers: a local Hugging Face causal LM or an OpenAI-compatible endpoint.

Written once and shared by the StrongREJECT, HarmBench and Llama Guard judges: each judge only renders a
`JudgePrompt` and parses the answer text; `ModelJudge` does the batching and the error bookkeeping.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from pydantic import Field, field_validator, model_validator
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from moe_defense.errors import ConfigError, JudgeError, ModelLoadError
from moe_defense.judges.base import Judge, JudgeConfig, JudgeItem, Verdict
from moe_defense.judges.http import Api, EndpointError, OpenAIClient
from moe_defense.models.loading import DtypeName, torch_dtype
from moe_defense.models.padding import pad


@dataclass(frozen=True)
class JudgePrompt:
    """What the judge model is asked.

    `messages` go to a chat endpoint or through a local model's chat template; `text`, when set, is the
    verbatim completion prompt a classifier was trained on (local models and `api: completions` use it).
    """

    messages: tuple[Mapping[str, str], ...]
    text: str | None = None


@dataclass(frozen=True)
class BackendFailure:
    """The judge model could not be asked for this item (endpoint down, timeout, HTTP error)."""

    reason: str


class JudgeBackend(ABC):
    """Turns judge prompts into answer texts, one per prompt, in order."""

    @abstractmethod
    def generate(self, prompts: Sequence[JudgePrompt]) -> list[str | BackendFailure]:
        """One answer (or failure) per prompt."""

    def stats(self) -> dict[str, float]:
        """Counters of what asking cost (an endpoint's retries, rate limits, seconds waited); empty if none."""
        return {}


def api_key(env_name: str) -> str:
    """The API key in environment variable `env_name`; unset or empty is a ConfigError naming the variable."""
    key = os.environ.get(env_name)
    if not key:
        raise ConfigError(
            f"api_key_env names {env_name!r}, but that environment variable is empty or unset. Export it (a recipe "
            "names the variable, never the key)."
        )
    return key


def resolve_device(device: str | None) -> str:
    """The configured device, else the GPU when there is one."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


class BackendConfig(JudgeConfig):
    """Backend fields shared by model-based judges: exactly one of `url` (endpoint) or `local_model`."""

    url: str | None = Field(
        None, description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (CLI: --judge-url)"
    )
    model: str | None = Field(None, description="model name the endpoint serves; required with url")
    api: Api = Field(
        "chat",
        description="chat: POST messages to /v1/chat/completions; completions: POST the raw prompt to /v1/completions",
    )
    api_key_env: str | None = Field(
        None,
        description="NAME of the environment variable holding the API key (never the key itself); checked when the "
        "config is validated",
    )
    timeout_s: float = Field(60.0, gt=0, description="per-request timeout in seconds")
    max_retries: int = Field(2, ge=0, description="retries after a timeout, refused connection or HTTP 408/429/5xx")
    backoff_s: float = Field(
        1.0, ge=0, description="backoff with full jitter: retry k waits uniform in [0, backoff_s * 2**(k-1)] seconds"
    )
    max_wait_s: float = Field(
        60.0, gt=0, description="longest wait before a retry, a server's Retry-After (seconds or HTTP date) included"
    )
    concurrency: int = Field(4, ge=1, description="requests in flight at once (and kept-alive connections)")
    local_model: str | None = Field(
        None, description="local path or hub id of a judge causal LM (safetensors, no remote code)"
    )
    device: str | None = Field(
        None, description="device (or transformers device_map) for local_model; null: cuda if available, else cpu"
    )
    dtype: DtypeName = Field("auto", description="weights dtype for local_model")
    batch_size: int = Field(8, ge=1, description="prompts per generate() call for local_model")
    max_new_tokens: int = Field(16, ge=1, description="tokens the judge may write per answer")

    @field_validator("api_key_env")
    @classmethod
    def _key_is_set(cls, name: str | None) -> str | None:
        if name is not None:
            api_key(name)  # an unset variable fails here, before any model loads
        return name

    @model_validator(mode="after")
    def _one_backend(self) -> BackendConfig:
        if (self.url is None) == (self.local_model is None):
            raise ValueError("set exactly one of url (an OpenAI-compatible endpoint) or local_model (a path or hub id)")
        if self.url is not None and not self.model:
            raise ValueError("url needs model: the name the endpoint serves the judge under")
        return self


class HttpBackend(JudgeBackend):
    """Asks an OpenAI-compatible endpoint; failures come back per item, never as exceptions."""

    def __init__(self, client: OpenAIClient) -> None:
        self.client = client

    @classmethod
    def from_config(cls, config: BackendConfig) -> HttpBackend:
        assert config.url is not None and config.model is not None  # guaranteed by BackendConfig
        return cls(
            OpenAIClient(
                config.url,
                config.model,
                api=config.api,
                api_key=api_key(config.api_key_env) if config.api_key_env else None,
                timeout_s=config.timeout_s,
                max_retries=config.max_retries,
                backoff_s=config.backoff_s,
                max_wait_s=config.max_wait_s,
                concurrency=config.concurrency,
                max_tokens=config.max_new_tokens,
            )
        )

    def stats(self) -> dict[str, float]:
        return self.client.stats.as_dict()

    def generate(self, prompts: Sequence[JudgePrompt]) -> list[str | BackendFailure]:
        if self.client.api == "chat":
            requests: list[Sequence[Mapping[str, str]] | str] = [list(p.messages) for p in prompts]
        elif any(p.text is None for p in prompts):
            raise JudgeError(
                "api 'completions' needs a completion-style prompt, and this judge renders chat messages only. Use "
                "api: chat."
            )
        else:
            requests = [p.text for p in prompts if p.text is not None]
        return [
            BackendFailure(a.reason) if isinstance(a, EndpointError) else a for a in self.client.complete_many(requests)
        ]


class LocalBackend(JudgeBackend):
    """Greedy generation with a local causal LM; left-pads each batch by hand so raw and chat prompts mix."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_new_tokens: int = 16,
        batch_size: int = 8,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise JudgeError(
                f"judge tokenizer {tokenizer.name_or_path!r} has neither a pad nor an eos token; cannot batch."
            )
        self.pad_id: int = pad

    @classmethod
    def from_config(cls, config: BackendConfig) -> LocalBackend:
        assert config.local_model is not None  # guaranteed by BackendConfig
        dtype = torch_dtype(config.dtype)
        try:
            tokenizer = AutoTokenizer.from_pretrained(config.local_model, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(
                config.local_model,
                dtype=dtype,
                use_safetensors=True,
                trust_remote_code=False,
                device_map=resolve_device(config.device),
            )
        except (OSError, ValueError) as error:
            raise ModelLoadError(
                f"cannot load judge model {config.local_model!r}: {error}. Give a local directory or hub id with "
                "safetensors weights."
            ) from error
        model.eval()
        return cls(model, tokenizer, max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)

    def _encode(self, prompt: JudgePrompt) -> list[int]:
        if prompt.text is not None:
            return list(self.tokenizer(prompt.text, add_special_tokens=True)["input_ids"])
        if not getattr(self.tokenizer, "chat_template", None):
            raise JudgeError(
                f"judge tokenizer {self.tokenizer.name_or_path!r} has no chat template, and this judge sends chat "
                "messages. Use a chat judge model."
            )
        text = self.tokenizer.apply_chat_template(
            [dict(m) for m in prompt.messages], add_generation_prompt=True, tokenize=False
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @torch.inference_mode()
    def generate(self, prompts: Sequence[JudgePrompt]) -> list[str | BackendFailure]:
        device = next(self.model.parameters()).device
        answers: list[str | BackendFailure] = []
        for start in range(0, len(prompts), self.batch_size):
            rows = [self._encode(p) for p in prompts[start : start + self.batch_size]]
            input_ids, attention = pad(rows, self.pad_id, "left")
            output = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.pad_id,
            )
            answers.extend(self.tokenizer.batch_decode(output[:, input_ids.shape[1] :], skip_special_tokens=True))
        return answers


class ModelJudge(Judge):
    """A judge that renders each item for a judge model and parses its answer.

    A backend failure becomes `Verdict.error` for that item; an answer that does not parse becomes
    `Verdict.unscored("parse_failure")`. A local model loads on first use, so building a judge from a
    recipe is cheap and a bad config still fails at construction.
    """

    config: BackendConfig

    def __init__(self, config: JudgeConfig | None = None, *, backend: JudgeBackend | None = None) -> None:
        super().__init__(config)
        self._backend = backend or (HttpBackend.from_config(self.config) if self.config.url else None)

    @property
    def backend(self) -> JudgeBackend:
        if self._backend is None:
            self._backend = LocalBackend.from_config(self.config)
        return self._backend

    def stats(self) -> dict[str, float]:
        """The backend's counters (for an endpoint: attempts, retries, rate_limited, waited_s); empty before use."""
        return self._backend.stats() if self._backend is not None else {}

    @abstractmethod
    def render(self, item: JudgeItem) -> JudgePrompt:
        """The judge-model prompt for one item."""

    @abstractmethod
    def parse(self, answer: str) -> Verdict:
        """A scored verdict, or `Verdict.unscored("parse_failure", raw=answer)`."""

    def judge_batch(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        if not items:
            return []
        answers = self.backend.generate([self.render(item) for item in items])
        return [Verdict.error(a.reason) if isinstance(a, BackendFailure) else self.parse(a) for a in answers]
