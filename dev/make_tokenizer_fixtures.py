#!/usr/bin/env python3
"""Writes the reference fixtures for test/test_tokenizer.cpp.

Regenerate (from the repository root):

    python3 dev/make_tokenizer_fixtures.py [path to the SmolLM2 gguf]

The gguf defaults to models/SmolLM2-135M-Instruct.Q4_1.gguf (`make fetch`).
Needs the pip packages `tokenizers`, `gguf` and `transformers` (offline is
fine). Writes, under test/fixtures/:

  tokenizer_smollm2.json       {"text": [...], "chat": [...]} for SmolLM2 as
                               Hugging Face `tokenizers` encodes it, with the
                               vocabulary and merges read from the gguf
  tokenizer_tiny_<v>.json      tiny byte-level BPE tokenizers (real
                               tokenizer.json files) trained here on the corpus
                               with the pre-tokenizer of each variant
                               v = gpt2, smollm, llama3, qwen2
  tokenizer_tiny_cases.json    {"<v>": [...]} expected ids for them
  tokenizer_config.json        bos/eos for the tiny tokenizers (found next to
                               them by tokenizer_from_json)

A text case is {"name", "hex" (the UTF-8 input bytes, possibly invalid),
"allow_special", "roundtrip", "ids"}; ids = reference encoding of
bytes.decode("utf-8", errors="replace"). roundtrip is true when decoding the
ids must give back the input bytes. A chat case is {"name", "messages",
"add_generation_prompt", "ids", "is_answer"}.
"""
import json
import os
import random
import sys

from gguf import GGUFReader
from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models,
                        normalizers, pre_tokenizers, trainers)

FIXTURES = "test/fixtures"

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# ---------------------------------------------------------------- the corpus

def text_cases():
    """(name, bytes) pairs covering the pre-tokenizer's corners."""
    u = lambda name, s: (name, s.encode("utf-8"))
    cases = [
        u("empty", ""),
        u("english", "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, "
                     "and the clocks were striking thirteen."),
        u("contractions", "I'm sure he's here; you're late, we've seen it, they'll come, I'd go, don't."),
        u("contractions_upper", "I'M SURE HE'S HERE, YOU'RE LATE, WE'VE, THEY'LL, I'D, DON'T, 'S 'T 'Re 'vE"),
        u("apostrophes", "''s 'sa 'll' rock'n'roll '' ' x' 'ſ 'ſt"),
        u("korean_syllables", "안녕하세요, 세계! 한국어 토크나이저 테스트입니다."),
        u("korean_conjoining_jamo", "\u1100\u1161\u11a8 \u1112\u1161\u11ab\u1100\u1173\u11af"),
        u("korean_compat_jamo", "ㄱㄴㄷ ㅏㅑㅓ ㅋㅋㅋ ㅎㅎ"),
        u("chinese", "我们今天去公园散步，天气很好。机器学习是人工智能的一个分支。"),
        u("japanese", "こんにちは、世界！カタカナとひらがなと漢字を混ぜた文章です。ｶﾀｶﾅ"),
        u("code_c", "int main(void) {\n\tfor (int i = 0; i < 10; i++) {\n\t\tprintf(\"%d\\n\", i);\n\t}\n\treturn 0;\n}\n"),
        u("code_python", "def f(x):\n    if x > 1:\n        return x * f(x - 1)\n    return 1\n\n\nprint(f(5))  # 120\n"),
        u("emoji", "I love 🍕 and 🎉! 👍🏽 ok"),
        u("emoji_zwj_flags", "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 🇰🇷🇺🇸🇯🇵 flags, ❤️‍🔥"),
        u("digits", "1234567 3.14159 2026-11-26 v1.2.3 0x1F 1,000,000 ½ ² ٣٤٥ Ⅻ"),
        u("digits_after_space", " 1 22 333 4444 a1b2 x 9"),
        u("whitespace_runs", "a  b   c    d\t\te \t f\n\n\ng\r\nh   "),
        u("trailing_spaces", "end with spaces   "),
        u("leading_spaces", "   leading spaces"),
        u("only_whitespace", " \t\n \r\n  "),
        u("nbsp_ideographic", "a\u00a0b \u00a0c\u3000d \u3000 e\u2009f\u202fg\u205fh\u1680i\u2028j\u2029k\u0085l\u000bm\u000cn"),
        u("not_whitespace", "a\u001cb\u001dc\u001ed\u001ff\u200bg\u180eh"),
        u("newlines", "line one\nline two\n\nline four\n \n  \n"),
        u("crlf", "a\r\nb\r\n\r\nc\rd\n\re"),
        u("punctuation", "Hello, world!!! (yes) [no] {maybe} <tag/> a--b ... ?! #$%^&*~`|\\ «quote» “smart” — dash"),
        u("punct_newlines", "end.\n\nNext!\r\n\r\n...\n)\n"),
        u("special_tokens", "<|im_start|>user\nHi<|im_end|>\n<|endoftext|>"),
        u("special_tokens_embedded", "a<|im_start|>b<|im_end|><|im_end|> <|im_start|> <file_sep>x<|im_start"),
        u("chatml_conversation",
          "<|im_start|>system\n" + SMOLLM_SYSTEM + "<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
          "<|im_start|>assistant\n2+2 is 4.<|im_end|>\n"),
        u("mixed_scripts", "Hello 안녕 你好 こんにちは Привет مرحبا שלום नमस्ते Γειά"),
        u("combining", "e\u0301 cafe\u0301 n\u0303 \u0301alone A\u030a\u0323"),
        u("long_word", "Pneumonoultramicroscopicsilicovolcanoconiosis " * 3),
        u("url_email", "https://example.com/path?q=1&r=two#frag mail@example.org"),
        ("invalid_lone_continuation", b"ab\x80cd"),
        ("invalid_truncated_3byte", b"x\xe2\x82y\xe2\x82"),
        ("invalid_overlong", b"\xc0\x80 \xc1\xbf \xe0\x80\x80 \xf0\x80\x80\x80"),
        ("invalid_surrogate", b"\xed\xa0\x80\xed\xbf\xbf"),
        ("invalid_f5_ff", b"\xf5\xf8\xfe\xff!"),
        ("invalid_mix", "valid é 한".encode() + b"\xe9\x9a" + "中".encode() + b"\xf0\x9f\x98" + b" ok \xf4\x90\x80\x80"),
        ("invalid_truncated_4byte_end", b"smile \xf0\x9f\x98"),
    ]
    return cases + random_cases(random.Random(2026), 120)


