"""Loading a model and its processor through the standard ``from_pretrained`` path.

Safetensors only and no remote code unless asked; ``device="auto"`` picks CUDA when present,
``dtype="auto"`` picks bfloat16 on CUDA and float32 on CPU; ``device_map="auto"`` (or an
explicit map) spreads one model over several GPUs with accelerate (the ``multi-gpu`` extra). Everything that can go wrong with
the user's input (unknown alias, missing directory, unsupported architecture, an attention
feature the engine does not model, weights not available offline, pickled weights, a truncated
or corrupt weights file) becomes one :class:`~probes.errors.UserError` sentence.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import transformers
from huggingface_hub import constants as hub_constants

from probes.errors import UserError
from probes.models.adapters import Adapter, adapter_class, supported_model_types
from probes.models.adapters.modelled import check_hybrid
from probes.models.registry import DEFAULT_MODEL, ModelSource, resolve

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's named maps
T = TypeVar("T")


@dataclass
class LoadedModel:
    """A model ready for probing: the transformers model, its processor and its adapter."""

    model: torch.nn.Module
    processor: Any
    adapter: Adapter
    source: ModelSource

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the model's first parameter (with a device map, the
        first GPU of the map; each layer's own device is :func:`probes.devices.module_device`)."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def eos_token_ids(self) -> set[int]:
        """The token ids that end a generated answer (the generation config's eos ids)."""
        eos = self.model.generation_config.eos_token_id
        return set(eos if isinstance(eos, list) else [eos]) - {None}

    @property
    def model_id(self) -> str:
        """The name recorded in results: the hub id, or the alias of a built-in model."""
        return self.source.location if self.source.kind == "hub" else self.source.name


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available; use --device cpu.")
    if device not in ("cpu", "cuda"):
        raise UserError(f"unknown device {device!r}; use auto, cpu or cuda.")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def check_device_map(device_map: str | dict | None, device: str) -> None:
    """Refuse, in one sentence, a device map this machine or this install cannot serve."""
    if device_map is None:
        return
    if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
        raise UserError(f"unknown device map {device_map!r}; use {', '.join(DEVICE_MAPS)} or an "
                        "explicit {module: device} dict.")
    if not isinstance(device_map, (str, dict)):
        raise UserError(f"a device map is a name ({', '.join(DEVICE_MAPS)}) or a dict of module "
                        f"names to devices, not {type(device_map).__name__}.")
    if device == "cpu":
        raise UserError("--device-map spreads a model over GPUs and cannot be combined with "
                        "--device cpu; drop one of them.")
    if not torch.cuda.is_available():
        raise UserError("--device-map spreads a model over GPUs but no CUDA device is available; "
                        "drop --device-map to run on the CPU.")
    try:
        import accelerate  # noqa: F401
    except ImportError as err:
        raise UserError("--device-map needs the accelerate package: pip install "
                        "'fusionlens[multi-gpu]'.") from err


def check_pixel_budget(adapter_type: type[Adapter], min_pixels: int | None,
                       max_pixels: int | None) -> dict[str, int]:
    """The processor keywords of a pixel budget, refused in one sentence for a family without
    one (the adapter's ``pixel_budget`` says whether it has one) or for a budget that is no
    range of positive areas."""
    budget = {name: int(value) for name, value in (("min_pixels", min_pixels),
                                                   ("max_pixels", max_pixels))
              if value is not None}
    if not budget:
        return budget
    if not hasattr(adapter_type, "pixel_budget"):
        raise UserError(f"--min-pixels/--max-pixels set the pixel budget of Qwen2.5-VL's image "
                        f"processor; a {adapter_type.family} model has none.")
    if any(value < 1 for value in budget.values()):
        raise UserError("--min-pixels and --max-pixels must be positive pixel counts.")
    if len(budget) == 2 and budget["min_pixels"] > budget["max_pixels"]:
        raise UserError(f"--min-pixels ({budget['min_pixels']}) exceeds --max-pixels "
                        f"({budget['max_pixels']}).")
    return budget


def _fetch(source: ModelSource, load: Callable[..., T]) -> T:
    """Call ``load(location, **kw)``; for hub ids try the local cache first, then the network."""
    if source.kind != "hub":
        return load(source.location)
    try:
        return load(source.location, local_files_only=True)
    except OSError:
        pass
    how = (
        f"weights for {source.location} are not available offline: download them on a machine "
        f"with internet (`hf download {source.location}`) into the Hugging Face cache, or pass "
        "--model /path/to/a/local/copy."
    )
    if hub_constants.HF_HUB_OFFLINE:
        raise UserError(how)
    # without a network the hub client logs each failed request before raising; the one
    # sentence below says it better
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        return load(source.location)
    except OSError as err:
        raise UserError(how) from err
    finally:
        hub_logger.setLevel(level)


def _model_type(source: ModelSource, trust_remote_code: bool) -> str:
    """Read ``model_type`` from the config without building anything."""
    if source.kind != "hub":
        config_file = Path(source.location) / "config.json"
        if not config_file.is_file():
            raise UserError(f"{source.location!r} has no config.json, so it is not a model checkpoint directory.")
        try:
            return str(json.loads(config_file.read_text())["model_type"])
        except (ValueError, KeyError) as err:
            raise UserError(f"{config_file} is not a valid model config (no model_type).") from err
    config = _fetch(
        source,
        lambda loc, **kw: transformers.AutoConfig.from_pretrained(
            loc, trust_remote_code=trust_remote_code, **kw
        ),
    )
    return str(config.model_type)


def _check_supported(model: str, source: ModelSource, model_type: str,
                     trust_remote_code: bool) -> None:
    """Refuse a model type no adapter handles, naming the supported ones; a hybrid
    linear-attention model (Qwen3.5, Qwen3-Next) with the sentence naming its layers that have
    no attention matrix (:func:`~probes.models.adapters.modelled.check_hybrid`)."""
    if model_type in supported_model_types():
        return
    with contextlib.suppress(ValueError, KeyError, TypeError):
        check_hybrid(_fetch(source, lambda loc, **kw: transformers.AutoConfig.from_pretrained(
            loc, trust_remote_code=trust_remote_code, **kw)))
    raise UserError(f"{model!r} is a {model_type!r} model; fusionlens supports "
                    f"{', '.join(supported_model_types())}.")


def _check_config(source: ModelSource, adapter_type: type[Adapter], trust_remote_code: bool) -> None:
    """The adapter's refusal of what the engine does not model, from the config alone."""
    try:
        config = _fetch(
            source,
            lambda loc, **kw: transformers.AutoConfig.from_pretrained(
                loc, trust_remote_code=trust_remote_code, **kw
            ),
        )
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"the config of {source.location} is not a valid model config: "
                        f"{str(err).splitlines()[0]}") from err
    adapter_type.check_config(config)


