"""A vLLM logits processor that makes a model with random weights say a given text (for benchmarks.vllm_e2e).

Loaded by the vLLM server of that benchmark with ``--logits-processors
benchmarks.vllm_force:CopyMarkedText`` (the project's root on ``PYTHONPATH``). It needs the tiny
model's tokenizer to have the special tokens ``<|copy|>`` and ``<|/copy|>``: for a request whose
prompt holds ``<|copy|>TEXT<|/copy|>``, every generated token is forced to the next token of
TEXT as the prompt tokenised it, then end-of-sequence. The prompt's marked tokens are copied, not
re-tokenised, so the decoded answer is TEXT exactly. Requests without the markers are left alone.

This works the same on every route that ends in the engine (chat, completions, responses,
messages, batch chat, /invocations), which per-request structured outputs do not: /v1/messages
has no such parameter. Only the tokens of TEXT and the end are forced; the route's own rendering
(chat template, detokenisation, SSE framing) is vLLM's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig

COPY_OPEN = "<|copy|>"
COPY_CLOSE = "<|/copy|>"


class CopyMarkedText(LogitsProcessor):
    """Force each marked request's output to the token ids between the copy markers of its prompt, then EOS."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        from vllm.tokenizers import cached_tokenizer_from_config

        tokenizer = cached_tokenizer_from_config(vllm_config.model_config)
        self.open_id: int = tokenizer.convert_tokens_to_ids(COPY_OPEN)
        self.close_id: int = tokenizer.convert_tokens_to_ids(COPY_CLOSE)
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the model's tokenizer has no eos_token_id")
        self.eos_id: int = int(eos)
        # batch row -> (target token ids ending in EOS, the request's live list of output token ids)
        self.targets: dict[int, tuple[list[int], list[int]]] = {}

    def is_argmax_invariant(self) -> bool:
        return False

    def _target(
        self, params: SamplingParams, prompt_ids: list[int] | None, output_ids: list[int]
    ) -> tuple[list[int], list[int]] | None:
        if not prompt_ids or self.open_id not in prompt_ids:
            return None
        start = len(prompt_ids) - 1 - prompt_ids[::-1].index(self.open_id)
        try:
            end = prompt_ids.index(self.close_id, start + 1)
        except ValueError:
            return None
        return [*prompt_ids[start + 1 : end], self.eos_id], output_ids

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.targets, batch_update, self._target)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for row, (target, output_ids) in self.targets.items():
            if row >= logits.shape[0]:
                continue
            n = len(output_ids)
            token = target[n] if n < len(target) else self.eos_id
            logits[row].fill_(float("-inf"))
            logits[row, token] = 0.0
        return logits