def random_cases(rng, count):
    """Random strings over a pool that stresses every regex branch."""
    pool = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") * 3
            + list("0123456789") * 2 + list("  ") * 8 + list("\t\n\r") * 2
            + list("'''.,;:!?-_()[]{}<>/\\\"#$%&*+=@^`|~")
            + list("sStTrReEvVmMlLdD") * 3
            + ["é", "ß", "ſ", "ı", "K", "안", "녕", "\u1100", "\u1161", "ㄱ", "中", "文", "か", "ナ",
               "😀", "👍", "\u200d", "\ufe0f", "\u0301", "\u00a0", "\u3000", "\u2009", "\u0085",
               "\u000b", "\u000c", "½", "²", "٣", "Ⅻ", "№", "€", "\u2028", "\u001f"])
    out = []
    for i in range(count):
        n = rng.randint(1, 40)
        s = "".join(rng.choice(pool) for _ in range(n))
        out.append(("random_%03d" % i, s.encode("utf-8")))
    return out


def chat_cases():
    """(name, messages, add_generation_prompt)."""
    return [
        ("user_only", [{"role": "user", "content": "Hello!"}], True),
        ("user_assistant", [{"role": "user", "content": "What is the capital of France?"},
                            {"role": "assistant", "content": "The capital of France is Paris."}], False),
        ("with_system", [{"role": "system", "content": "You are terse."},
                         {"role": "user", "content": "Count to 3."},
                         {"role": "assistant", "content": "1, 2, 3."},
                         {"role": "user", "content": "Now backwards, in 한국어."}], True),
        ("multi_turn", [{"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "Hello! How can I help?"},
                        {"role": "user", "content": "Write code.\n"},
                        {"role": "assistant", "content": "\n\n```python\nprint('hi')\n```\n  "}], False),
        ("empty_contents", [{"role": "user", "content": ""},
                            {"role": "assistant", "content": ""}], False),
        ("whitespace_edges", [{"role": "user", "content": "  leading"},
                              {"role": "assistant", "content": " 42 is the answer "}], True),
        ("no_messages_prompt", [], True),
    ]

# ---------------------------------------------------------------- SmolLM2 from the gguf

def field_strings(reader, key):
    f = reader.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def field_ints(reader, key):
    f = reader.fields[key]
    return [int(f.parts[i][0]) for i in f.data]


def smollm2_tokenizer(gguf_path):
    reader = GGUFReader(gguf_path)
    tokens = field_strings(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in field_strings(reader, "tokenizer.ggml.merges")]
    types = field_ints(reader, "tokenizer.ggml.token_type")
    assert len(set(tokens)) == len(tokens)
    vocab = {s: i for i, s in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i, t in enumerate(types) if t == 3])
    template = bytes(reader.fields["tokenizer.chat_template"].parts[-1]).decode("utf-8")
    return tok, template


def encode(tok, data, allow_special):
    tok.encode_special_tokens = not allow_special
    return tok.encode(data.decode("utf-8", errors="replace")).ids


