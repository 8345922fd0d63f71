"""The Transformers model of an output folder, run with one block's weights in memory at a time.

The model is built on the meta device (no memory), then every block (the embeddings, each encoder
layer, each remaining module with weights) loads its tensors from the folder's safetensors just before
it runs and drops them right after. The forward pass is Transformers' own code, as after
`from_pretrained`; only where the weights live differs. Tied parameters are found structurally (one
Parameter under several names), so a tensor stored once serves every name, as in `from_pretrained`.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..writer import INDEX_FILE, SINGLE_FILE

BLOCK = re.compile(r"^(?:[a-z_]+\.)?(?:embeddings|encoder\.layer\.\d+)$")


def _weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, from the index when sharded."""
    index = folder / INDEX_FILE
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    with safe_open(folder / SINGLE_FILE, "pt") as handle:
        return {name: folder / SINGLE_FILE for name in handle.keys()}


class StreamedModel:
    """Use as a context manager; `model` then runs like a from_pretrained model, block by block."""

    def __init__(self, folder: Path, architecture: str) -> None:
        import transformers

        self.folder = folder
        config = transformers.AutoConfig.from_pretrained(folder)
        config.dtype = torch.float32
        with torch.device("meta"):
            self.model = getattr(transformers, architecture)(config).eval()
        self.config = config
        self.files = _weight_files(folder)
        # Every name of every parameter, and the names that share one Parameter (ties).
        aliases: dict[int, list[str]] = defaultdict(list)
        for name, parameter in self.model.named_parameters(remove_duplicate=False):
            aliases[id(parameter)].append(name)
        self.aliases = {name: names for names in aliases.values() for name in names}
        self.loading_warnings = self._loading_warnings()

    def _loading_warnings(self) -> list[str]:
        expected = set(self.aliases)
        stored = set(self.files)
        missing = sorted(name for name in expected - stored if not any(a in stored for a in self.aliases[name]))
        unexpected = sorted(stored - expected)
        warnings = []
        if missing:
            warnings.append(f"missing_keys: {', '.join(missing)}")
        if unexpected:
            warnings.append(f"unexpected_keys: {', '.join(unexpected)}")
        return warnings

    def __enter__(self) -> StreamedModel:
        self._hooks = []
        for name, module, whole in self._blocks():
            self._hooks.append(module.register_forward_pre_hook(
                lambda module, args, name=name, whole=whole: self._load(name, module, whole)))
            self._hooks.append(module.register_forward_hook(
                lambda module, args, output, whole=whole: self._drop(module, whole)))
        return self

    def __exit__(self, *exc: object) -> None:
        for hook in self._hooks:
            hook.remove()

    def _blocks(self) -> list[tuple[str, nn.Module, bool]]:
        """(name, module, whole): the embeddings and each encoder layer load whole; every other module
        that holds weights itself loads just those."""
        blocks = [(name, module, True) for name, module in self.model.named_modules() if BLOCK.match(name)]
        covered = tuple(f"{name}." for name, _, _ in blocks)
        for name, module in self.model.named_modules():
            if name and not name.startswith(covered) and not BLOCK.match(name) and \
                    any(True for _ in module.parameters(recurse=False)):
                blocks.append((name, module, False))
        return blocks

    def _tensor(self, name: str, handles: ExitStack, opened: dict[Path, object]) -> torch.Tensor:
        stored = next((alias for alias in self.aliases.get(name, [name]) if alias in self.files), None)
        if stored is None:
            raise KeyError(f"{name} is not in the output folder")
        path = self.files[stored]
        if path not in opened:
            opened[path] = handles.enter_context(safe_open(path, "pt"))
        # A copy: a view would keep the file's pages mapped, and counted as resident, for the whole pass.
        return opened[path].get_tensor(stored).to(torch.float32, copy=True)

    def _load(self, prefix: str, block: nn.Module, whole: bool) -> None:
        with ExitStack() as handles:  # the files are unmapped again once the block is loaded
            opened: dict[Path, object] = {}
            for module_name, module in (block.named_modules() if whole else [("", block)]):
                full = f"{prefix}.{module_name}" if module_name else prefix
                for name in list(module._parameters):
                    if module._parameters[name] is not None:
                        value = self._tensor(f"{full}.{name}", handles, opened)
                        module._parameters[name] = nn.Parameter(value, requires_grad=False)
                for name, buffer in list(module._buffers.items()):
                    if buffer is not None and buffer.is_meta:
                        module._buffers[name] = self._buffer(name, buffer)

    def _buffer(self, name: str, buffer: torch.Tensor) -> torch.Tensor:
        # Non-persistent index buffers of the embeddings, recomputed as Transformers' __init__ does.
        if name == "position_ids":
            return torch.arange(buffer.shape[-1]).expand(buffer.shape)
        if name == "token_type_ids":
            return torch.zeros(buffer.shape, dtype=torch.long)
        raise RuntimeError(f"cannot rebuild the buffer {name} for a block-by-block forward pass")

    def _drop(self, block: nn.Module, whole: bool) -> None:
        for module in (block.modules() if whole else [block]):
            for name, parameter in list(module._parameters.items()):
                if parameter is not None:
                    module._parameters[name] = nn.Parameter(parameter.to("meta"), requires_grad=False)
