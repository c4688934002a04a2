"""Where a module runs, for models spread over several devices (``load_model(device_map=...)``).

A model loaded with a device map has its decoder layers on different devices, each behind an
accelerate hook that moves a call's inputs onto the layer's device. The engine does not lean on
the hooks: it finds each layer's device from the layer itself and hands it masks, rotary tables
and hidden states already there, made once per device (:class:`OnDevices`), so no per-call copy
is hidden in a hook and nothing assumes the model has one device.

>>> layer = torch.nn.Linear(2, 2)
>>> module_device(layer)
device(type='cpu')
>>> tables = OnDevices((torch.zeros(2), torch.ones(2)))
>>> tables.on(torch.device("cpu"))[1].tolist()
[1.0, 1.0]
"""

from __future__ import annotations

import itertools
from typing import Any

import torch


def module_device(module: torch.nn.Module) -> torch.device:
    """The device ``module`` computes on: its accelerate hook's execution device when it has
    one (offloaded weights wait on another device until the call), else the device of its own
    parameters or buffers."""
    hook = getattr(module, "_hf_hook", None)
    execution = getattr(hook, "execution_device", None)
    if execution is not None:
        return torch.device("cuda", execution) if isinstance(execution, int) else torch.device(execution)
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    raise ValueError(f"{type(module).__name__} has no parameters or buffers to tell its device")


def _move(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    return type(value)(_move(item, device) for item in value)


def _device_of(value: Any) -> torch.device:
    return value.device if isinstance(value, torch.Tensor) else _device_of(value[0])


class OnDevices:
    """A tensor (or a tuple of tensors) and its copies on the devices asked for, each copy made
    on first use and kept: a value every layer reads (a mask, rotary tables) crosses to each
    device once per run, not once per layer or decoding step."""

    def __init__(self, value: Any) -> None:
        self._copies = {_device_of(value): value}

    def on(self, device: torch.device) -> Any:
        if device not in self._copies:
            self._copies[device] = _move(next(iter(self._copies.values())), device)
        return self._copies[device]