def text_fixture(name, data, tok, allow_special):
    ids = encode(tok, data, allow_special)
    # Not every input comes back: invalid UTF-8 is replaced, NFC may change
    # the text, and characters whose bytes have no token are dropped (SmolLM2
    # lacks e.g. the tokens for bytes 0x1d and 0xf1).
    roundtrip = tok.decode(ids, skip_special_tokens=False).encode("utf-8") == data
    return {"name": name, "hex": data.hex(), "allow_special": allow_special,
            "roundtrip": roundtrip, "ids": ids}


def render_chatml(messages, add_generation_prompt, default_system):
    out = ""
    if messages and messages[0]["role"] != "system" and default_system is not None:
        out += "<|im_start|>system\n" + default_system + "<|im_end|>\n"
    spans = []   # (start, end) of each assistant content plus its <|im_end|>
    for m in messages:
        out += "<|im_start|>" + m["role"] + "\n"
        start = len(out)
        out += m["content"] + "<|im_end|>"
        if m["role"] == "assistant":
            spans.append((start, len(out)))
        out += "\n"
    if add_generation_prompt:
        out += "<|im_start|>assistant\n"
    return out, spans


def chat_fixture(name, messages, add_generation_prompt, tok, template):
    from transformers import PreTrainedTokenizerFast
    text, spans = render_chatml(messages, add_generation_prompt, SMOLLM_SYSTEM)
    if messages:   # the gguf's own jinja template must render the same string
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=template)
        rendered = fast.apply_chat_template(messages, tokenize=False,
                                            add_generation_prompt=add_generation_prompt)
        assert rendered == text, (name, rendered, text)
    tok.encode_special_tokens = False
    enc = tok.encode(text)
    # A token is part of the answer when it overlaps an assistant content or
    # is the <|im_end|> closing it.
    is_answer = [int(any(s < end and start < e for s, e in spans)) for start, end in enc.offsets]
    return {"name": name, "messages": messages, "add_generation_prompt": add_generation_prompt,
            "ids": enc.ids, "is_answer": is_answer}

# ---------------------------------------------------------------- tiny trained variants

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
NON_SPECIAL_ADDED = "<tool_call>"


def tiny_tokenizer(variant, corpus):
    bpe = models.BPE(ignore_merges=(variant == "llama3"))
    tok = Tokenizer(bpe)
    if variant == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif variant == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    else:
        pattern = LLAMA3_PATTERN if variant == "llama3" else QWEN2_PATTERN
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        if variant == "qwen2":
            tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.add_tokens([AddedToken(NON_SPECIAL_ADDED, special=False, normalized=False)])
    return tok


def training_corpus(cases):
    texts = [d.decode("utf-8", errors="replace") for _, d in cases]
    return texts * 4


def tiny_cases(variant, tok, cases):
    extra = [("non_special_added", "call <tool_call>{}</tool_call> <|im_end|>".encode())]
    out = []
    for name, data in cases + extra:
        out.append(text_fixture(name, data, tok, True))
        if b"<" in data:
            out.append(text_fixture(name + "_nospecial", data, tok, False))
    return out

# ---------------------------------------------------------------- main

def write_json(name, value, indent=None):
    path = os.path.join(FIXTURES, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False, indent=indent, separators=(",", ":") if indent is None else None)
        f.write("\n")
    print("wrote %s (%d bytes)" % (path, os.path.getsize(path)))


def main():
    gguf_path = sys.argv[1] if len(sys.argv) > 1 else "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    os.makedirs(FIXTURES, exist_ok=True)
    cases = text_cases()

    tok, template = smollm2_tokenizer(gguf_path)
    text = []
    for name, data in cases:
        text.append(text_fixture(name, data, tok, True))
        if b"<" in data:
            text.append(text_fixture(name + "_nospecial", data, tok, False))
    chat = [chat_fixture(n, m, g, tok, template) for n, m, g in chat_cases()]
    write_json("tokenizer_smollm2.json", {"text": text, "chat": chat})

    corpus = training_corpus(cases)
    expected = {}
    for variant in ["gpt2", "smollm", "llama3", "qwen2"]:
        tiny = tiny_tokenizer(variant, corpus)
        path = os.path.join(FIXTURES, "tokenizer_tiny_%s.json" % variant)
        tiny.save(path, pretty=False)
        print("wrote %s (%d bytes)" % (path, os.path.getsize(path)))
        expected[variant] = tiny_cases(variant, tiny, cases)
    write_json("tokenizer_tiny_cases.json", expected)
    write_json("tokenizer_config.json", {"bos_token": "<|endoftext|>",
                                         "eos_token": {"content": "<|im_end|>", "special": True}}, 2)


if __name__ == "__main__":
    main()
