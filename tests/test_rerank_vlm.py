"""VLM reranker offline: tiny random Qwen3-VL and Idefics3 checkpoints saved to a folder and loaded back
through the real path (HF_HUB_OFFLINE=1, conftest), scored against the models' own forward."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rerank.base import Candidates, Query, create_reranker, reranker_from_config
from rerank.vlm import MONOQWEN2_VL, QWEN3_VL_RERANKER_SYSTEM, VlmConfig, VlmReranker, prompt_parts
from tiny_models import save_tiny_idefics3, save_tiny_qwen3_vl

RNG = np.random.default_rng(0)
IMAGES = [RNG.integers(0, 256, (40 + 3 * i, 30 + 5 * i, 3), dtype=np.uint8) for i in range(7)]
CAPTIONS = ["a red square", "two dogs running in the snow", "a man rides a bike", "dark",
            "a cat sleeps on a sofa", "a child plays with a ball"]
#: Seeds whose random weights let the image tokens move the score clearly (asserted below, so a seed
#: that did not would fail loudly rather than make the order tests vacuous).
FAMILIES = {"qwen3_vl": (save_tiny_qwen3_vl, 0), "idefics3": (save_tiny_idefics3, 2)}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tiny_dir(request, tmp_path_factory):
    save, seed = FAMILIES[request.param]
    return save(tmp_path_factory.mktemp(request.param) / "tiny", seed=seed)


@pytest.fixture(scope="module")
def reranker(tiny_dir):
    return create_reranker("vlm", model=str(tiny_dir), first=None, device="cpu", batch_size=3)


def stage1(m):
    return np.linspace(1.0, 0.0, m, dtype=np.float32)


def text_query(text, images, ids=None):
    ids = np.arange(len(images)) if ids is None else np.asarray(ids)
    return Query("text", text), Candidates("image", ids, items=list(images), stage1_scores=stage1(len(images)))


def image_query(image, items, modality="text"):
    return Query("image", image), Candidates(modality, np.arange(len(items)), items=list(items),
                                             stage1_scores=stage1(len(items)))


def reference(directory, query, document, system=QWEN3_VL_RERANKER_SYSTEM, yes="yes", no="no"):
    """logit(yes) - logit(no) of one pair, alone in its batch (no padding), from the model's own forward.

    The prompt is written out here as Qwen3-VL-Reranker publishes it, independently of rerank/vlm.py.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(directory, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(directory)

    def part(x):
        return {"type": "text", "text": x} if isinstance(x, str) else {"type": "image"}

    content = [{"type": "text", "text": "<Instruct>: Given a search query, retrieve relevant candidates that "
                                        "answer the query."},
               {"type": "text", "text": "<Query>:"}, part(query), {"type": "text", "text": "\n<Document>:"},
               part(document)]
    chat = [{"role": "system", "content": [{"type": "text", "text": system}]}, {"role": "user", "content": content}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    images = [Image.fromarray(x) for x in (query, document) if not isinstance(x, str)]
    inputs = processor(text=[text], images=[images], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
    ids = [processor.tokenizer.convert_tokens_to_ids(t) for t in (yes, no)]
    return float(logits[ids[0]] - logits[ids[1]])


def test_scores_are_the_yes_no_logit_difference_of_the_published_prompt_in_every_direction(tiny_dir, reranker):
    t2i = reranker.score(*text_query(CAPTIONS[1], IMAGES[:5]))
    i2t = reranker.score(*image_query(IMAGES[0], CAPTIONS))
    i2i = reranker.score(*image_query(IMAGES[0], IMAGES[1:5], modality="image"))
    assert t2i.dtype == i2t.dtype == i2i.dtype == np.float32
    np.testing.assert_allclose(t2i, [reference(tiny_dir, CAPTIONS[1], im) for im in IMAGES[:5]], atol=1e-4)
    np.testing.assert_allclose(i2t, [reference(tiny_dir, IMAGES[0], c) for c in CAPTIONS], atol=1e-4)
    np.testing.assert_allclose(i2i, [reference(tiny_dir, IMAGES[0], im) for im in IMAGES[1:5]], atol=1e-4)
    # the tiny models tell candidates apart in every direction, so order and padding bugs would show
    assert min(np.ptp(t2i), np.ptp(i2t), np.ptp(i2i)) > 0.1


def test_a_candidates_score_does_not_depend_on_its_batch_mates_or_their_order(tiny_dir, reranker):
    full = reranker.score(*text_query(CAPTIONS[0], IMAGES))
    order = np.array([6, 2, 0, 5, 3, 1, 4])
    shuffled = reranker.score(*text_query(CAPTIONS[0], [IMAGES[j] for j in order], ids=order))
    np.testing.assert_allclose(shuffled, full[order], atol=1e-3)
    alone = [reranker.score(*text_query(CAPTIONS[0], [im]))[0] for im in IMAGES]
    np.testing.assert_allclose(alone, full, atol=1e-3)
    wide = VlmReranker(tiny_dir, first=None, device="cpu", batch_size=7)  # one padded batch of all of them
    np.testing.assert_allclose(wide.score(*text_query(CAPTIONS[0], IMAGES)), full, atol=1e-3)
    # captions of different lengths: left padding moves the shorter ones, never their score
    i2t = reranker.score(*image_query(IMAGES[3], CAPTIONS))
    np.testing.assert_allclose(reranker.score(*image_query(IMAGES[3], CAPTIONS[::-1])), i2t[::-1], atol=1e-3)
    # several queries in one call (pairs of different queries share batches)
    many = reranker.score_batch([Query("text", CAPTIONS[0]), Query("image", IMAGES[3])],
                                [text_query(CAPTIONS[0], IMAGES)[1], image_query(IMAGES[3], CAPTIONS)[1]])
    np.testing.assert_allclose(many[0], full, atol=1e-3)
    np.testing.assert_allclose(many[1], i2t, atol=1e-3)


def test_only_the_previous_stages_top_vlm_k_are_scored_and_the_rest_keep_their_order(tiny_dir, reranker):
    query, cands = text_query(CAPTIONS[2], IMAGES)
    previous = np.array([0.1, 0.9, 0.3, 0.8, 0.2, 0.7, 0.4], dtype=np.float32)
    cands = Candidates("image", cands.ids, items=cands.items, stage1_scores=previous)
    k3 = VlmReranker(tiny_dir, first=None, device="cpu", vlm_k=3)
    calls = []
    original = k3.score_pairs
    k3.score_pairs = lambda chats, images, **kw: calls.append(len(chats)) or original(chats, images, **kw)
    got = k3.score(query, cands)
    assert calls == [3]
    head, tail = [1, 3, 5], [6, 2, 4, 0]  # the three best by the previous stage, then the others in its order
    full = reranker.score(query, cands)
    np.testing.assert_allclose(got[head], full[head], atol=1e-3)
    assert got[tail].max() < got[head].min() and list(np.argsort(-got[tail], kind="stable")) == [0, 1, 2, 3]
    # with a fusion weight, the VLM's z-scores among the head mix in the previous stage's
    fused = VlmReranker(tiny_dir, first=None, device="cpu", vlm_k=3, fusion_weight=0.5).score(query, cands)
    z = lambda s: (s - s.mean()) / s.std()  # noqa: E731
    np.testing.assert_allclose(fused[head], z(full[head]) + 0.5 * z(previous[head]), atol=1e-3)


def test_the_cascade_takes_the_float_rerankers_best_by_default(tiny_dir):
    vectors = RNG.normal(size=(len(IMAGES), 8)).astype(np.float32)
    query_vector = vectors[4] + 0.1 * vectors[1]
    vlm = VlmReranker(tiny_dir, device="cpu", vlm_k=2)  # first="float"
    assert vlm.first.method == "float" and vlm.requires == {"query", "items", "query_embedding", "embeddings"}
    query = Query("text", CAPTIONS[0], embedding=query_vector)
    cands = Candidates("image", np.arange(len(IMAGES)), items=IMAGES, embeddings=vectors)
    got = vlm.score(query, cands)
    cosine = vectors @ query_vector / np.linalg.norm(vectors, axis=1) / np.linalg.norm(query_vector)
    best = np.argsort(-cosine)[:2]
    assert set(np.argsort(-got)[:2]) == set(best)
    with pytest.raises(ValueError, match="needs the candidates' embeddings"):
        vlm.score(query, Candidates("image", np.arange(len(IMAGES)), items=IMAGES))


def test_config_round_trip_rebuilds_the_same_scorer(tiny_dir, reranker):
    vlm = VlmReranker(tiny_dir, device="cpu", first="float", vlm_k=5, prompt_i2t="{query} or {document}?")
    config = json.loads(json.dumps(vlm.config()))
    assert config["method"] == "vlm" and config["first"] == {"method": "float"} and config["vlm_k"] == 5
    rebuilt = reranker_from_config({**config, "first": None})
    assert rebuilt.settings == vlm.settings and rebuilt.first is None
    assert reranker_from_config(config).first.method == "float"
    query, cands = image_query(IMAGES[2], CAPTIONS)
    assert not np.allclose(rebuilt.score(query, cands), reranker.score(query, cands), atol=1e-3)  # the prompt counts


def test_true_false_checkpoints_are_a_configuration(tiny_dir):
    prompt = {k: v for k, v in MONOQWEN2_VL.items() if k not in ("model", "adapter")}  # the tiny model instead
    assert MONOQWEN2_VL["adapter"] == "lightonai/MonoQwen2-VL-v0.1"
    vlm = VlmReranker(tiny_dir, first=None, device="cpu", **prompt)
    tokenizer = vlm.processor.tokenizer
    assert (vlm.yes_id, vlm.no_id) == tuple(tokenizer.convert_tokens_to_ids(t) for t in ("True", "False"))
    chat, images = vlm.messages(Query("text", "a dog"), "a dog", "IMAGE", document_is_text=False)
    assert [m["role"] for m in chat] == ["user"] and images == ["IMAGE"]
    assert chat[0]["content"][0] == {"type": "image"}  # MonoQwen2-VL shows the document image first
    got = vlm.score(*text_query(CAPTIONS[0], IMAGES[:3]))
    expected = []
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_dir).eval()
    instruction = ("Assert the relevance of the previous image document to the following query, answer True or "
                   "False. The query is: ")  # MonoQwen2-VL's model card
    for image in IMAGES[:3]:
        content = [{"type": "image"}, {"type": "text", "text": instruction}, {"type": "text", "text": CAPTIONS[0]}]
        text = vlm.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                 tokenize=False)
        with torch.no_grad():
            logits = model(**vlm.processor(text=[text], images=[[Image.fromarray(image)]], return_tensors="pt")).logits
        expected.append(float(logits[0, -1, vlm.yes_id] - logits[0, -1, vlm.no_id]))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_two_images_go_to_the_processor_in_the_order_the_prompt_shows_them(tiny_dir):
    swapped = VlmReranker(tiny_dir, first=None, device="cpu", prompt_i2i="{document} then {query}")
    chat, images = swapped.messages(Query("image", "Q"), "Q", "D", document_is_text=False)
    assert images == ["D", "Q"] and [p["type"] for p in chat[-1]["content"]] == ["image", "text", "image"]
    assert prompt_parts("<a>{query}{document}") == ["<a>", "{query}", "{document}"]


def test_settings_are_checked(tiny_dir):
    with pytest.raises(ValueError, match="prompt_t2i must hold"):
        VlmConfig(prompt_t2i="no placeholders")
    with pytest.raises(ValueError, match="prompt_i2t must hold"):
        VlmConfig(prompt_i2t="{query}{query}{document}")
    with pytest.raises(ValueError, match="vlm_k"):
        VlmConfig(vlm_k=0)
    with pytest.raises(ValueError, match="vlm_k"):
        VlmConfig(vlm_k=True)
    with pytest.raises(ValueError, match="fusion_weight"):
        VlmConfig(fusion_weight=-1)
    with pytest.raises(ValueError, match="must differ"):
        VlmConfig(yes_token="yes", no_token="yes")
    with pytest.raises(ValueError, match="exactly one known token"):
        VlmReranker(tiny_dir, first=None, device="cpu", yes_token="yes yes")
    with pytest.raises(ValueError, match="exactly one known token"):
        VlmReranker(tiny_dir, first=None, device="cpu", no_token="perhaps")
    with pytest.raises(ValueError, match="precision"):
        VlmReranker(tiny_dir, first=None, device="cpu", precision="int4")
    with pytest.raises(TypeError, match="first must be"):
        VlmReranker(tiny_dir, first=3, device="cpu")


def test_bad_inputs_are_clear_errors(reranker):
    with pytest.raises(ValueError, match="needs an image on one side"):
        reranker.score(Query("text", "a"), Candidates("text", np.arange(1), items=["b"], stage1_scores=stage1(1)))
    with pytest.raises(ValueError, match=r"Candidates.items\[1\] must be a non-empty caption"):
        reranker.score(*image_query(IMAGES[0], ["a cat", " "]))
    with pytest.raises(ValueError, match="needs Candidates.stage1_scores"):
        reranker.score(Query("text", "a"), Candidates("image", np.arange(1), items=IMAGES[:1]))


def test_a_checkpoint_that_would_score_with_random_weights_is_refused(tmp_path):
    from transformers import AutoModel

    directory = save_tiny_qwen3_vl(tmp_path / "full")
    AutoModel.from_pretrained(directory).save_pretrained(tmp_path / "base")  # the backbone alone: no lm_head
    for name in ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "processor_config.json", "video_preprocessor_config.json", "special_tokens_map.json"):
        if (directory / name).exists():
            (tmp_path / "base" / name).write_bytes((directory / name).read_bytes())
    with pytest.raises(ValueError, match="no weights for lm_head"):
        VlmReranker(tmp_path / "base", first=None, device="cpu")
    config = json.loads((directory / "config.json").read_text())
    config["architectures"] = ["Qwen3VLForSequenceClassification"]
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="sequence-classification conversion"):
        VlmReranker(directory, first=None, device="cpu")


