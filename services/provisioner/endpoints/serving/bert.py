"""A BERT sentence encoder in plain numpy, for sentence-transformers folders such as
all-MiniLM-L6-v2: token, position and type embeddings, post-LayerNorm transformer layers with
exact (erf) GELU, then the folder's pooling (mean over the attention mask, or CLS) and, when
modules.json lists a Normalize module, L2 normalisation, as sentence-transformers computes it.

No torch and no transformers: a model server in a sandbox starts in a second and needs only
numpy, tokenizers and safetensors. Everything stays float32; weight matrices are transposed
once at load (query, key and value fused into one product, the 1/sqrt(head size) folded into
the query), so a request does only matrix products and elementwise work.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

F32 = np.float32
# Inputs of similar length are encoded together, padded to the longest of their chunk, in
# chunks of about this many tokens: larger ones gain nothing and page-fault on huge temporaries.
CHUNK_TOKENS = 2048
# float32 erf (Eigen's rational approximation on [-4, 4], where erf reaches +-1 in float32):
# numpy has no erf, and the tanh form of GELU differs from BERT's by up to 1e-3.
_ERF_ALPHA = [F32(c) for c in (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
                               -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
                               -1.60960333262415e-02)]
_ERF_BETA = [F32(c) for c in (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
                              -7.37332916720468e-03, -1.42647390514189e-02)]


def is_bert_folder(folder: Path) -> bool:
    """A sentence-transformers (or plain Hugging Face) BERT folder this encoder can load."""
    config = folder / "config.json"
    if not ((folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
            and config.is_file()):
        return False
    return bool(json.loads(config.read_text()).get("model_type") == "bert")


def gelu(x: np.ndarray) -> np.ndarray:
    """0.5 x (1 + erf(x / sqrt 2)), in place."""
    z = x * F32(1 / np.sqrt(2))
    np.clip(z, -4, 4, out=z)
    z2 = z * z
    p = z2 * _ERF_ALPHA[0]
    p += _ERF_ALPHA[1]
    for c in _ERF_ALPHA[2:]:
        p *= z2
        p += c
    q = z2 * _ERF_BETA[0]
    q += _ERF_BETA[1]
    for c in _ERF_BETA[2:]:
        q *= z2
        q += c
    p *= z
    p /= q
    p += 1
    x *= p
    x *= F32(0.5)
    return x


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    x = x - x.mean(axis=-1, keepdims=True)
    x /= np.sqrt((x * x).mean(axis=-1, keepdims=True) + F32(eps))
    x *= gamma
    x += beta
    return x


@dataclass(frozen=True)
class Layer:
    qkv: np.ndarray  # [hidden, 3 * hidden], the query part pre-scaled
    qkv_bias: np.ndarray
    out: np.ndarray
    out_bias: np.ndarray
    norm1: tuple[np.ndarray, np.ndarray]
    up: np.ndarray
    up_bias: np.ndarray
    down: np.ndarray
    down_bias: np.ndarray
    norm2: tuple[np.ndarray, np.ndarray]


class BertEncoder:
    def __init__(self, *, tokenizer: Tokenizer, weights: dict[str, np.ndarray], config: dict[str, Any],
                 pooling: str, normalize: bool, max_tokens: int) -> None:
        if config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"unsupported activation {config.get('hidden_act')!r} (only gelu)")
        self.tokenizer = tokenizer
        self.dimension = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.pooling = pooling
        self.normalize = normalize
        self.max_tokens = max_tokens
        w = {k.removeprefix("bert."): v.astype(F32, copy=False) for k, v in weights.items()}
        self.word = w["embeddings.word_embeddings.weight"]
        self.position = w["embeddings.position_embeddings.weight"]
        self.token_type = w["embeddings.token_type_embeddings.weight"][0]
        self.embed_norm = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.layers = [self._layer(w, f"encoder.layer.{i}.")
                       for i in range(int(config["num_hidden_layers"]))]

    @classmethod
    def load(cls, folder: Path) -> BertEncoder:
        config = json.loads((folder / "config.json").read_text())
        st_config = _json(folder / "sentence_bert_config.json")
        max_tokens = min(int(st_config.get("max_seq_length", 512)), int(config["max_position_embeddings"]))
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # tokenizer.json carries its own padding and truncation (128 for MiniLM): replace them.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_tokens)
        modules = _json(folder / "modules.json") or []
        normalize = any(m.get("type", "").endswith(".Normalize") for m in modules)
        pooling = next((m["path"] for m in modules if m.get("type", "").endswith(".Pooling")), "1_Pooling")
        return cls(tokenizer=tokenizer, weights=load_file(str(folder / "model.safetensors")), config=config,
                   pooling=_pooling(_json(folder / pooling / "config.json")), normalize=normalize,
                   max_tokens=max_tokens)

    def _layer(self, w: dict[str, np.ndarray], p: str) -> Layer:
        scale = F32(1 / np.sqrt(self.dimension // self.heads))
        attn = p + "attention.self."

        def t(name: str) -> np.ndarray:
            return np.ascontiguousarray(w[p + name + ".weight"].T)

        qkv = np.concatenate([w[attn + "query.weight"].T * scale, w[attn + "key.weight"].T,
                              w[attn + "value.weight"].T], axis=1)
        qkv_bias = np.concatenate([w[attn + "query.bias"] * scale, w[attn + "key.bias"],
                                   w[attn + "value.bias"]])
        return Layer(
            qkv=np.ascontiguousarray(qkv, dtype=F32), qkv_bias=qkv_bias.astype(F32),
            out=t("attention.output.dense"), out_bias=w[p + "attention.output.dense.bias"],
            norm1=(w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"]),
            up=t("intermediate.dense"), up_bias=w[p + "intermediate.dense.bias"],
            down=t("output.dense"), down_bias=w[p + "output.dense.bias"],
            norm2=(w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]),
        )

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """Embeddings [len(texts), dimension] and each text's token count (after truncation,
        with the special tokens: what the model read)."""
        ids = [e.ids for e in self.tokenizer.encode_batch(list(texts))]
        out = np.empty((len(ids), self.dimension), dtype=F32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        while order:
            # The longest first: it sets the padded length, and the chunk's size follows from it.
            chunk = order[-max(1, CHUNK_TOKENS // len(ids[order[-1]])):]
            del order[-len(chunk):]
            out[chunk] = self._forward([ids[i] for i in chunk])
        return out, [len(i) for i in ids]

    def _forward(self, ids: list[list[int]]) -> np.ndarray:
        batch, length = len(ids), max(len(i) for i in ids)
        tokens = np.zeros((batch, length), dtype=np.int64)
        mask = np.zeros((batch, length), dtype=F32)
        for row, seq in enumerate(ids):
            tokens[row, :len(seq)] = seq
            mask[row, :len(seq)] = 1
        x = (self.word[tokens] + self.position[:length] + self.token_type).reshape(batch * length, -1)
        x = layer_norm(x, *self.embed_norm, self.eps)
        bias = ((1 - mask) * np.finfo(F32).min)[:, None, None, :]
        for layer in self.layers:
            x = self._layer_forward(layer, x, bias)
        x = x.reshape(batch, length, -1)
        if self.pooling == "cls":
            pooled = x[:, 0]
        else:
            pooled = np.einsum("bld,bl->bd", x, mask) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        if self.normalize:
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), F32(1e-12))
        return pooled.astype(F32, copy=False)

    def _layer_forward(self, layer: Layer, x: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """One layer on x [batch * length, hidden]: dense products stay 2-D (one BLAS call, not
        one per sequence), attention is batched over sequences and heads."""
        batch, length = bias.shape[0], bias.shape[-1]
        hidden = x.shape[1]
        qkv = x @ layer.qkv
        qkv += layer.qkv_bias
        q, k, v = qkv.reshape(batch, length, 3, self.heads, hidden // self.heads).transpose(2, 0, 3, 1, 4)
        scores = q @ k.transpose(0, 1, 3, 2)
        scores += bias
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch * length, hidden)
        attended = context @ layer.out
        attended += layer.out_bias
        attended += x
        x = layer_norm(attended, *layer.norm1, self.eps)
        inner = x @ layer.up
        inner += layer.up_bias
        out = gelu(inner) @ layer.down
        out += layer.down_bias
        out += x
        return layer_norm(out, *layer.norm2, self.eps)


def _json(path: Path) -> Any:
    """A folder's optional JSON file; {} when it is missing."""
    return json.loads(path.read_text()) if path.is_file() else {}


def _pooling(config: object) -> str:
    """sentence-transformers' pooling config -> "mean" or "cls" (mean when there is none)."""
    if not isinstance(config, dict) or config.get("pooling_mode_mean_tokens", True):
        return "mean"
    if config.get("pooling_mode_cls_token"):
        return "cls"
    raise ValueError(f"unsupported pooling {config!r} (only mean or CLS)")
