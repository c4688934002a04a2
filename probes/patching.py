"""Activation patching: activations of one run put in place of another's, at chosen sites.

A **site** is where an activation is read and written, per decoder layer: ``residual`` (the
stream leaving the layer; layer -1 is the input embeddings, the stream entering layer 0),
``attn`` (the attention module's output), ``mlp`` (the MLP's output) and ``head`` (one head's
slice of the input of the attention's output projection). A :class:`Patch` puts values at a
site's positions; a condition is a list of patches run together.

- :func:`read_sites`: the values at sites and positions, from one plain forward (hooks);
- :func:`patched_forward`: one plain forward with patches in place (hooks);
- :func:`patch_conditions`: many conditions over one input, batched, computed as the knockout
  executor computes knockouts (:mod:`probes.run`): every position before the first patched
  one is identical to the run the patches go into, so its keys and values are shared, and a
  condition joins the batch at its first patched layer;
- :func:`prefill_pass`: the run the patches go into, itself patched (the embeddings with
  noise: the corrupt run of ``--corrupt noise``), kept for :func:`patch_conditions` to share.

Where the sites are in a model is the adapter's data (``attention_name``, ``mlp_name``,
``output_projection_name``); :func:`check_site` refuses, in one sentence, a site the family
lacks, a layer or a head out of range.

>>> from PIL import Image
>>> import numpy as np
>>> from probes.models.loading import load_model
>>> from probes.run import clean_pass
>>> loaded = load_model("tiny-random-llava")
>>> inputs = loaded.adapter.build_inputs([Image.new("RGB", (64, 64))], ["what shape is it ?"])
>>> last = np.array([inputs.input_ids.shape[1] - 1])
>>> zero = Patch(2, last, torch.zeros(1, 128), "mlp")
>>> logits = patch_conditions(loaded, inputs, clean_pass(loaded, inputs), [[zero], []])
>>> tuple(logits.shape), bool((logits[0] - patched_forward(loaded, inputs, [zero])).abs().max() < 1e-5)
((2, 55), True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from probes import attention
from probes.cache import SharedPrefixCache
from probes.deepstack import Additions
from probes.devices import module_device
from probes.errors import UserError
from probes.models.adapters import VLInputs
from probes.models.loading import LoadedModel
from probes.run import CleanPass, clean_pass, run_layers
from probes.structure import AttentionStructure
from probes.suffix import RotaryTables, SuffixMasks

SITES = ("residual", "attn", "mlp", "head")
EMBEDDINGS = -1  # the residual site's layer that is the input embeddings
# the order in which a decoder layer's sites are computed (an nnsight trace asks in this order)
FORWARD_ORDER = {"head": 0, "attn": 1, "mlp": 2, "residual": 3}


@dataclass(frozen=True)
class Site:
    """Where an activation lives: ``kind`` (one of :data:`SITES`) at decoder layer ``layer``
    (``residual`` also at -1: the embeddings), ``head`` for the ``head`` kind only."""

    kind: str
    layer: int
    head: int | None = None

    def order(self) -> tuple[int, int]:
        """The site's place in a forward: earlier sites sort first."""
        if self.layer == EMBEDDINGS:
            return (-1, 0)
        return (self.layer, FORWARD_ORDER[self.kind])


@dataclass(frozen=True)
class Patch:
    """The activation at site ``kind`` of decoder layer ``layer`` (see :class:`Site`) at
    ``positions`` replaced by ``values`` [len(positions), width] (width: the hidden size, or
    the head dimension for one ``head``)."""

    layer: int
    positions: np.ndarray
    values: torch.Tensor
    kind: str = "residual"
    head: int | None = None

    @property
    def site(self) -> Site:
        return Site(self.kind, self.layer, self.head)


def site_names(loaded: LoadedModel) -> tuple[str, ...]:
    """The sites this model's family has (a site whose module the adapter does not name, or
    the model lacks, is missing)."""
    adapter = loaded.adapter
    layer = adapter.decoder_layers(loaded.model)[0]
    attention_module = getattr(layer, adapter.attention_name)
    present = {"residual": True, "attn": attention_module is not None,
               "mlp": adapter.mlp_name is not None and hasattr(layer, adapter.mlp_name),
               "head": adapter.output_projection_name is not None
               and hasattr(attention_module, adapter.output_projection_name)}
    return tuple(kind for kind in SITES if present[kind])


