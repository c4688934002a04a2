"""Train the embedded ``tiny-llava`` from scratch on easy-VQA + the fine-grained training split.

    python -m analyses.train_tiny --out stage1 --steps 5000 --threads 2
    python -m analyses.train_tiny --out stage2 --init-from stage1 --steps 1500 --threads 2 \
        --shape-only-fraction 0 --shape-oversample 1.0 --lr 3e-4 --warmup 100
    python -m analyses.train_tiny --out probes/models/zoo/checkpoints/tiny-llava \
        --init-from stage2 --steps 1000 --threads 2 --shape-only-fraction 0 \
        --shape-oversample 1.0 --lr 1.5e-4 --warmup 50 --save-dtype float16

A build step, not part of CI: about 80 minutes of 2 CPU threads for the three stages on an
otherwise idle CPU (the committed checkpoint's wall times, on a shared CPU, are in its
``training.json``). Deterministic given ``--seed`` and the thread count (seeded sampling);
``--resume`` continues from the last periodic state after an interruption.

Recipe (see shared/NOTES-tiny-models.md): AdamW, warmup + cosine decay, batch 64; the first
15% of steps see only shape questions, after which shape questions are drawn twice as often:
with uniform sampling the tower learns colour fast and shape stalls near chance. Two shorter
stages from the natural mix at lower learning rates then bring colour back (it fades while
shape is oversampled) and lift yes/no. A 6 x 64 language model learns colour and shape but
answers yes/no by a text-only prior (82.5%); 6 x 128 (the default) learns the comparison.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from analyses.data import load_dataset, vocabulary
from probes.arguments import (
    NONNEGATIVE,
    POSITIVE,
    POSITIVE_NUMBER,
    PROBABILITY,
    SEED,
    THREADS,
    ArgumentParser,
)
from probes.cli import run_cli
from probes.errors import UserError
from probes.models.adapters import LlavaAdapter
from probes.models.zoo import tiny_llava
from probes.models.zoo.checkpoint import save

SHAPE_KINDS = ("shape",)
STATE_FILE = ".train-state.pt"  # periodic resume state, removed when training completes


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 5000
    batch_size: int = 64
    lr: float = 5e-4
    warmup: int = 150
    weight_decay: float = 0.01
    shape_only_fraction: float = 0.15
    shape_oversample: float = 2.0
    fine_grained_train: int = 20_000
    fine_grained_share: float = 0.3  # share of each batch drawn from the fine-grained set
    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 64
    vision_layers: int = 2
    text_width: int = 128
    text_layers: int = 6
    heads: int = 4
    kv_heads: int = 2
    eval_every: int = 500
    checkpoint_every: int = 250
    threads: int = 1
    init_from: str | None = None  # stage 2: start from a saved checkpoint's weights
    balance_yes_no: bool = False  # draw yes/no questions about present and absent attributes alike
    save_dtype: str = "float32"  # the saved weights' dtype (training is always float32)


@dataclass
class Encoded:
    """Every training question as token ids, plus the index of its preprocessed image."""

    prompts: list[list[int]]
    answers: list[list[int]]  # answer tokens + </s>
    image_index: torch.Tensor  # [n] into the pixel tensor
    pixels: torch.Tensor  # [n_images, 3, H, W], the processor's own output
    kinds: list[str]
    source: torch.Tensor  # [n] 0 = easy-VQA, 1 = fine-grained
    asks_present: torch.Tensor  # [n] bool: a yes/no question whose attribute is in the image
    yes_no_group: torch.Tensor  # [n] (asks about shape or colour) x (negated): 0..3; -1 otherwise


def encode(datasets: Sequence, processor, model_config) -> Encoded:
    """Tokenise and preprocess once. Prompts are built with the processor's chat template and
    the image token expanded exactly as the processor does at inference (checked below)."""
    adapter = LlavaAdapter(model_config, processor)
    tokenizer = processor.tokenizer
    n_image_tokens = (processor.image_processor.crop_size.height // processor.patch_size) ** 2
    prompts, answers, image_index, kinds, source, images, present, groups = ([] for _ in range(8))
    seen: dict[int, int] = {}
    for source_id, dataset in enumerate(datasets):
        for sample in dataset:
            key = id(sample.image)  # easy-VQA questions share cached image objects
            if key not in seen:
                seen[key] = len(images)
                images.append(sample.image)
            prompt = adapter.prompt(sample.question)
            expanded = prompt.replace("<image>", "<image>" * n_image_tokens)
            prompts.append(tokenizer(expanded)["input_ids"])
            answer_ids = tokenizer(sample.answer, add_special_tokens=False)["input_ids"]
            answers.append([*answer_ids, tokenizer.eos_token_id])
            image_index.append(seen[key])
            kinds.append(sample.kind)
            source.append(source_id)
            present.append(sample.kind == "yes/no" and asks_about_present(sample))
            groups.append(yes_no_group(sample) if sample.kind == "yes/no" else -1)
    first = datasets[0][0]
    reference = processor(images=first.image, text=adapter.prompt(first.question))
    if reference["input_ids"][0] != prompts[0]:
        raise RuntimeError("training prompts differ from the processor's inference prompts")
    pixels = torch.cat([
        processor.image_processor(images[i : i + 512], return_tensors="pt")["pixel_values"]
        for i in range(0, len(images), 512)
    ])
    return Encoded(prompts, answers, torch.tensor(image_index), pixels, kinds, torch.tensor(source),
                   torch.tensor(present), torch.tensor(groups))


def yes_no_group(sample) -> int:
    """0..3: whether a yes/no question asks about a shape (else a colour), and is negated."""
    words = set(sample.question.split())
    about_shape = bool(words & {"circle", "rectangle", "triangle"})
    return 2 * about_shape + bool(words & {"not", "no"})


def asks_about_present(sample) -> bool:
    """For an easy-VQA yes/no question: is the attribute it asks about in the image? ("is there
    not a red shape ?" answered "no" asks about a red shape that is there.)"""
    negated = bool({"not", "no"} & set(sample.question.split()))
    return (sample.answer == "yes") != negated


def sampling_weights(data: Encoded, config: TrainConfig, shape_only: bool) -> torch.Tensor:
    """Per-question sampling weights: sources mixed by ``fine_grained_share``; shape questions
    only (warm-up phase) or oversampled (afterwards)."""
    is_shape = torch.tensor([kind in SHAPE_KINDS for kind in data.kinds])
    weights = torch.where(is_shape, config.shape_oversample, 1.0)
    if shape_only:
        weights = is_shape.double()
    if config.balance_yes_no:
        # easy-VQA asks mostly about absent attributes (about 83%): left alone, a model learns
        # to answer as if the attribute were absent; balancing only present/absent, it learns
        # per-template priors instead. Every (template group, present) cell gets equal weight,
        # so no text-only rule beats chance and the image must be read
        is_yes_no = data.yes_no_group >= 0
        cells = [
            is_yes_no & (data.yes_no_group == group) & (data.asks_present == present)
            for group in data.yes_no_group[is_yes_no].unique().tolist() for present in (True, False)
        ]
        cells = [cell for cell in cells if cell.any()]
        share = weights[is_yes_no].sum() / len(cells)
        for cell in cells:
            weights[cell] *= share / weights[cell].sum()
    shares = torch.tensor([1 - config.fine_grained_share, config.fine_grained_share])
    for source_id in (0, 1):
        in_source = data.source == source_id
        total = weights[in_source].sum()
        if total > 0:
            weights[in_source] *= shares[source_id] / total
    return weights


def make_batch(data: Encoded, rows: torch.Tensor, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch (so real tokens keep positions 0..n-1); loss on answer + </s> only."""
    sequences = [data.prompts[i] + data.answers[i] for i in rows.tolist()]
    length = max(map(len, sequences))
    input_ids = torch.full((len(rows), length), pad_id)
    labels = torch.full((len(rows), length), -100)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for b, (i, sequence) in enumerate(zip(rows.tolist(), sequences)):
        input_ids[b, : len(sequence)] = torch.tensor(sequence)
        attention_mask[b, : len(sequence)] = 1
        start = len(data.prompts[i])
        labels[b, start : len(sequence)] = torch.tensor(data.answers[i])
    pixel_values = data.pixels[data.image_index[rows]]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "pixel_values": pixel_values}


def first_token_accuracy(model, data: Encoded, rows: torch.Tensor, pad_id: int) -> float:
    """Share of questions whose greedy first answer token is right (answers are one word)."""
    return first_token_correct(model, data, rows, pad_id).double().mean().item()


@torch.inference_mode()
def first_token_correct(model, data: Encoded, rows: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Per question of ``rows``: is the greedy first answer token right?"""
    model.eval()
    correct = []
    for chunk in rows.split(256):
        prompts = [data.prompts[i] for i in chunk.tolist()]
        length = max(map(len, prompts))
        input_ids = torch.full((len(chunk), length), pad_id)
        mask = torch.zeros_like(input_ids)
        for b, prompt in enumerate(prompts):  # left padding: the answer position is -1
            input_ids[b, length - len(prompt) :] = torch.tensor(prompt)
            mask[b, length - len(prompt) :] = 1
        logits = model(
            input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            pixel_values=data.pixels[data.image_index[chunk]], logits_to_keep=1,
        ).logits[:, -1]
        expected = torch.tensor([data.answers[i][0] for i in chunk.tolist()])
        correct.append(logits.argmax(-1) == expected)
    model.train()
    return torch.cat(correct)


def learning_rate(step: int, config: TrainConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def save_weights(model, processor, out: Path, dtype: str = "float32") -> None:
    """Save the trained model in ``dtype`` (float16 halves the committed file; loading
    upcasts it to float32 on CPU exactly) with its processor, as a hub checkpoint."""
    if dtype not in ("float32", "float16"):
        raise ValueError(f"save dtype must be float32 or float16, not {dtype!r}")
    save(model.to(getattr(torch, dtype)), processor, out)


def train(config: TrainConfig, out: Path, resume: bool, log=sys.stderr.write) -> dict:
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    started = time.time()
    easy = load_dataset("easy-vqa", "train")
    fine = load_dataset("fine-grained", "train", limit=config.fine_grained_train)
    easy_test = load_dataset("easy-vqa", "test", limit=500)
    fine_test = load_dataset("fine-grained", "test", limit=300)
    words = vocabulary([easy, fine, load_dataset("easy-vqa", "test"),
                        load_dataset("fine-grained", "test")])
    processor = tiny_llava.build_processor(words, config.image_size, config.patch_size)
    model_config = tiny_llava.build_config(
        processor, config.image_size, config.patch_size, config.vision_width,
        config.vision_layers, config.text_width, config.text_layers, config.heads, config.kv_heads,
    )
    model = tiny_llava.build_model(model_config, config.seed)
    if config.init_from:  # saved checkpoints use the hub's key names: load them the hub's way
        model = type(model).from_pretrained(config.init_from, config=model_config)
    model.train().requires_grad_(True)
    data = encode([easy, fine], processor, model_config)
    evals = encode([easy_test, fine_test], processor, model_config)
    log(f"encoded {len(data.prompts)} questions, {len(data.pixels)} images, "
        f"vocabulary {len(processor.tokenizer)} in {time.time() - started:.0f}s\n")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    step, history, elapsed_before = 0, [], 0.0
    state_path = out / STATE_FILE
    if resume and state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, history, elapsed_before = state["step"], state["history"], state["elapsed"]
        log(f"resumed at step {step}\n")
    pad_id = processor.tokenizer.pad_token_id
    shape_only_steps = int(config.shape_only_fraction * config.steps)
    phases = {True: sampling_weights(data, config, True), False: sampling_weights(data, config, False)}
    easy_rows = torch.arange(len(easy_test))
    fine_rows = torch.arange(len(easy_test), len(evals.prompts))
    loop_start = time.time()
    while step < config.steps:
        weights = phases[step < shape_only_steps]
        rows = torch.multinomial(weights, config.batch_size, replacement=True, generator=generator)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        loss = model(**make_batch(data, rows, pad_id)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % config.eval_every == 0 or step == config.steps:
            record = {
                "step": step, "loss": round(loss.item(), 4),
                "easy_vqa_500": first_token_accuracy(model, evals, easy_rows, pad_id),
                "fine_grained_300": first_token_accuracy(model, evals, fine_rows, pad_id),
                "minutes": round((elapsed_before + time.time() - loop_start) / 60, 1),
            }
            history.append(record)
            log(json.dumps(record) + "\n")
        if step % config.checkpoint_every == 0 and step < config.steps:
            out.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "generator": generator.get_state(), "step": step, "history": history,
                        "elapsed": elapsed_before + time.time() - loop_start},
                       state_path.with_suffix(".tmp"))
            state_path.with_suffix(".tmp").replace(state_path)
    model.eval().requires_grad_(False)
    save_weights(model, processor, out, config.save_dtype)
    report = {
        "config": asdict(config),
        "train_minutes": round((elapsed_before + time.time() - loop_start) / 60, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_questions": len(data.prompts),
        "history": history,
        "torch": torch.__version__,
    }
    (out / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    state_path.unlink(missing_ok=True)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    substrate = ArgumentParser(prog="python -m analyses.train_tiny", add_help=False)
    substrate.add_argument("--substrate", choices=("tiny-llava", "smollm2"), default="tiny-llava")
    chosen, rest = substrate.parse_known_args(argv)
    if chosen.substrate == "smollm2":  # tiny-llava's vision tower on pretrained SmolLM2-135M
        from analyses import train_smollm2

        return train_smollm2.main(rest)
    parser = ArgumentParser(prog="python -m analyses.train_tiny", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("probes/models/zoo/checkpoints/tiny-llava"))
    parser.add_argument("--seed", type=SEED, default=0)
    parser.add_argument("--steps", type=POSITIVE, default=TrainConfig.steps)
    parser.add_argument("--threads", type=THREADS, default=1, metavar="N",
                        help="CPU threads torch trains with (default 1)")
    parser.add_argument("--shape-only-fraction", type=PROBABILITY, default=TrainConfig.shape_only_fraction)
    parser.add_argument("--fine-grained-share", type=PROBABILITY, default=TrainConfig.fine_grained_share)
    parser.add_argument("--shape-oversample", type=POSITIVE_NUMBER, default=TrainConfig.shape_oversample)
    parser.add_argument("--lr", type=POSITIVE_NUMBER, default=TrainConfig.lr)
    parser.add_argument("--warmup", type=NONNEGATIVE, default=TrainConfig.warmup)
    parser.add_argument("--balance-yes-no", action="store_true",
                        help="draw yes/no questions about present and absent attributes equally")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="stage 2: start from this checkpoint's weights (same vocabulary)")
    parser.add_argument("--text-width", type=POSITIVE, default=TrainConfig.text_width)
    parser.add_argument("--text-layers", type=POSITIVE, default=TrainConfig.text_layers)
    parser.add_argument("--save-dtype", choices=("float32", "float16"), default="float32",
                        help="dtype of the saved weights (training runs in float32)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--substrate", choices=("tiny-llava",), default="tiny-llava",
                        help="smollm2: train tiny-llava-smollm2 instead (see analyses.train_smollm2)")
    args = parser.parse_args(rest)
    if args.text_width % (2 * TrainConfig.heads):  # an even width per head, for the rotation
        raise UserError(f"--text-width must be a multiple of {2 * TrainConfig.heads}, not "
                        f"{args.text_width}.")
    config = TrainConfig(
        seed=args.seed, steps=args.steps, threads=args.threads,
        shape_only_fraction=args.shape_only_fraction, fine_grained_share=args.fine_grained_share,
        shape_oversample=args.shape_oversample, lr=args.lr, warmup=args.warmup,
        init_from=None if args.init_from is None else str(args.init_from),
        balance_yes_no=args.balance_yes_no,
        text_width=args.text_width, text_layers=args.text_layers, save_dtype=args.save_dtype,
    )
    report = train(config, args.out, args.resume)
    sys.stdout.write(json.dumps(report["history"][-1]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
