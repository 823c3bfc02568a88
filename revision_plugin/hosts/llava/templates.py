"""Conversation templates LLaVA 1.2.2 lacks: ``llama_3`` (Llama-3-Instruct's chat format,
the paper's LLM), added to LLaVA's ``conv_templates`` by ``register()``, with its exact
label masking (:func:`preprocess_llama_3`). The template a model was trained with is
recorded in its checkpoint (``revision_conv_template``, see ``checkpoints``)."""

from __future__ import annotations

import torch

from revision_plugin.errors import BadInputError

LLAMA3_VERSION = "llama_3"
LLAMA3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language."
)


def llama3_conversation():
    """Llama-3-Instruct's chat format as a LLaVA ``Conversation`` (``--version llama_3``).

    LLaVA 1.2.2 has no template for Llama-3 (the paper's LLM), and its ``v1`` masking needs a
    ``tokenizer.legacy`` attribute Llama-3's tokenizer does not have. Prompts come from
    ``get_prompt()`` as for any template (``<|start_header_id|>role<|end_header_id|>\n\n ...
    <|eot_id|>``); training labels come from :func:`preprocess_llama_3`.
    """
    from llava import conversation as conversation_lib

    return conversation_lib.Conversation(
        system=f"<|start_header_id|>system<|end_header_id|>\n\n{LLAMA3_SYSTEM}",
        roles=("<|start_header_id|>user<|end_header_id|>\n\n", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
        version=LLAMA3_VERSION,
        messages=[],
        offset=0,
        sep_style=conversation_lib.SeparatorStyle.MPT,
        sep="<|eot_id|>",
    )


def preprocess_llama_3(sources, tokenizer, has_image: bool = False) -> dict:
    """Tokenise ``llama_3`` conversations segment by segment, so the label mask is exact by
    construction (no per-round re-counting that can drift): system and user turns and the
    assistant headers are masked, assistant answers and their ``<|eot_id|>`` are learned."""
    from llava import conversation as conversation_lib
    from llava.constants import IGNORE_INDEX

    from revision_plugin.hosts.llava.inference import tokenize_prompt

    conv = conversation_lib.default_conversation
    roles = {"human": conv.roles[0], "gpt": conv.roles[1]}
    bos = tokenizer.bos_token_id

    def encode(text: str) -> list[int]:
        ids = tokenize_prompt(text, tokenizer) if has_image else tokenizer(text).input_ids
        return ids[1:] if ids and bos is not None and ids[0] == bos else ids

    all_ids, all_labels = [], []
    for i, source in enumerate(sources):
        if roles[source[0]["from"]] != conv.roles[0]:
            source = source[1:]  # skip a leading assistant turn, as LLaVA does
        ids = [bos] if bos is not None else []
        labels = [IGNORE_INDEX] * len(ids)
        system = encode(conv.system + conv.sep)
        ids += system
        labels += [IGNORE_INDEX] * len(system)
        for j, sentence in enumerate(source):
            role = roles[sentence["from"]]
            if role != conv.roles[j % 2]:
                raise BadInputError(f"conversation {i}: turn {j} is from {sentence['from']!r}; turns must alternate human/gpt")
            if j % 2 == 0:
                part = encode(role + sentence["value"] + conv.sep)
                ids += part
                labels += [IGNORE_INDEX] * len(part)
            else:
                head, body = encode(role), encode(sentence["value"] + conv.sep)
                ids += head + body
                labels += [IGNORE_INDEX] * len(head) + body
        limit = tokenizer.model_max_length
        all_ids.append(torch.tensor(ids[:limit], dtype=torch.long))
        all_labels.append(torch.tensor(labels[:limit], dtype=torch.long))
    return {"input_ids": all_ids, "labels": all_labels}


def preprocess(sources, tokenizer, has_image: bool = False, _original=None) -> dict:
    from llava import conversation as conversation_lib

    if conversation_lib.default_conversation.version == LLAMA3_VERSION:
        return preprocess_llama_3(sources, tokenizer, has_image=has_image)
    return _original(sources, tokenizer, has_image=has_image)