def _checkpoint_directory(source: ModelSource) -> Path | None:
    """Where the checkpoint's files are on this machine: the directory, or the hub cache's
    snapshot of a hub id (None when nothing of it is cached)."""
    if source.kind != "hub":
        return Path(source.location)
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source.location, "config.json")
    return Path(cached).parent if isinstance(cached, str) else None


def _broken_weights_file(source: ModelSource) -> UserError | None:
    """One sentence naming the first safetensors weights file of the checkpoint whose header
    does not read or does not cover the file (truncated, or not safetensors at all); None when
    every one reads."""
    from safetensors import safe_open

    directory = _checkpoint_directory(source)
    if directory is None or not directory.is_dir():
        return None
    for path in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as err:  # safetensors raises its own SafetensorError (an Exception)
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            return UserError(f"the weights file {path} is truncated or corrupt ({reason}); "
                             "copy or download the checkpoint again.")
    return None


def load_model(
    model: str = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str = "auto",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    device_map: str | dict | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> LoadedModel:
    """Load a model, its processor and its adapter, ready for inference.

    ``min_pixels`` / ``max_pixels`` set the pixel budget of a family whose image processor
    resizes every image into an area range (Qwen2.5-VL's); a family without one refuses them.

    ``device_map`` ("auto", "balanced", "balanced_low_0", "sequential" or an explicit
    ``{module name: device}`` dict, as ``from_pretrained`` takes it) spreads the model over the
    visible GPUs with accelerate, whole decoder layers on each; ``None`` keeps it on ``device``.
    The probes follow each layer's device (see :mod:`probes.devices`).

    >>> loaded = load_model("tiny-random-llava")
    >>> loaded.adapter.family, loaded.adapter.num_layers, loaded.dtype
    ('llava', 6, torch.float32)
    """
    check_device_map(device_map, device)
    source = resolve(model)
    model_type = _model_type(source, trust_remote_code)
    _check_supported(model, source, model_type, trust_remote_code)
    adapter_type = adapter_class(model_type)
    budget = check_pixel_budget(adapter_type, min_pixels, max_pixels)
    torch_device = pick_device("cuda" if device_map is not None else device)
    torch_dtype = pick_dtype(dtype, torch_device)
    model_class = getattr(transformers, adapter_type.model_class_name)
    options: dict[str, Any] = {
        "dtype": torch_dtype,
        "attn_implementation": attn_implementation,
        "use_safetensors": not allow_pickle,
        "trust_remote_code": trust_remote_code,
    }
    if device_map is not None:
        options["device_map"] = device_map
    elif torch_device.type == "cuda":
        options["device_map"] = {"": torch_device.index or 0}  # load straight onto the GPU
    _check_config(source, adapter_type, trust_remote_code)  # before a byte of weights is read
    try:
        network_model = _fetch(source, lambda loc, **kw: model_class.from_pretrained(loc, **options, **kw))
    except Exception as err:
        broken = _broken_weights_file(source)
        if broken is not None:
            raise broken from err
        if not isinstance(err, OSError):
            raise
        if "safetensors" in str(err).lower() and not allow_pickle:
            raise UserError(
                f"{model!r} has no safetensors weights; fusionlens refuses pickled (.bin) weights "
                "unless --allow-pickle is given."
            ) from err
        raise UserError(f"cannot load the weights of {model!r}: {str(err).splitlines()[0]}") from err
    try:
        processor = _fetch(
            source,
            lambda loc, **kw: adapter_type.load_processor(loc, trust_remote_code=trust_remote_code,
                                                **budget, **kw),
        )
    except ImportError as err:  # a processor class that needs a package this machine lacks
        raise UserError(f"the processor of {model!r} cannot load here: {str(err).splitlines()[0]}") from err
    network_model.eval().requires_grad_(False)
    if torch_device.type != "cuda":
        network_model.to(torch_device)
    adapter = adapter_type(network_model.config, processor)
    return LoadedModel(model=network_model, processor=processor, adapter=adapter, source=source)


def load_adapter(model: str = DEFAULT_MODEL, trust_remote_code: bool = False,
                 min_pixels: int | None = None, max_pixels: int | None = None) -> Adapter:
    """The adapter of ``model`` with its processor, built from the checkpoint's config and
    processor files alone (no weights are read): enough to build inputs and place image tokens
    (:func:`probes.inputs.token_boxes`), as the report does for saved runs.

    >>> adapter = load_adapter("tiny-random-llava")
    >>> adapter.family, adapter.image_layout((96, 64)).n_tokens
    ('llava', 64)
    """
    source = resolve(model)
    model_type = _model_type(source, trust_remote_code)
    _check_supported(model, source, model_type, trust_remote_code)
    adapter_type = adapter_class(model_type)
    budget = check_pixel_budget(adapter_type, min_pixels, max_pixels)
    config = _fetch(source, lambda loc, **kw: transformers.AutoConfig.from_pretrained(
        loc, trust_remote_code=trust_remote_code, **kw))
    processor = _fetch(source, lambda loc, **kw: adapter_type.load_processor(
        loc, trust_remote_code=trust_remote_code, **budget, **kw))
    return adapter_type(config, processor)
