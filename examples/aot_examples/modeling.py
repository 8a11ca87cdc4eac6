"""Model loading (causal LM + LoRA) and sequence log-probs over completion tokens."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from .data import Batch


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """``AutoTokenizer`` with a pad token (EOS when the tokenizer has none; padded positions
    are masked, so the choice does not matter)."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability to 0, so that the policy with zero-initialized LoRA
    reproduces the reference exactly in training mode (as TRL's ``disable_dropout``)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def load_policy(
    name_or_path: str,
    *,
    lora_r: int,
    lora_alpha: int,
    lora_dropout: float = 0.0,
    target_modules: str | Sequence[str] = "all-linear",
    dtype: torch.dtype = torch.float32,
    gradient_checkpointing: bool = False,
) -> PeftModel:
    """A causal LM with fresh LoRA adapters: the trainable policy, whose base model with the
    adapters disabled is the frozen reference (no second copy of the weights).

    Args:
        name_or_path: hub name or local directory for ``AutoModelForCausalLM``.
        lora_r, lora_alpha, lora_dropout, target_modules: the ``LoraConfig``
            (``"all-linear"``: every linear layer but the output head).
        dtype: the weights' dtype (``torch.bfloat16`` halves memory on accelerators).
        gradient_checkpointing: recompute activations in backward to save memory.
    """
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    disable_dropout(model)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    config = LoraConfig(
        r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def sequence_logps(model: nn.Module, batch: Batch) -> Tensor:
    """log pi(completion | prompt) per row: token log-probs summed over the completion tokens.

    Logits at position t predict token t + 1, so the scored tokens are ``input_ids[:, 1:]``
    where ``completion_mask[:, 1:]`` is 1 (prompt and padding tokens are masked). Logits are
    upcast to float32 before the log-softmax.

    Returns:
        ``(N,)`` float32 sequence log-probs.
    """
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logits = logits[:, :-1].float()
    labels = batch.input_ids[:, 1:]
    token_logps = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return (token_logps * batch.completion_mask[:, 1:]).sum(-1)


@torch.no_grad()
def reference_logps(model: nn.Module, peft_model: PeftModel, batch: Batch) -> Tensor:
    """:func:`sequence_logps` under the reference: ``model`` (possibly wrapped by DDP/FSDP)
    run with the adapters of ``peft_model`` (the unwrapped model) disabled."""
    with peft_model.disable_adapter():
        return sequence_logps(model, batch)
