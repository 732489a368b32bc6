#!/usr/bin/env python3
"""Writes a tiny llama-architecture GGUF with random weights, for testing wahook's agent against
llama.cpp's own server (llama-cpp-python) without downloading a model.

The tokenizer is SentencePiece-style with byte fallback: 256 byte tokens and single characters,
so it counts several times more tokens than tiktoken's o200k for the same text (as real small
models' tokenizers do), and random weights make it emit anything, control bytes included.

    make-model.py OUT.gguf [--ctx 2048] [--template chatml|strict] [--seed 7]

`strict` is a Gemma-style chat template: it refuses a `system` role and any two turns of the
same role in a row ("Conversation roles must alternate"), as Gemma's and Mistral's do.
"""

import argparse
import string

import numpy as np
from gguf import GGUFWriter, TokenType

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
STRICT = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{{ message['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--ctx", type=int, default=2048)
    p.add_argument("--template", choices=["chatml", "strict"], default="chatml")
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args()

    tokens: list[str] = ["<unk>", "<s>", "</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(TokenType.BYTE)
    pieces = ["\u2581"] + ["\u2581" + c for c in string.ascii_lowercase] + list(
        string.ascii_letters + string.digits + string.punctuation
    )
    for piece in pieces:
        tokens.append(piece)
        types.append(TokenType.NORMAL)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    n_vocab, n_embd, n_head, n_layer, n_ff = len(tokens), 64, 4, 2, 128

    w = GGUFWriter(a.out, "llama")
    w.add_context_length(a.ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_chat_template(STRICT if a.template == "strict" else CHATML)

    rng = np.random.default_rng(a.seed)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    ones = lambda n: np.ones(n, dtype=np.float32)  # noqa: E731
    w.add_tensor("token_embd.weight", rand(n_vocab, n_embd))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones(n_embd))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{name}.weight", rand(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones(n_embd))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(n_embd, n_ff))
    w.add_tensor("output_norm.weight", ones(n_embd))
    w.add_tensor("output.weight", rand(n_vocab, n_embd))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
