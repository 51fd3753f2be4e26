"""Reward functions by name, so configs can say {"accuracy": 1.0, "format": 0.5}.

A reward function is a plain callable `fn(completion: str, **example_fields) ->
float | None`. It must accept and ignore fields it does not use (`**_`), and
return None when the sample cannot be judged (for example an unparseable gold
answer): the evaluator then leaves that sample out of the advantage instead of
handing it a free reward.
"""
from __future__ import annotations

from typing import Callable, Optional

RewardFn = Callable[..., Optional[float]]

_REGISTRY: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator that registers `fn` under `name`; returns `fn` unchanged.

    Registering a second, different function under a taken name is an error;
    re-registering the same function (a module imported again, e.g. in a worker
    process) is not.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"reward name must be a non-empty string, got {name!r}")

    def decorator(fn: RewardFn) -> RewardFn:
        if not callable(fn):
            raise TypeError(f"register_reward({name!r}) needs a callable, got {fn!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and _identity(existing) != _identity(fn):
            raise ValueError(
                f"reward name {name!r} is already registered to "
                f"{_identity(existing)}; pick another name for {_identity(fn)}")
        _REGISTRY[name] = fn
        return fn

    return decorator


def get_reward(name: str) -> RewardFn:
    """The reward function registered under `name`."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown reward {name!r}; known rewards: {', '.join(list_rewards())}. "
            "Register new ones with @register_reward(name).") from None


def list_rewards() -> list[str]:
    """Sorted names of all registered rewards."""
    return sorted(_REGISTRY)


def _identity(fn: RewardFn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