def check_site(loaded: LoadedModel, site: Site) -> None:
    """Refuse, in one sentence, a site this model does not have."""
    adapter = loaded.adapter
    if site.kind not in SITES:
        raise UserError(f"unknown site {site.kind!r}; use {', '.join(SITES)}.")
    if site.kind not in site_names(loaded):
        raise UserError(f"the {adapter.family} family has no {site.kind!r} site to patch; its "
                        f"sites are {', '.join(site_names(loaded))}.")
    low = EMBEDDINGS if site.kind == "residual" else 0
    if not low <= site.layer < adapter.num_layers:
        raise UserError(f"layer {site.layer} is out of range for the {site.kind} site: this "
                        f"model has layers {low}..{adapter.num_layers - 1}.")
    if (site.kind == "head") != (site.head is not None):
        raise ValueError("a head index goes with the 'head' site, and only with it")
    if site.kind == "head" and not 0 <= site.head < adapter.num_heads:
        raise UserError(f"head {site.head} is out of range: this model has heads "
                        f"0..{adapter.num_heads - 1} per layer.")


def width(loaded: LoadedModel, site: Site) -> int:
    """The size of a site's activation vector at one position."""
    return loaded.adapter.head_dim if site.kind == "head" else loaded.adapter.hidden_size


def site_path(loaded: LoadedModel, site: Site) -> tuple[int, tuple[str, ...], bool]:
    """Where a site is: (decoder layer index, attribute names from that layer to the module
    whose call carries it, whether the site is that module's input rather than its output);
    the same for a plain model and for an nnsight envelope of it."""
    adapter = loaded.adapter
    if site.layer == EMBEDDINGS:
        return 0, (), True
    names = {"residual": (), "attn": (adapter.attention_name,), "mlp": (adapter.mlp_name,),
             "head": (adapter.attention_name, adapter.output_projection_name)}[site.kind]
    return site.layer, names, site.kind == "head"


def site_module(loaded: LoadedModel, layers, site: Site):
    """(the module of ``layers`` (a model's decoder layers, or their nnsight envelopes) that
    carries ``site``, whether the site is its input)."""
    index, names, is_input = site_path(loaded, site)
    module = layers[index]
    for name in names:
        module = getattr(module, name)
    return module, is_input


def columns(loaded: LoadedModel, site: Site) -> slice:
    """The slice of a site's module input or output that is the site (a head's, or all)."""
    if site.kind != "head":
        return slice(None)
    size = loaded.adapter.head_dim
    return slice(site.head * size, (site.head + 1) * size)


def tensor_of(value) -> torch.Tensor:
    return value[0] if isinstance(value, tuple) else value


@contextlib.contextmanager
def _hooks(loaded: LoadedModel, writes: Sequence[tuple[int, Patch]], offset: int = 0,
           reads: Sequence[Site] = (), positions: np.ndarray | None = None,
           kept: list | None = None):
    """Hooks that put each ``(row, patch)`` of ``writes`` in place (the patch's positions less
    ``offset`` in batch row ``row``) and then append to ``kept`` the values of ``reads`` at
    ``positions`` of row 0. Inputs are replaced by patched copies (a caller's tensors, such
    as a shared clean pass's states, are never written); outputs are written in place."""
    sites: dict[Site, tuple[list, list]] = {}
    for row, patch in writes:
        sites.setdefault(patch.site, ([], []))[0].append((row, patch))
    for index, site in enumerate(reads):
        sites.setdefault(site, ([], []))[1].append(index)
    found: dict[int, torch.Tensor] = {}

    def visit(site: Site, tensor: torch.Tensor) -> None:
        cols = columns(loaded, site)
        for row, patch in sites[site][0]:
            if row < tensor.shape[0]:
                where = torch.as_tensor(np.asarray(patch.positions) - offset, device=tensor.device)
                tensor[row, where, cols] = patch.values.to(tensor.device, tensor.dtype)
        for index in sites[site][1]:
            where = torch.as_tensor(np.asarray(positions), device=tensor.device)
            found[index] = tensor[0, where, cols].detach().clone()

    def before(site: Site):
        def hook(module, args, kwargs):
            if args:
                tensor = args[0].clone()
                visit(site, tensor)
                return (tensor, *args[1:]), kwargs
            tensor = kwargs["hidden_states"].clone()
            visit(site, tensor)
            return args, {**kwargs, "hidden_states": tensor}
        return hook

    def after(site: Site):
        def hook(module, args, output):
            visit(site, tensor_of(output))
        return hook

    handles, decoder = [], loaded.adapter.decoder_layers(loaded.model)
    try:
        for site in sorted(sites, key=Site.order):
            module, is_input = site_module(loaded, decoder, site)
            handles.append(module.register_forward_pre_hook(before(site), with_kwargs=True)
                           if is_input else module.register_forward_hook(after(site)))
        yield
    finally:
        for handle in handles:
            handle.remove()
    if kept is not None:
        kept.extend(found[index] for index in range(len(reads)))


