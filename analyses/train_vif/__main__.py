"""``python -m analyses.train_vif [options]``: train a VIF module on a frozen model (easy-VQA
train + fine-grained train), save it as ``vif.safetensors`` in ``--out``, and compare the
model with and without it on held-out data (default: the fine-grained test split).

Training comes first; the evaluation runs through the shared runner (``--resume`` continues
it with the module already trained there; ``--shard i/n`` evaluates a module given with
``--load`` in shards, merged with ``python -m analyses.merge``). With the local backend the
model loaded for training is the one that evaluates."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from analyses.common import load_data, load_model_from_args, prompt_data, write_run
from analyses.runner import PARTIAL, LocalBackend, run
from analyses.runner.cli import (
    add_analysis_arguments,
    check_out_from_args,
    make_backend,
    options_from_args,
    printed,
)
from analyses.runner.store import KEY_FILE
from analyses.train_vif.run import WEIGHTS, VIFEvaluation, train_module, training_record
from analyses.train_vif.train import TrainConfig
from figures.style import use_file_backend
from probes.arguments import (
    NONNEGATIVE,
    NONNEGATIVE_NUMBER,
    POSITIVE_NUMBER,
    PROBABILITY,
    ArgumentParser,
    layers,
)
from probes.cli import run_cli
from probes.errors import UserError
from probes.vif import VIF, VIFConfig

DEFAULT_OUT = "runs/train_vif"


def main(argv: Sequence[str] | None = None) -> int:
    use_file_backend()
    parser = ArgumentParser(prog="python -m analyses.train_vif",
                                     description=__doc__.split("\n")[0])
    add_analysis_arguments(parser, DEFAULT_OUT, default_batch_size=32)
    parser.set_defaults(data="fine-grained")
    parser.add_argument("--steps", type=NONNEGATIVE, default=300, help="training steps (default 300)")
    parser.add_argument("--lr", type=POSITIVE_NUMBER, default=2e-3)
    parser.add_argument("--kl-weight", type=NONNEGATIVE_NUMBER, default=0.1)
    parser.add_argument("--sparsity-weight", type=NONNEGATIVE_NUMBER, default=0.01)
    parser.add_argument("--fine-fraction", type=PROBABILITY, default=0.5,
                        help="share of each batch from the fine-grained train split")
    parser.add_argument("--alpha", type=PROBABILITY, default=0.5, help="mixing weight (default 0.5)")
    parser.add_argument("--learn-layers", type=layers, default=None,
                        help="e.g. '2,3' (default: fractions 0.34..0.55 of depth, stride 2)")
    parser.add_argument("--apply-layers", type=layers, default=None,
                        help="e.g. '4,5' (default: fraction 0.78 of depth to the last layer)")
    parser.add_argument("--load", type=Path, default=None,
                        help="evaluate this saved vif.safetensors instead of training")
    args = parser.parse_args(argv)
    vif_config = VIFConfig(alpha=args.alpha, learn_layers=args.learn_layers,
                           apply_layers=args.apply_layers)
    config = TrainConfig(steps=0 if args.load else args.steps, batch_size=args.batch_size,
                         lr=args.lr, kl_weight=args.kl_weight,
                         sparsity_weight=args.sparsity_weight, fine_fraction=args.fine_fraction,
                         seed=args.seed, vif=vif_config)
    options = options_from_args(args)
    check_before_training(args, options.shard)
    test = load_data(args.data, args.split, args.limit)
    loaded = load_model_from_args(args)
    test = prompt_data(test, loaded.adapter.family, args.prompt)  # as the family is asked
    config.validate(loaded.adapter.num_layers)
    if args.load is not None:
        VIF.load(args.load, loaded)  # a missing file or another model shape: before the data
    easy, fine = load_data("easy-vqa", "train", None), load_data("fine-grained", "train", None)
    if args.load is not None:
        weights, training = args.load, training_record(False, 0.0, easy, fine)
    else:
        weights, training = args.out / WEIGHTS, resumed_training(args)
        if training is None:
            module, training = train_module(loaded, easy, fine, config, progress=True)
            module.save(weights)
    analysis = VIFEvaluation.for_weights(weights, config, training, loaded)
    backend = LocalBackend(loaded) if args.backend == "local" else make_backend(args)
    try:
        result = run(analysis, backend, test, options)
    finally:
        backend.close()
    write_run(result, options.out, printed(analysis, result))
    return 0


def check_before_training(args: argparse.Namespace, shard: tuple[int, int]) -> None:
    """What the runner would refuse, refused before training (which would write the weights
    into ``--out``)."""
    if shard != (0, 1) and args.load is None:
        raise UserError("shards evaluate one trained module: train it once (without --shard), "
                        "then give every shard --load OUT/vif.safetensors.")
    check_out_from_args(args)


def resumed_training(args: argparse.Namespace) -> dict | None:
    """With ``--resume``: the training record of the unfinished run in ``--out`` when it
    evaluates the module trained there (its weights are reused, not trained again; the runner
    refuses the resume if the options or the file differ). Else None: train."""
    key = args.out / PARTIAL / KEY_FILE
    weights = args.out / WEIGHTS
    if not (args.resume and key.is_file() and weights.is_file()):
        return None
    recorded = json.loads(key.read_text()).get("config", {})
    if recorded.get("weights") != str(weights.resolve()) or not recorded.get("training"):
        return None
    return recorded["training"]


if __name__ == "__main__":
    sys.exit(run_cli(main))