def test_not_a_vlm_is_a_clear_error(tmp_path):
    from tiny_models import save_tiny_transformers_clip

    with pytest.raises(ValueError, match="not an image-text-to-text checkpoint"):
        VlmReranker(save_tiny_transformers_clip(tmp_path / "clip"), first=None, device="cpu")


def test_a_retriever_reranks_with_it_in_both_directions_and_saves_it(tmp_path):
    from retrieval import Retriever
    from toy_encoder import COLORS, ToyEncoder, solid_images

    names = list(COLORS)
    paths = solid_images(tmp_path)
    directory = save_tiny_qwen3_vl(tmp_path / "tiny")
    retriever = Retriever.build(images=paths, texts=[f"a {n} square" for n in names], encoder=ToyEncoder(), bits=16,
                                fit_pairs=(np.arange(len(paths)), np.arange(len(paths))))
    vlm = VlmReranker(directory, device="cpu", vlm_k=4)
    hits = retriever.search("a red square", k=len(paths), candidates=len(paths), rerank=vlm)
    floats = retriever.search("a red square", k=len(paths), candidates=len(paths), rerank="float")
    assert len(hits) == len(floats) == len(paths)
    scored = [h.score for h in hits[:4]]
    assert {h.id for h in hits[:4]} == {h.id for h in floats[:4]}  # the VLM reorders the float top-4 only
    assert [h.id for h in hits[4:]] == [h.id for h in floats[4:]]
    assert scored == sorted(scored, reverse=True)
    assert len(retriever.search(Path(paths[0]), k=3, candidates=6, rerank=vlm)) == 3  # image -> captions
    assert len(retriever.search(Path(paths[0]), k=3, candidates=6, rerank=vlm, target="image")) == 3
    retriever.reranker = vlm
    saved = retriever.save_pretrained(tmp_path / "saved")
    config = json.loads((saved / "retriever.json").read_text())["reranker"]
    assert config["method"] == "vlm" and config["first"] == {"method": "float"} and config["vlm_k"] == 4


