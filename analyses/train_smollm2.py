"""Train ``tiny-llava-smollm2``'s vision tower and projector on easy-VQA, SmolLM2 frozen (or LoRA).

    python -m analyses.train_tiny --substrate smollm2 --out /work/smollm2-train \\
        --steps 1500 --threads 2 --seed 0

LLaVA's first stage: the language model (SmolLM2-135M-Instruct, from the cache
:mod:`probes.models.zoo.smollm2` builds) stays frozen; the CLIP tower (starting from
tiny-llava's, its position grid pooled to 4 x 4) and the two-layer projector learn. The loss
covers the answer tokens and ``<|im_end|>`` only, and logits are computed only at the positions
that predict them (the 49k-way head over every position would double a step's cost). AdamW,
warmup + cosine decay, batch 16; shape questions only for the first 15% of steps, then drawn
twice as often (tiny-llava's recipe). Deterministic given ``--seed`` and the thread count;
the trainable weights, optimizer and sampler are saved every ``--checkpoint-every`` steps, and
``--resume`` continues from there. At the end: ``vision_projector.safetensors`` (what the
repository ships) and ``training.json`` (config, loss curve, evaluations) in ``--out``.

Stage 2 (``--init-from`` the stage-1 file, ``--lora-rank R``): low-rank adapters on every
layer's attention projections (``--lora-targets``) train with the tower and projector, SmolLM2's
own weights still frozen (:mod:`probes.models.lora`; B starts at zero, so step 0 is the stage-1
model exactly). The shared prefix is then recomputed every step, once per batch. The shipped
file adds the adapters (``...q_proj.lora_A`` / ``lora_B``, scale in its metadata); assembly
merges them into the language model (:mod:`probes.models.zoo.smollm2`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from analyses.data import load_dataset
from analyses.train_tiny import (
    STATE_FILE,
    encode,
    first_token_correct,
    learning_rate,
    make_batch,
    sampling_weights,
)
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
from probes.compat import output_cache, with_cache
from probes.errors import UserError
from probes.models import lora


@dataclass(frozen=True)
class SmolTrainConfig:
    seed: int = 0
    steps: int = 1500
    batch_size: int = 16
    lr: float = 5e-4
    warmup: int = 50
    weight_decay: float = 0.0
    shape_only_fraction: float = 0.15
    shape_oversample: float = 2.0
    fine_grained_share: float = 0.0  # easy-VQA only (sampling_weights reads these two)
    balance_yes_no: bool = False
    train_tower: bool = True  # False: the projector alone
    eval_every: int = 100
    eval_questions: int = 200  # a seeded random slice of the easy-VQA test split
    log_every: int = 10
    checkpoint_every: int = 25
    threads: int = 2
    final_eval: bool = True  # the whole test split, per kind, at the end
    init_from: str | None = None  # a trained tower + projector file to start from (stage 2)
    lora_rank: int = 0  # low-rank adapters on the language model (0: none, SmolLM2 frozen)
    lora_alpha: float | None = None  # their scale is alpha / rank; None: 2 x rank (scale 2)
    lora_targets: tuple[str, ...] = lora.ATTENTION  # which linear layers of every block

    def __post_init__(self) -> None:
        if self.lora_alpha is None and self.lora_rank:
            object.__setattr__(self, "lora_alpha", float(2 * self.lora_rank))


class SharedPrefix:
    """The keys and values of the tokens every prompt starts with (SmolLM2's system line and
    ``<|im_start|>user``, before the image), computed for one row and shared by the batch.

    ``frozen``: computed once, as the language model is frozen and attention is causal, so they
    never change (a third of each prompt's cost, saved). Not frozen (LoRA adapters train the
    language model): recomputed at every :meth:`cache`, with gradients, still once per batch."""

    def __init__(self, model, prompts: list[list[int]], image_token_id: int,
                 frozen: bool = True) -> None:
        first = prompts[0]
        length = first.index(image_token_id)
        for prompt in prompts:
            length = next((i for i in range(length) if prompt[i] != first[i]), length)
        self.length = length
        self.model = model
        self.input_ids = torch.tensor([first[:length]])
        self.layers = None
        if frozen:
            with torch.no_grad():
                self.layers = self.compute()

    def compute(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        output = self.model.model.language_model(input_ids=self.input_ids, use_cache=True)
        return [(layer.keys, layer.values) for layer in output_cache(output).layers]

    def cache(self, batch_size: int):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config.text_config)
        for index, (keys, values) in enumerate(self.layers or self.compute()):
            cache.update(keys.expand(batch_size, -1, -1, -1), values.expand(batch_size, -1, -1, -1),
                         index)
        return cache


def answer_loss(model, batch: dict[str, torch.Tensor], prefix: SharedPrefix | None = None
                ) -> torch.Tensor:
    """Cross-entropy on the labelled tokens, with the LM head applied only at the positions
    that predict them (equal to ``model(**batch).loss``, at a fraction of the head's cost);
    with ``prefix``, the shared first tokens come from its cache instead of being recomputed."""
    input_ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    extra = {}
    if prefix is not None:
        start = prefix.length
        extra = with_cache(model.model, prefix.cache(len(input_ids)))
        extra["position_ids"] = torch.arange(start, input_ids.shape[1])[None].expand(len(input_ids), -1)
        input_ids, labels = input_ids[:, start:], labels[:, start:]
    hidden = model.model(input_ids=input_ids, attention_mask=mask,
                         pixel_values=batch["pixel_values"], **extra).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    logits = model.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits, targets[keep])


def freeze_language_model(model, train_tower: bool,
                          adapters: Sequence[torch.nn.Parameter] = ()) -> list[torch.nn.Parameter]:
    """Freeze everything but the projector (and the vision tower, and ``adapters``); return
    what trains."""
    model.requires_grad_(False)
    trained = [model.model.multi_modal_projector]
    if train_tower:
        trained.append(model.model.vision_tower)
    for module in trained:
        module.requires_grad_(True)
    for parameter in adapters:
        parameter.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def load_start(config: SmolTrainConfig):
    """SmolLM2 as converted (no adapters merged) with the initial tower and projector
    (tiny-llava's tower, pooled; a projector seeded by ``config.seed``) or those of
    ``config.init_from``, in place of whatever the repository ships."""
    from probes.models.loading import load_model
    from probes.models.zoo import smollm2

    loaded = load_model(str(smollm2.base_checkpoint_directory()), device="cpu", dtype="float32")
    start_from(loaded.model, config)
    return loaded.model, loaded.processor


def start_from(model, config: SmolTrainConfig) -> None:
    """Set the tower and projector to the initial ones, or to ``config.init_from``'s."""
    from probes.models.zoo import smollm2

    state = smollm2.initial_vision_state(model.config, config.seed)
    if config.init_from is not None:
        given, adapters, _ = smollm2.load_trained_state(Path(config.init_from))
        problems = [f"lacks {name}" if name not in given else
                    f"has {name} of shape {tuple(given[name].shape)}, not {tuple(tensor.shape)}"
                    for name, tensor in state.items()
                    if name not in given or given[name].shape != tensor.shape]
        if adapters:
            problems.insert(0, "also holds LoRA adapters (continue a LoRA run with --resume)")
        if problems:
            raise UserError(f"--init-from {config.init_from} {problems[0]}.")
        state = given
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(name.startswith(smollm2.VISION_PREFIXES) for name in missing):
        raise RuntimeError(f"initial state does not fit: {unexpected or missing}")


def lora_record(config: SmolTrainConfig) -> dict:
    return {"rank": config.lora_rank, "alpha": config.lora_alpha,
            "targets": list(config.lora_targets)}


def per_kind(correct: torch.Tensor, kinds: list[str],
             asks_present: torch.Tensor | None = None) -> dict[str, float]:
    """Accuracy overall and per kind; with ``asks_present`` ([n] bool), yes/no split too:
    questions about an attribute the image has, and about one it lacks (easy-VQA asks 83% of
    its yes/no questions about absent ones, so a model answering from the question alone
    scores near 100% on those and near 0% on the others)."""
    def share(mask: torch.Tensor) -> float:
        return round(correct[mask].double().mean().item(), 4) if mask.any() else float("nan")

    table = {"all": round(correct.double().mean().item(), 4)}
    for kind in sorted(set(kinds)):
        table[kind] = share(torch.tensor([k == kind for k in kinds]))
    if asks_present is not None:
        yes_no = torch.tensor([k == "yes/no" for k in kinds])
        table["yes/no, attribute present"] = share(yes_no & asks_present)
        table["yes/no, attribute absent"] = share(yes_no & ~asks_present)
    return table


def load_trained(path: Path):
    """SmolLM2 as converted with a trained file's tower and projector, its LoRA adapters (if
    any) merged into the language model, as assembly does: the model that file ships."""
    from probes.models.zoo import smollm2

    model, processor = load_start(SmolTrainConfig())
    state = model.state_dict()
    smollm2.fold_trained(state, path)
    model.load_state_dict(state)
    return model.eval(), processor


def evaluate(path: Path, limit: int | None = None, threads: int = 2) -> dict[str, float]:
    """The first-token accuracy of the model a trained file makes on the easy-VQA test split
    (its first ``limit`` questions), per kind and yes/no present/absent."""
    torch.set_num_threads(threads)
    model, processor = load_trained(path)
    test = load_dataset("easy-vqa", "test", limit=limit)
    data = encode([test], processor, model.config)
    correct = first_token_correct(model, data, torch.arange(len(test)),
                                  processor.tokenizer.pad_token_id)
    return {"questions": len(test), **per_kind(correct, data.kinds, data.asks_present)}


def train(config: SmolTrainConfig, out: Path, resume: bool,
          log: Callable[[str], object] = sys.stderr.write) -> dict:
    from safetensors.torch import save_file

    from probes.models.zoo import smollm2

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    started = time.time()
    model, processor = load_start(config)
    adapters = []
    if config.lora_rank:
        adapters = lora.add_adapters(model.model.language_model, config.lora_targets,
                                     config.lora_rank, config.lora_alpha,
                                     torch.Generator().manual_seed(config.seed))
    parameters = freeze_language_model(model, config.train_tower, adapters)
    model.train()
    easy, test = load_dataset("easy-vqa", "train"), load_dataset("easy-vqa", "test")
    data = encode([easy], processor, model.config)
    evals = encode([test], processor, model.config)
    eval_rows = torch.randperm(len(test), generator=torch.Generator().manual_seed(config.seed))
    eval_rows = eval_rows[: config.eval_questions]
    log(f"encoded {len(data.prompts)} questions, {len(data.pixels)} images; "
        f"{sum(p.numel() for p in parameters)} trainable parameters; {time.time() - started:.0f}s\n")
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    step, history, curve, elapsed_before = 0, [], [], 0.0
    state_path = out / STATE_FILE
    if resume and state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        if state.get("lora", lora_record(SmolTrainConfig())) != lora_record(config):
            raise UserError(f"{state_path} was saved by a run with other LoRA options "
                            f"({state.get('lora')}); resume with those, or use another --out.")
        model.load_state_dict(state["trained"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, history, curve = state["step"], state["history"], state["curve"]
        elapsed_before = state["elapsed"]
        log(f"resumed at step {step}\n")
    pad_id = processor.tokenizer.pad_token_id
    prefix = SharedPrefix(model, data.prompts + evals.prompts, model.config.image_token_id,
                          frozen=not adapters)
    shape_only_steps = int(config.shape_only_fraction * config.steps)
    phases = {True: sampling_weights(data, config, True), False: sampling_weights(data, config, False)}
    loop_start, losses = time.time(), []

    def minutes() -> float:
        return round((elapsed_before + time.time() - loop_start) / 60, 2)

    while step < config.steps:
        rows = torch.multinomial(phases[step < shape_only_steps], config.batch_size,
                                 replacement=True, generator=generator)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        loss = answer_loss(model, make_batch(data, rows, pad_id), prefix)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append(loss.item())
        if step % config.log_every == 0:
            curve.append({"step": step, "loss": round(sum(losses) / len(losses), 4),
                          "minutes": minutes()})
            losses = []
            log(json.dumps(curve[-1]) + "\n")
        if step % config.eval_every == 0 or step == config.steps:
            correct = first_token_correct(model, evals, eval_rows, pad_id)
            history.append({"step": step, "easy_vqa_slice": per_kind(
                correct, [evals.kinds[i] for i in eval_rows.tolist()]), "minutes": minutes()})
            log(json.dumps(history[-1]) + "\n")
        if step % config.checkpoint_every == 0 and step < config.steps:
            out.mkdir(parents=True, exist_ok=True)
            torch.save({"trained": smollm2.trained_state(model), "optimizer": optimizer.state_dict(),
                        "generator": generator.get_state(), "step": step, "history": history,
                        "curve": curve, "elapsed": elapsed_before + time.time() - loop_start,
                        "lora": lora_record(config)},
                       state_path.with_suffix(".tmp"))
            state_path.with_suffix(".tmp").replace(state_path)
    model.eval().requires_grad_(False)
    out.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt"}
    if adapters:
        metadata["lora_scale"] = repr(config.lora_alpha / config.lora_rank)
    save_file(smollm2.trained_state(model), out / smollm2.TRAINED_WEIGHTS.name, metadata=metadata)
    report = {"config": asdict(config), "train_minutes": minutes(),
              "trainable_parameters": sum(p.numel() for p in parameters),
              "train_questions": len(data.prompts), "curve": curve, "history": history,
              "torch": torch.__version__}
    if config.final_eval:
        correct = first_token_correct(model, evals, torch.arange(len(test)), pad_id)
        report["easy_vqa_test"] = per_kind(correct, evals.kinds, evals.asks_present)
        log(json.dumps({"easy_vqa_test": report["easy_vqa_test"]}) + "\n")
    (out / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    state_path.unlink(missing_ok=True)
    return report


def lora_targets(text: str) -> tuple[str, ...]:
    """The ``type=`` of ``--lora-targets``: linear layer names, e.g. ``q_proj,v_proj``."""
    found = tuple(part.strip() for part in text.split(",") if part.strip())
    if not found or not all(part.isidentifier() for part in found):
        raise argparse.ArgumentTypeError(f"takes linear layer names separated by commas, e.g. "
                                         f"q_proj,v_proj, not {text[:40]!r}")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    defaults = SmolTrainConfig()
    parser = ArgumentParser(prog="python -m analyses.train_tiny --substrate smollm2",
                            description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("probes/models/zoo/checkpoints")
                        / "tiny-llava-smollm2")
    parser.add_argument("--seed", type=SEED, default=defaults.seed)
    parser.add_argument("--steps", type=POSITIVE, default=defaults.steps)
    parser.add_argument("--batch-size", type=POSITIVE, default=defaults.batch_size)
    parser.add_argument("--threads", type=THREADS, default=defaults.threads)
    parser.add_argument("--lr", type=POSITIVE_NUMBER, default=defaults.lr)
    parser.add_argument("--warmup", type=NONNEGATIVE, default=defaults.warmup)
    parser.add_argument("--shape-only-fraction", type=PROBABILITY, default=defaults.shape_only_fraction)
    parser.add_argument("--shape-oversample", type=POSITIVE_NUMBER, default=defaults.shape_oversample)
    parser.add_argument("--balance-yes-no", action="store_true",
                        help="draw yes/no questions about present and absent attributes equally "
                        "(easy-VQA asks about absent ones 83%% of the time)")
    parser.add_argument("--projector-only", action="store_true",
                        help="keep the vision tower frozen too (train the projector alone)")
    parser.add_argument("--eval-every", type=POSITIVE, default=defaults.eval_every)
    parser.add_argument("--checkpoint-every", type=POSITIVE, default=defaults.checkpoint_every)
    parser.add_argument("--no-final-eval", action="store_true",
                        help="skip the per-kind evaluation on the whole test split at the end")
    parser.add_argument("--init-from", type=Path, metavar="FILE",
                        help="start the tower and projector from this trained file (e.g. the "
                        "shipped vision_projector.safetensors) instead of tiny-llava's tower "
                        "and a fresh projector")
    parser.add_argument("--lora-rank", type=NONNEGATIVE, default=defaults.lora_rank,
                        help="train low-rank adapters of this rank on the language model too "
                        "(default 0: none, SmolLM2 frozen)")
    parser.add_argument("--lora-alpha", type=POSITIVE_NUMBER,
                        help="the adapters' scale is alpha / rank (default 2 x rank: scale 2)")
    parser.add_argument("--lora-targets", type=lora_targets,
                        help=f"the linear layers of every block that get adapters (default "
                        f"{','.join(defaults.lora_targets)}: attention)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--evaluate", type=Path, metavar="FILE",
                        help="train nothing: print the accuracy of the model this trained file "
                        "makes (e.g. the shipped vision_projector.safetensors) on the easy-VQA "
                        "test split, per kind and yes/no by whether the asked attribute is there")
    parser.add_argument("--limit", type=POSITIVE,
                        help="with --evaluate: the first N test questions (default: all 9,673)")
    args = parser.parse_args(argv)
    if args.limit is not None and args.evaluate is None:
        parser.error("--limit needs --evaluate")
    if args.evaluate is not None:
        if not args.evaluate.is_file():
            raise UserError(f"--evaluate {args.evaluate}: no such file; give a trained "
                            "vision_projector.safetensors.")
        sys.stdout.write(json.dumps(evaluate(args.evaluate, args.limit, args.threads)) + "\n")
        return 0
    if not args.lora_rank and (args.lora_alpha is not None or args.lora_targets is not None):
        parser.error("--lora-alpha and --lora-targets need --lora-rank")
    config = SmolTrainConfig(
        seed=args.seed, steps=args.steps, batch_size=args.batch_size, threads=args.threads,
        lr=args.lr, warmup=args.warmup, shape_only_fraction=args.shape_only_fraction,
        shape_oversample=args.shape_oversample, balance_yes_no=args.balance_yes_no,
        train_tower=not args.projector_only,
        eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
        final_eval=not args.no_final_eval,
        init_from=None if args.init_from is None else str(args.init_from),
        lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
        lora_targets=args.lora_targets or defaults.lora_targets,
    )
    report = train(config, args.out, args.resume)
    sys.stdout.write(json.dumps(report["history"][-1]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
