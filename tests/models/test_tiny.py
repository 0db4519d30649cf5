"""The embedded base model: it loads with plain transformers and has the intended "base LLM" profile."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch

from bridgerl.config import ArithConfig
from bridgerl.models.tiny import (
    EMBEDDED_DIR,
    build_tokenizer,
    corpus_document,
    generate_greedy,
    greedy_accuracy,
    pack_documents,
    pretrain,
)
from bridgerl.tasks.arith import ArithTask, format_fact
from bridgerl.tasks.base import SFT_TRAIN, TEST, TEST_HARD, VAL

BAND = (0.05, 0.30)  # intended greedy pass@1 of the base model on the test split
TOL = 0.02  # slack for another CPU's float rounding
REBUILD_TOL = 0.07  # per-operand accuracy of a rebuilt model vs the shipped report (200 problems each)
CHAIN_STEP = re.compile(r"^-?\d+[+\-*]\d+=")


@pytest.fixture(scope="module")
def shipped():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(EMBEDDED_DIR)
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_DIR)
    return model, tokenizer


@pytest.fixture(scope="module")
def task():
    return ArithTask(ArithConfig())


@pytest.fixture(scope="module")
def report():
    return json.loads((EMBEDDED_DIR / "pretrain_report.json").read_text())


@pytest.fixture(scope="module")
def test_completions(shipped, task):
    model, tokenizer = shipped
    return generate_greedy(model, tokenizer, [task.prompt(e) for e in task.split(TEST)])


def test_shipped_files_are_present_and_small():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "pretrain_report.json"):
        assert (EMBEDDED_DIR / name).is_file(), name
    assert sum(p.stat().st_size for p in EMBEDDED_DIR.iterdir()) < 5_000_000


def test_shipped_model_and_tokenizer_load_with_plain_transformers(shipped):
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    model, tokenizer = shipped
    assert isinstance(model, LlamaForCausalLM)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    n_params = sum(p.numel() for p in model.parameters())
    assert 300_000 <= n_params <= 1_000_000
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.max_position_embeddings >= 96
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id


def test_tokenizer_round_trips_task_text(shipped, task):
    _, tokenizer = shipped
    texts = [task.prompt(e) + e.solution for e in task.split(SFT_TRAIN)[:50]] + ["Q:3-5*2=\nA:3-5=-2;-2*2=-4;#-4", " \n "]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text)  # one token per character
        assert tokenizer.decode(ids) == text


def test_tokenizer_is_concatenation_consistent(shipped, task):
    _, tokenizer = shipped
    for e in task.split(SFT_TRAIN)[:50]:
        prompt, completion = task.prompt(e), e.solution
        ids = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        assert ids(prompt) + ids(completion) == ids(prompt + completion)


def test_tokenizer_prepends_bos_only_with_special_tokens(shipped):
    _, tokenizer = shipped
    plain = tokenizer("Q:1+2=\nA:", add_special_tokens=False)["input_ids"]
    assert tokenizer("Q:1+2=\nA:")["input_ids"] == [tokenizer.bos_token_id] + plain
    assert tokenizer.decode(tokenizer("#3</s>")["input_ids"], skip_special_tokens=True) == "#3"


def test_fresh_tokenizer_equals_shipped_vocabulary(shipped):
    _, tokenizer = shipped
    assert build_tokenizer().get_vocab() == tokenizer.get_vocab()


def test_shipped_greedy_pass_at_1_on_test_is_in_intended_band(shipped, task, report):
    model, tokenizer = shipped
    acc = greedy_accuracy(model, tokenizer, task, task.split(TEST), max_new_tokens=48, batch_size=128)
    assert BAND[0] - TOL <= acc <= BAND[1] + TOL
    assert abs(acc - report["test_pass@1"]) <= TOL


def test_shipped_model_rarely_answers_the_hard_split(shipped, task):
    model, tokenizer = shipped
    assert greedy_accuracy(model, tokenizer, task, task.split(TEST_HARD)) <= 0.05


def test_shipped_base_model_does_not_produce_the_chain_format(test_completions):
    chained = [c for c in test_completions if CHAIN_STEP.match(c) or ";" in c or "=" in c]
    assert len(chained) <= 0.02 * len(test_completions)
    assert sum(c.startswith("#") for c in test_completions) >= 0.95 * len(test_completions)


def test_shipped_model_knows_every_chain_step_as_a_bare_fact(shipped, task):
    model, tokenizer = shipped
    steps = sorted({s for e in task.split(TEST) + task.split(TEST_HARD) for s in e.solution.split(";")[:-1]})
    prompts = [s[: s.index("=", 1) + 1] for s in steps]
    outs = generate_greedy(model, tokenizer, prompts, max_new_tokens=8, batch_size=256)
    correct = sum(p + o.split(";")[0] == s for p, o, s in zip(prompts, outs, steps))
    assert correct >= 0.98 * len(steps)


def test_shipped_report_has_per_operand_accuracy(report, task):
    by = report["accuracy_by_operands"]
    cfg = task.config
    assert set(by) == {str(n) for n in range(2, max(cfg.hard_operands) + 1)}
    assert by["2"] >= 0.95 and by["3"] >= 0.9  # short problems are answered directly
    assert by[str(max(cfg.hard_operands))] <= 0.05


def test_greedy_helpers_restore_padding_side_and_training_mode(shipped, task):
    model, tokenizer = shipped
    tokenizer.padding_side = "right"
    model.train()
    greedy_accuracy(model, tokenizer, task, task.split(TEST)[:4])
    assert tokenizer.padding_side == "right" and model.training
    model.eval()
    assert greedy_accuracy(model, tokenizer, task, []) == 0.0


def test_corpus_never_contains_an_evaluation_question(task):
    held = {e.question for e in task.split(TEST) + task.split(TEST_HARD) + task.split(VAL)}
    rng = random.Random(0)
    docs = [corpus_document(rng, task.config, held) for _ in range(20_000)]
    asked = {d[2 : d.index("=")] for d in docs if d.startswith("Q:")}
    assert asked and not asked & held


def test_corpus_facts_are_written_exactly_like_chain_steps(task):
    rng = random.Random(1)
    docs = [corpus_document(rng, task.config, set()) for _ in range(2_000)]
    facts = [f for d in docs if not d.startswith("Q:") for f in d.split(";")]
    assert facts
    for fact in facts:
        m = re.fullmatch(r"(-?\d+)([+\-*])(\d+)=(-?\d+)", fact)
        assert m and format_fact(int(m[1]), m[2], int(m[3])) == fact
    assert not any("Q:" in d and ";" in d for d in docs)  # no chain of thought after "A:"


def test_pack_documents_keeps_whole_documents_and_masks_padding():
    tokenizer = build_tokenizer()
    docs = ["Q:1+2=\nA:#3</s>", "4+5=9</s>", "Q:9+9+9=\nA:#27</s>"] * 5
    ids, mask = pack_documents(tokenizer, docs, row_len=40)
    assert ids.shape[1] <= 40 and mask.dtype == torch.long
    text = "".join(tokenizer.decode(row[m.bool()]) for row, m in zip(ids, mask))
    assert text == "".join("<s>" + d for d in docs)
    assert (ids[mask == 0] == tokenizer.pad_token_id).all()


@pytest.mark.slow
def test_pretrain_from_scratch_reproduces_the_shipped_model(tmp_path, report):
    from transformers import AutoConfig, AutoTokenizer

    rebuilt = pretrain(tmp_path, seed=report["seed"], progress=False)
    shipped_cfg, new_cfg = AutoConfig.from_pretrained(EMBEDDED_DIR), AutoConfig.from_pretrained(tmp_path)
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                "max_position_embeddings", "tie_word_embeddings"):
        assert getattr(new_cfg, key) == getattr(shipped_cfg, key), key
    assert AutoTokenizer.from_pretrained(tmp_path).get_vocab() == AutoTokenizer.from_pretrained(EMBEDDED_DIR).get_vocab()
    assert rebuilt["n_params"] == report["n_params"]
    for n, acc in report["accuracy_by_operands"].items():
        assert abs(rebuilt["accuracy_by_operands"][n] - acc) <= REBUILD_TOL, n
    assert rebuilt["chain_step_accuracy"] >= 0.98
    assert json.loads((tmp_path / "pretrain_report.json").read_text())["accuracy_by_operands"] == rebuilt["accuracy_by_operands"]