def test_the_command_line_passes_reranker_args_to_it(tmp_path, capsys):
    from retrieval.cli import main
    from toy_encoder import solid_images

    folder = tmp_path / "photos"
    folder.mkdir()
    solid_images(folder)
    directory = save_tiny_qwen3_vl(tmp_path / "tiny")
    index = tmp_path / "index"
    assert main(["index", str(folder), "--out", str(index), "-q"]) == 0
    capsys.readouterr()
    args = ["search", str(index), "a red square", "-k", "5", "--json", "--rerank", "vlm",
            "--reranker-arg", f"vlm.model={directory}", "--reranker-arg", "vlm.vlm_k=3",
            "--reranker-arg", "vlm.device=cpu"]
    assert main(args) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    floats = main(["search", str(index), "a red square", "-k", "5", "--json", "--rerank", "float"])
    float_hits = json.loads(capsys.readouterr().out)["hits"]
    assert floats == 0 and len(hits) == 5
    assert {h["id"] for h in hits[:3]} == {h["id"] for h in float_hits[:3]}
    assert [h["id"] for h in hits[3:]] == [h["id"] for h in float_hits[3:]]
    assert main(["search", str(index), "red", "--rerank", "float", "--reranker-arg", "vlm.vlm_k=3"]) == 2
    assert "--reranker-arg names vlm, but --rerank is float" in capsys.readouterr().err


