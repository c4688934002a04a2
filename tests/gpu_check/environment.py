"""The machine the check runs on: the device it may use, what it says about itself (torch, CUDA,
cuDNN, the GPU and its free memory), and the sdpa backends: which one a block runs under and
which kernels its calls actually took."""

from __future__ import annotations

import contextlib
import platform
import sys
from collections import Counter
from collections.abc import Callable, Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from probes.errors import UserError

MIN_GPU_GIB = 60  # the largest shape needs an estimated 45 GB (see the package docstring)
DECLARED_TORCH = (2, 13)  # pyproject.toml's torch>=2.13

# a backend's name -> what sdpa_kernel is given (None: no restriction, PyTorch's own choice).
# A restricted backend keeps MATH behind it, so a call the kernel cannot serve (a grouped-query
# call without a mask, say) still runs; the kernels row says which calls took which kernel.
BACKENDS: dict[str, tuple[SDPBackend, ...] | None] = {
    "default": None,
    "flash": (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH),
    "efficient": (SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH),
    "cudnn": (SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH),
    "math": (SDPBackend.MATH,),
}
DEFAULT_BACKENDS = ("default", "efficient", "math")
# the aten ops behind torch.nn.functional.scaled_dot_product_attention, as the profiler names them
KERNEL_OPS = {
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash-cpu",
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_efficient_attention": "efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_fused_attention_overrideable": "overrideable",
}


def select_device(name: str, tiny: bool) -> torch.device:
    """``cuda``: the first GPU, refused in one sentence without one or under MIN_GPU_GIB (the
    tiny models need no minimum); ``cpu``: only for the tiny models."""
    if name == "cpu":
        if not tiny:
            raise UserError("the 7B models need a CUDA GPU; on the CPU run the tiny models "
                            "(--device cpu --tiny).")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("make gpu-check needs a CUDA GPU; this machine has none "
                        "(torch.cuda.is_available() is False).")
    gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    if gib < MIN_GPU_GIB and not tiny:
        raise UserError(f"make gpu-check needs a GPU with at least {MIN_GPU_GIB} GiB of memory; "
                        f"{torch.cuda.get_device_name(0)} has {gib:.0f} GiB.")
    return torch.device("cuda", 0)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def describe(device: torch.device) -> dict:
    """What the run's first line says: versions, the device, its memory, the sdpa switches."""
    import transformers

    info = {"python": platform.python_version(), "executable": sys.executable,
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "transformers": transformers.__version__, "device": device_name(device)}
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        major, minor = torch.cuda.get_device_capability(device)
        info.update(capability=f"sm_{major}{minor}", free_gib=round(free / 2**30, 1),
                    total_gib=round(total / 2**30, 1))
        info["sdpa_enabled"] = {
            "flash": torch.backends.cuda.flash_sdp_enabled(),
            "efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
            "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
            "math": torch.backends.cuda.math_sdp_enabled()}
    version = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    if version < DECLARED_TORCH:
        info["note"] = (f"torch {torch.__version__} is older than the torch>="
                        f"{'.'.join(map(str, DECLARED_TORCH))} fusionlens declares")
    return info


def environment_line(info: dict) -> str:
    parts = [f"python {info['python']} ({info['executable']})", f"torch {info['torch']}",
             f"CUDA {info['cuda']}", f"cuDNN {info['cudnn']}",
             f"transformers {info['transformers']}", info["device"]]
    if "capability" in info:
        parts.append(f"{info['capability']}, {info['free_gib']} of {info['total_gib']} GiB free")
        parts.append("sdpa enabled: " + ", ".join(name for name, on in info["sdpa_enabled"].items()
                                                  if on))
    if "note" in info:
        parts.append(info["note"])
    return "environment: " + "; ".join(parts)


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """sdpa restricted to backend ``name`` (see BACKENDS) for the block."""
    chosen = BACKENDS[name]
    if chosen is None:
        yield
        return
    with sdpa_kernel(list(chosen), set_priority=True):
        yield


def backend_unavailable(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why backend ``name`` cannot serve a masked call on ``device`` (its first kernel alone),
    or None when it can."""
    chosen = BACKENDS[name]
    if chosen is None:
        return None
    query = torch.zeros(1, 2, 4, 64, device=device, dtype=dtype)
    mask = torch.zeros(1, 1, 4, 4, device=device, dtype=dtype)
    try:
        with sdpa_kernel(chosen[0]):
            torch.nn.functional.scaled_dot_product_attention(query, query, query, attn_mask=mask)
    except RuntimeError as error:
        return f"{chosen[0].name} unavailable on {device.type}: {first_line(error)}"
    return None


def kernels_used(function: Callable[[], object]) -> Counter:
    """How many sdpa calls of ``function()`` took each kernel (from the profiler's aten ops)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        function()
    counts: Counter = Counter()
    for event in profiler.key_averages():
        if event.key in KERNEL_OPS:
            counts[KERNEL_OPS[event.key]] += event.count
    return counts


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]
