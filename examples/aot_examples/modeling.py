"""Model loading (causal LM + LoRA), sequence log-probs over completion tokens, and scoring
held-out examples over several processes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from accelerate import Accelerator
from peft import LoraConfig, PeftModel, get_peft_model
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from .batching import Batch, collate
from .losses import PreferenceLogps
from .tokenization import EncodedExample


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """``AutoTokenizer`` with a pad token (EOS when the tokenizer has none; padded positions
    are masked, so the choice does not matter)."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_context(name_or_path: str, max_length: int) -> None:
    """Raises ValueError if ``max_length`` exceeds the model's context (``max_position_embeddings``,
    ``n_positions`` for GPT-2), read from its config alone, before any weight is loaded."""
    config = AutoConfig.from_pretrained(name_or_path)
    context = getattr(config, "max_position_embeddings", None)
    if isinstance(context, int) and max_length > context:
        raise ValueError(
            f"--max-length {max_length} exceeds the context of --model {name_or_path} "
            f"({context} positions, max_position_embeddings in its config): use --max-length "
            f"{context} or less"
        )


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


def batch_logps(
    model: nn.Module, peft_model: PeftModel, batch: Batch, paired: bool
) -> PreferenceLogps:
    """Policy log-probs (with gradient) and reference log-probs (adapters off, no gradient)."""
    reference = reference_logps(model, peft_model, batch)
    policy = sequence_logps(model, batch)
    c = batch.chosen
    return PreferenceLogps(policy[c], policy[~c], reference[c], reference[~c], paired)


@torch.no_grad()
def score_examples(
    accelerator: Accelerator,
    model: nn.Module,
    peft_model: PeftModel,
    examples: Sequence[EncodedExample],
    batch_size: int,
    pad_id: int,
) -> PreferenceLogps:
    """Log-probs of all ``examples``, each process scoring a strided share, gathered on all.

    Every process runs the same number of equal-size forward passes (FSDP needs this): the
    shorter shares are padded with a repeated example, dropped after the gather.
    """
    rank, world = accelerator.process_index, accelerator.num_processes
    per_rank = -(-len(examples) // world)
    index = list(range(rank, len(examples), world))
    valid = [1.0] * len(index) + [0.0] * (per_rank - len(index))
    index += index[:1] * (per_rank - len(index))
    rows = []
    model.eval()
    for start in range(0, per_rank, batch_size):
        ids = index[start : start + batch_size]
        batch = collate([examples[i] for i in ids], pad_id).to(accelerator.device)
        policy = sequence_logps(model, batch)
        reference = reference_logps(model, peft_model, batch)
        rows_per_example = len(batch.chosen) // len(ids)  # 2 rows per pair, 1 per unpaired
        rows.append(
            torch.stack(
                [
                    torch.tensor(ids * rows_per_example, dtype=torch.float64),
                    torch.tensor(
                        valid[start : start + batch_size] * rows_per_example, dtype=torch.float64
                    ),
                    batch.chosen.double().cpu(),
                    policy.double().cpu(),
                    reference.double().cpu(),
                ],
                dim=1,
            )
        )
    model.train()
    table = accelerator.gather(torch.cat(rows).to(accelerator.device)).cpu()
    table = table[table[:, 1] == 1]
    table = table[table[:, 0].argsort(stable=True)]  # chosen i and rejected i line up
    c = table[:, 2] == 1
    paired = len(examples[0].completions) == 2
    return PreferenceLogps(table[c, 3], table[~c, 3], table[c, 4], table[~c, 4], paired)