def test_a_retriever_that_never_uses_it_never_imports_it(tmp_path):
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, 'tests'); import numpy as np; from retrieval import Retriever;"
            "from pathlib import Path; from toy_encoder import ToyEncoder, solid_images;"
            f"paths = solid_images(Path({str(tmp_path)!r}));"
            "r = Retriever.build(images=paths, texts=['a red square'] * len(paths), encoder=ToyEncoder(), bits=16,"
            " fit_pairs=(np.arange(len(paths)), np.arange(len(paths))));"
            "r.search('a red square', k=3, rerank='float');"
            "print('rerank.vlm' in sys.modules, 'transformers' in sys.modules)")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr


def test_a_lora_adapter_is_merged_at_load(tiny_dir, reranker, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    lora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    adapted = VlmReranker(tiny_dir, first=None, device="cpu", adapter=str(tmp_path / "adapter"))
    assert adapted.config()["adapter"] == str(tmp_path / "adapter")
    query, cands = text_query(CAPTIONS[0], IMAGES[:3])
    assert not np.allclose(adapted.score(query, cands), reranker.score(query, cands), atol=1e-3)
    merged = lora.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    for f in tiny_dir.iterdir():
        if f.name not in ("config.json", "model.safetensors", "generation_config.json"):
            (tmp_path / "merged" / f.name).write_bytes(f.read_bytes())
    merged_scores = VlmReranker(tmp_path / "merged", first=None, device="cpu").score(query, cands)
    np.testing.assert_allclose(adapted.score(query, cands), merged_scores, atol=1e-4)


@pytest.mark.data
def test_the_cost_benchmark_times_single_queries_in_both_directions(tmp_path):
    from conftest import FLICKR8K
    from eval.vlm_cost import main

    directory = save_tiny_idefics3(tmp_path / "tiny", seed=2)
    result = main(["--model", str(directory), "--dataset", str(FLICKR8K / "dataset_flickr8k.json"),
                   "--images", str(FLICKR8K / "images"), "--queries", "2", "--candidates", "6", "--vlm-k", "2", "4",
                   "--output", str(tmp_path / "cost.json")])
    rows = {(r["direction"], r["vlm_k"]): r for r in result["rows"]}
    assert sorted(rows) == [("image->text", 2), ("image->text", 4), ("text->image", 2), ("text->image", 4)]
    assert all(r["queries"] == 2 and r["median_ms_per_query"] > 0 for r in rows.values())
    assert rows[("text->image", 4)]["pairs_per_query"] == 4
    assert json.loads((tmp_path / "cost.json").read_text())["model_type"] == "idefics3"
