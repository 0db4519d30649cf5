"""The embedded "base LLM": a ~0.5M-parameter Llama pretrained on synthetic arithmetic text.

It stands in for a pretrained base model on the `arith` task (`bridgerl.tasks.arith`), so the
whole product runs on a laptop CPU in minutes. The pretraining corpus is chosen so that the
model is a fair base model for the paper's story (docs/testbed-notes.md):

- it knows the *facts*: every single chain step "a+b=c" of every train/test/hard problem, in
  exactly the textual form of a chain step ("bare facts", several per document joined by ";");
- it answers short problems *directly* ("Q:3+4+5=\\nA:#12"), and a few problems of the training
  length, so on the `test` split it is right only sometimes (greedy pass@1 ~5-30%) and on
  `test_hard` (more operands) almost never;
- it has never seen a chain of thought after "A:", so it does not produce one: SFT on the
  expert chains must teach the format of chaining, not new arithmetic; RL can then sharpen it.

No question of the `test`, `test_hard` or `val` split appears in the corpus. The shipped model
(1,000 steps x 128 documents, ~3-5 min on a 2-core CPU) answers greedily 2 operands 100%,
3 operands 100%, 4 (test) 13%, 5 4%, 6 (test_hard) 0%, every chain step 100%, and never
writes a chain (assets/tiny-arith/pretrain_report.json).

Public names: EMBEDDED_DIR, VOCAB, build_tokenizer, build_model, corpus_document,
pack_documents, pretrain, generate_greedy, greedy_accuracy.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch

from bridgerl.config import ArithConfig
from bridgerl.tasks.arith import (
    ArithTask,
    evaluate,
    format_answer,
    format_fact,
    format_question,
    operand_bounds,
)
from bridgerl.tasks.base import TEST, TEST_HARD, VAL, Example, Task, render_prompt

# The model shipped inside the package (built by `pretrain(EMBEDDED_DIR)` with the defaults).
EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny-arith"

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
# One token per character; fixed for every ArithConfig so one tokenizer serves all of them.
CHARS = list("0123456789") + list("+-*=;#") + ["Q", "A", ":", "\n", " "]
VOCAB = [PAD, BOS, EOS, UNK] + CHARS

# Model shape: 2 x 128 keeps a GRPO step (16 prompts x 8 samples x ~40 tokens) near 0.3 s on CPU.
MODEL_SHAPE = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=4, max_position_embeddings=128)

# Corpus mix (shares of documents). Facts make every chain step a practised fact; short
# problems are answered directly; a small share of training-length problems gives the base
# model a low but non-zero direct accuracy on the test split (the "sometimes right" base).
FACT_SHARE = 0.40
LONG_SHARE = 0.01  # direct answers with train_operands operands: 6% gave 86% test accuracy, 1% ~13%
FACTS_PER_DOC = (1, 4)  # facts per fact document, drawn uniformly in this range
PACK_LEN = 64  # pretraining row length: whole documents packed together


# -- tokenizer and model ------------------------------------------------------------------------

def build_tokenizer() -> Any:
    """A character-level `PreTrainedTokenizerFast`: <s> prepended with add_special_tokens=True.

    Each character is one token, so tokenize(prompt) + tokenize(completion) ==
    tokenize(prompt + completion) (without special tokens); unknown characters map to <unk>.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ids = {tok: i for i, tok in enumerate(VOCAB)}
    core = Tokenizer(models.WordLevel(ids, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every char, "\n" too
    core.decoder = decoders.Fuse()  # join characters without spaces
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, ids[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        clean_up_tokenization_spaces=False, model_max_length=MODEL_SHAPE["max_position_embeddings"],
    )


def build_model(tokenizer: Any, seed: int = 0) -> Any:
    """A freshly initialised tiny `LlamaForCausalLM` (tied embeddings, ~0.53M parameters)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), tie_word_embeddings=True, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **MODEL_SHAPE,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


# -- the synthetic corpus -----------------------------------------------------------------------

def _fact_left_operand(rng: random.Random, config: ArithConfig, max_operands: int) -> int:
    """Half uniform over every reachable intermediate value, half as they occur in problems."""
    if rng.random() < 0.5:
        return rng.randint(*operand_bounds(config, max_operands - 1))
    n = rng.randint(2, max_operands)
    operands = [rng.randint(0, config.max_value) for _ in range(n)]
    ops = [rng.choice(config.ops) for _ in range(n - 1)]
    k = rng.randint(1, n - 1)
    return evaluate(operands[:k], ops[: k - 1])


def corpus_document(rng: random.Random, config: ArithConfig, held_out: set[str]) -> str:
    """One pretraining document (without <s> / </s>): bare facts or a directly answered problem."""
    counts = config.train_operands + config.hard_operands
    max_operands = max(counts)
    u = rng.random()
    if u < FACT_SHARE:
        facts = []
        for _ in range(rng.randint(*FACTS_PER_DOC)):
            a = _fact_left_operand(rng, config, max_operands)
            facts.append(format_fact(a, rng.choice(config.ops), rng.randint(0, config.max_value)))
        return ";".join(facts)
    short = list(range(2, min(config.train_operands)))
    if u < FACT_SHARE + LONG_SHARE or not short:
        n_choices = config.train_operands
    else:
        n_choices = short
    while True:
        n = rng.choice(n_choices)
        operands = [rng.randint(0, config.max_value) for _ in range(n)]
        ops = [rng.choice(config.ops) for _ in range(n - 1)]
        question = format_question(operands, ops)
        if question not in held_out:  # never pretrain on an evaluation question
            return f"Q:{question}=\nA:{format_answer(evaluate(operands, ops))}"


def pack_documents(tokenizer: Any, docs: list[str], row_len: int = PACK_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack whole "<s>doc</s>" sequences into rows of `row_len` tokens (first fit, right padding).

    Documents in one row attend to the earlier ones, as in ordinary LLM pretraining; packing
    halves the padding waste of one-document rows.
    """
    rows: list[list[int]] = []
    for ids in tokenizer(docs)["input_ids"]:
        ids = ids[:row_len]
        for row in rows:
            if len(row) + len(ids) <= row_len:
                row.extend(ids)
                break
        else:
            rows.append(list(ids))
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
    return input_ids, attention_mask


# -- generation and evaluation ------------------------------------------------------------------

@torch.no_grad()
def generate_greedy(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int = 48,
                    batch_size: int = 128) -> list[str]:
    """Greedy completions (left padding, KV cache), decoded without special tokens."""
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    out: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True)
            gen = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
            out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def greedy_accuracy(model: Any, tokenizer: Any, task: Task, examples: list[Example],
                    max_new_tokens: int = 48, batch_size: int = 128) -> float:
    """Greedy pass@1 of `model` on `examples`, graded by `task.grade` (0.0 for no examples)."""
    if not examples:
        return 0.0
    prompts = [render_prompt(task, e, tokenizer) for e in examples]
    completions = generate_greedy(model, tokenizer, prompts, max_new_tokens, batch_size)
    return sum(task.grade_batch(examples, completions)) / len(examples)


def _evaluate_base(model: Any, tokenizer: Any, task: ArithTask, n_per_count: int = 200) -> dict[str, Any]:
    """Per-operand greedy accuracy, chain-format rate and chain-step (fact) accuracy."""
    config = task.config
    rng = random.Random(config.seed + 1)
    by_count: dict[str, float] = {}
    for n in range(2, max(config.train_operands + config.hard_operands) + 1):
        if n in config.train_operands:
            examples = [e for e in task.split(TEST) if e.meta["operands"] == n]
        elif n in config.hard_operands:
            examples = [e for e in task.split(TEST_HARD) if e.meta["operands"] == n]
        else:
            examples = [task.make_example(f"probe{n}", i, *task.sample_problem(rng, n)) for i in range(n_per_count)]
        by_count[str(n)] = greedy_accuracy(model, tokenizer, task, examples)
    test = task.split(TEST)
    completions = generate_greedy(model, tokenizer, [task.prompt(e) for e in test])
    chain_rate = sum("=" in c for c in completions) / max(len(test), 1)
    # Every step of every test / test_hard chain, asked bare ("12+5=") as in pretraining.
    steps = sorted({s for e in test + task.split(TEST_HARD) for s in e.solution.split(";")[:-1]})
    fact_prompts = [s[: s.index("=", 1) + 1] for s in steps]
    fact_out = generate_greedy(model, tokenizer, fact_prompts, max_new_tokens=8, batch_size=256)
    fact_ok = sum(p + o.split(";")[0] == s for p, o, s in zip(fact_prompts, fact_out, steps))
    return {
        "accuracy_by_operands": by_count,
        "test_pass@1": greedy_accuracy(model, tokenizer, task, test),
        "test_hard_pass@1": greedy_accuracy(model, tokenizer, task, task.split(TEST_HARD)),
        "test_chain_format_rate": chain_rate,
        "chain_step_accuracy": fact_ok / max(len(steps), 1),
        "n_chain_steps": len(steps),
        "test_examples": [{"prompt": task.prompt(e), "completion": c} for e, c in zip(test[:5], completions)],
    }


# -- pretraining --------------------------------------------------------------------------------

def pretrain(out_dir: str | Path, *, steps: int = 1000, batch_size: int = 128, lr: float = 2e-3,
             seed: int = 0, progress: bool = True, config: ArithConfig | None = None,
             threads: int | None = 1) -> dict[str, Any]:
    """Build the tokenizer and model from scratch, pretrain, save to `out_dir`, return the report.

    steps, batch_size: optimizer steps and documents per step (the corpus is an endless seeded
        stream, so nothing is stored); lr: AdamW peak learning rate (50 warm-up steps, cosine to
        10%); seed: model init and corpus order (rebuilding with the same arguments reproduces
        the model on the same machine); progress: a rich progress bar; config: the task whose
        facts and problems make the corpus (default: the default ArithConfig, as shipped);
        threads: torch CPU threads while pretraining, restored afterwards (1 is the fastest for a
        model this small on a shared CPU, and keeps a rebuild bit-identical on one machine;
        None leaves torch's setting).
    Writes config.json, generation_config.json, model.safetensors, the tokenizer files and
    pretrain_report.json (greedy accuracy per operand count, test / test_hard pass@1, ...).
    """
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        report = _pretrain(Path(out_dir), steps, batch_size, lr, seed, progress,
                           config if config is not None else ArithConfig(), threads)
    finally:
        torch.set_num_threads(previous_threads)
    return report


def _pretrain(out_dir: Path, steps: int, batch_size: int, lr: float, seed: int, progress: bool,
              config: ArithConfig, threads: int | None) -> dict[str, Any]:
    task = ArithTask(config)
    held_out = {e.question for e in task.split(TEST) + task.split(TEST_HARD) + task.split(VAL)}
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed)
    model.train()
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = min(50, max(steps // 10, 1))

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        t = (step - warmup) / max(steps - warmup, 1)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    start, loss_ema = time.perf_counter(), None
    bar = _progress(progress)
    with bar:
        job = bar.add_task("pretraining tiny-arith", total=steps, loss=float("nan"))
        for step in range(steps):
            docs = [corpus_document(rng, config, held_out) + EOS for _ in range(batch_size)]
            input_ids, attention_mask = pack_documents(tokenizer, docs)
            labels = input_ids.masked_fill(attention_mask == 0, -100)
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            opt.step()
            loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
            bar.update(job, advance=1, loss=loss_ema)
    train_seconds = time.perf_counter() - start

    report = {
        "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "threads": threads,
        "train_seconds": round(train_seconds, 1), "final_loss_ema": round(loss_ema or float("nan"), 4),
        "n_params": sum(p.numel() for p in model.parameters()),
        "arith_config": dataclasses.asdict(config),
        "corpus": {"fact_share": FACT_SHARE, "long_share": LONG_SHARE, "facts_per_doc": list(FACTS_PER_DOC)},
        **_evaluate_base(model, tokenizer, task),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    _portable_tokenizer_class(out_dir)
    (out_dir / "pretrain_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _portable_tokenizer_class(out_dir: Path) -> None:
    """Name the class every transformers version knows (v5 writes "TokenizersBackend", which v4 lacks)."""
    path = out_dir / "tokenizer_config.json"
    data = json.loads(path.read_text())
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None


def _progress(enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TimeRemainingColumn())