@torch.inference_mode()
def patched_forward(loaded: LoadedModel, inputs: VLInputs, patches: Sequence[Patch] = ()
                    ) -> torch.Tensor:
    """[vocab] float32 logits at the last position of one plain forward of a one-row input
    with ``patches`` in place."""
    attention.enable(loaded.model)
    with _hooks(loaded, [(0, patch) for patch in patches]):
        output = loaded.model(**inputs.batch, use_cache=False, logits_to_keep=1)
    return output.logits[0, -1].float().cpu()


@torch.inference_mode()
def read_sites(loaded: LoadedModel, inputs: VLInputs, sites: Sequence[Site],
               positions: Sequence[int], patches: Sequence[Patch] = ()) -> list[torch.Tensor]:
    """Per site, its values [len(positions), width] (float32, CPU) in one plain forward of a
    one-row input with ``patches`` in place (a corrupt run's own edits)."""
    attention.enable(loaded.model)
    kept: list[torch.Tensor] = []
    where = np.asarray(positions, dtype=np.int64)
    with _hooks(loaded, [(0, patch) for patch in patches], reads=list(sites), positions=where,
                kept=kept):
        loaded.model(**inputs.batch, use_cache=False, logits_to_keep=1)
    return [values.float().cpu() for values in kept]


@torch.inference_mode()
def prefill_pass(loaded: LoadedModel, inputs: VLInputs, patches: Sequence[Patch] = ()
                 ) -> CleanPass:
    """:func:`~probes.run.clean_pass` of the run with ``patches`` in place: the run whose keys,
    values and hidden states :func:`patch_conditions` shares."""
    with _hooks(loaded, [(0, patch) for patch in patches]):
        made = clean_pass(loaded, inputs)
    # the hidden states entering layer 0 are the embeddings as patched (however the model
    # recorded them)
    embedded = made.hidden_states[0].clone()
    for patch in patches:
        if patch.layer == EMBEDDINGS:
            embedded[0, torch.as_tensor(patch.positions)] = patch.values.to(embedded.device,
                                                                             embedded.dtype)
    made.hidden_states = (embedded, *made.hidden_states[1:])
    return made


def _start_layer(condition: Sequence[Patch], num_layers: int) -> int:
    """The first layer a condition's run differs from the run it patches (the embeddings'
    patch: layer 0); ``num_layers`` for a condition without patches."""
    return min((max(0, patch.layer) for patch in condition), default=num_layers)


def _first_position(condition: Sequence[Patch], length: int) -> int:
    return min((int(np.min(patch.positions)) for patch in condition
                if np.size(patch.positions)), default=length - 1)


@torch.inference_mode()
def patch_conditions(loaded: LoadedModel, inputs: VLInputs, target: CleanPass,
                     conditions: Sequence[Sequence[Patch]], batch_size: int = 16,
                     source: CleanPass | None = None) -> torch.Tensor:
    """[conditions, vocab] float32 logits at the last position (CPU), each condition's patches
    put into the run ``target`` (a :func:`prefill_pass` of ``inputs``), equal to one
    :func:`patched_forward` per condition to float rounding. Positions before a condition's
    first patched position are shared with ``target`` (its keys and values: conditions are
    run in groups of the same first position, each from its own prefix, moved back to the
    start of an image block it falls inside where the model reads image blocks both ways), a
    condition joins the batch at its first patched layer, and one without patches is
    ``target``'s own logits. The model's own attention structure (sliding windows,
    bidirectional image blocks) and its DeepStack additions (``target``'s, after the layers
    that make them) are kept, as the knockout executor keeps them.

    ``source``: the run the patches' values were read from (same token layout). A condition
    that puts back the source's residual stream after layer l at every position where the two
    runs differ, up to p (the image block of a corrupted image), makes every position before p
    the source run's from layer l on (attention is causal): those keys and values are taken
    from ``source`` and only positions p.. are computed, from layer l + 1 (where no position
    before p reads one after it, and the two runs' DeepStack additions from layer l on are the
    same)."""
    target.check_usable()
    length = target.hidden_states[0].shape[1]
    structure = AttentionStructure.of(loaded.adapter, inputs)
    logits = target.logits.float().cpu().repeat(len(conditions), 1)
    from_source = _source_prefixes(loaded, target, source, conditions, structure)
    buckets: dict[tuple[bool, int], list[int]] = {}
    for i, condition in enumerate(conditions):
        key = (True, from_source[i]) if i in from_source else (
            False, structure.shared_prefix(_first_position(condition, length)))
        buckets.setdefault(key, []).append(i)
    for (shared_source, prefix), chosen in sorted(buckets.items()):
        if shared_source:
            starts = [conditions[i][0].layer + 1 for i in chosen]
            logits[chosen] = _from_prefix(loaded, target, [[] for _ in chosen], prefix,
                                          batch_size, logits[chosen], structure, source, starts)
        else:
            logits[chosen] = _from_prefix(loaded, target, [conditions[i] for i in chosen],
                                          prefix, batch_size, logits[chosen], structure)
    return logits


