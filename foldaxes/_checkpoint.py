"""Makes a wrapper's checkpoints those of the module it wraps: no ``module.`` prefix, saved or loaded.

Parameters keep their ``module.`` names (``named_parameters()``), since torch has no child without a name; only
what ``state_dict()`` writes and ``load_state_dict()`` reads or reports is translated, through torch's public
state-dict hooks.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["CHILD", "fqn_modifiers", "hide_child_prefix"]

CHILD = "module"
"""The attribute under which a wrapper holds the wrapped module."""


def hide_child_prefix(wrapper: nn.Module) -> None:
    """Installs the hooks on ``wrapper``, whose wrapped module is (or will be) its child ``CHILD``."""
    wrapper.register_state_dict_post_hook(_drop_prefix_on_save)  # type: ignore[no-untyped-call]
    wrapper.register_load_state_dict_pre_hook(_add_prefix_on_load)  # type: ignore[no-untyped-call]
    wrapper.register_load_state_dict_post_hook(_drop_prefix_in_report)  # type: ignore[no-untyped-call]


def fqn_modifiers(wrapper: nn.Module) -> dict[str, str]:
    """The names that ``state_dict()`` writes without the ``CHILD.`` in front, each mapped to ``CHILD``.

    ``torch.distributed.checkpoint.state_dict`` (``get_model_state_dict`` and friends, used with FSDP2) walks
    each state-dict key as an attribute path; it asks a module's ``_fqn_modifiers()`` which names sit under a
    child that the keys leave out. That method name is a torch convention without a public counterpart, and
    this function is foldaxes' only use of it.
    """
    wrapped = wrapper._modules.get(CHILD)
    if wrapped is None:
        return {}
    own = {*wrapper._parameters, *wrapper._buffers, *(name for name in wrapper._modules if name != CHILD)}
    names = (*wrapped._parameters, *wrapped._buffers, *wrapped._modules)
    return {name: CHILD for name in names if name not in own}


def _drop_prefix_on_save(wrapper: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    if CHILD not in wrapper._modules:
        return
    child = prefix + CHILD + "."
    for key in [key for key in state_dict if key.startswith(child)]:
        state_dict[prefix + key[len(child) :]] = state_dict.pop(key)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        # Versions are written under both names: the wrapped module's own under the wrapper's, so that a plain
        # model reading this checkpoint migrates nothing, and the originals, which a wrapped model looks up.
        for key in [key for key in metadata if key == child[:-1] or key.startswith(child)]:
            metadata[prefix + key[len(child) :] if key != child[:-1] else prefix[:-1]] = metadata[key]


def _add_prefix_on_load(
    wrapper: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    if CHILD not in wrapper._modules:
        return
    own = {*wrapper._parameters, *wrapper._buffers, *(name for name in wrapper._modules if name != CHILD)}
    wrapped = wrapper._modules[CHILD]
    # Checkpoints of the classic TimeDistributed, which kept its module as `self.module`, load as they are.
    prefixed = wrapped is not None and CHILD not in {*wrapped._parameters, *wrapped._buffers, *wrapped._modules}
    child = prefix + CHILD + "."
    for key in [key for key in state_dict if key.startswith(prefix)]:
        if key[len(prefix) :].split(".", 1)[0] not in own and not (prefixed and key.startswith(child)):
            state_dict[child + key[len(prefix) :]] = state_dict.pop(key)
    reports = (missing_keys, unexpected_keys, error_msgs)
    wrapper.__dict__.setdefault("_loads_in_progress", []).append((child, prefix, reports, [len(r) for r in reports]))


def _drop_prefix_in_report(wrapper: nn.Module, incompatible_keys: Any) -> None:
    """Rewrites what this load reported about the wrapped module in the names the checkpoint used."""
    loads = wrapper.__dict__.get("_loads_in_progress")
    if not loads:
        return
    child, prefix, (missing, unexpected, messages), (*key_starts, message_start) = loads.pop()
    for keys, start in zip((missing, unexpected), key_starts, strict=True):
        keys[start:] = [prefix + key[len(child) :] if key.startswith(child) else key for key in keys[start:]]
    messages[message_start:] = [message.replace(child, prefix, 1) for message in messages[message_start:]]