def _source_prefixes(loaded: LoadedModel, target: CleanPass, source: CleanPass | None,
                     conditions, structure: AttentionStructure) -> dict[int, int]:
    """Condition index -> p, for the conditions :func:`patch_conditions` runs on the source's
    keys and values: one residual patch after a layer l < last whose positions are exactly
    d..p-1 (d: the first position where the two runs' embeddings or position ids differ;
    before it they are the same run), whose values are the source's there, where no position
    before p reads one after it (p is not inside a bidirectional image block) and the runs'
    DeepStack additions after layers l.. are the same."""
    if source is None:
        return {}
    embedded, theirs = target.hidden_states[0][0], source.hidden_states[0][0]
    if embedded.shape != theirs.shape or target.position_ids.shape != source.position_ids.shape:
        return {}
    differs = (embedded != theirs).any(-1) | (target.position_ids != source.position_ids
                                              ).reshape(-1, embedded.shape[0]).any(0)
    if not differs.any():
        return {}
    first = int(differs.nonzero()[0])
    found = {}
    for i, condition in enumerate(conditions):
        if len(condition) != 1:
            continue
        patch = condition[0]
        positions = np.asarray(patch.positions)
        if (patch.kind != "residual" or not 0 <= patch.layer < loaded.adapter.num_layers - 1
                or positions.size == 0 or positions[0] != first
                or not np.array_equal(positions, np.arange(first, first + positions.size))
                or structure.shared_prefix(first + positions.size) != first + positions.size
                or not _same_additions(target, source, patch.layer)):
            continue
        states = source.hidden_states[patch.layer + 1][0, first : first + positions.size]
        if torch.equal(patch.values.to(states.device, states.dtype), states):
            found[i] = first + positions.size
    return found


def _same_additions(target: CleanPass, source: CleanPass, layer: int) -> bool:
    """Whether the two runs' DeepStack additions after layers ``layer``.. are the same."""
    later = {k for k in (*target.additions, *source.additions) if k >= layer}
    return all(k in target.additions and k in source.additions
               and all(torch.equal(a, b) for a, b in zip(target.additions[k],
                                                         source.additions[k]))
               for k in later)


def _from_prefix(loaded: LoadedModel, target: CleanPass, conditions, prefix: int,
                 batch_size: int, logits: torch.Tensor, structure: AttentionStructure,
                 shared: CleanPass | None = None, starts: Sequence[int] | None = None
                 ) -> torch.Tensor:
    """:func:`patch_conditions` of conditions that patch nothing before ``prefix``: the
    positions before it have the keys and values of ``shared`` (default: ``target``); rows
    join at ``starts`` (default: each condition's first patched layer) with ``target``'s
    hidden states."""
    num_layers = loaded.adapter.num_layers
    length = target.hidden_states[0].shape[1]
    if starts is None:
        starts = [_start_layer(condition, num_layers) for condition in conditions]
    order = [i for i in sorted(range(len(conditions)), key=starts.__getitem__)
             if starts[i] < num_layers]
    if not order:
        return logits
    like = target.hidden_states[0]
    masks = SuffixMasks([[] for _ in conditions], prefix, length, like.dtype, like.device,
                        structure)
    cache = SharedPrefixCache((shared or target).keys_values, prefix,
                              max(1, min(batch_size, len(order))), length, one_shot=True)
    tables = RotaryTables(loaded, target.hidden_states[0], target.position_ids[..., prefix:length], prefix)
    head = loaded.adapter.lm_head(loaded.model)
    additions = Additions(target.additions, [None] * len(conditions))
    entering = additions.entering(target.hidden_states, prefix)
    attention.enable(loaded.model)
    for chunk_start in range(0, len(order), batch_size):
        chunk = order[chunk_start : chunk_start + batch_size]
        writes = [(row, patch) for row, index in enumerate(chunk) for patch in conditions[index]]
        with _hooks(loaded, writes, offset=prefix):
            normed = run_layers(loaded, entering, [starts[i] for i in chunk], chunk, prefix,
                                length, cache, masks, tables, additions=additions)
        logits[chunk] = head(normed.to(module_device(head))).float().cpu()
    return logits
