"""Model registry and factory (timm style).

Builders are registered with :func:`register_model` and instantiated by name with
:func:`create_model`, which validates the keyword arguments against the builder's signature and
records the full, JSON-serialisable configuration on the model (``model.config``) so that
``create_model(**model_config(model))`` rebuilds the same architecture.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

from torch import nn

from medae.errors import MedaeError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
#: registered names that training builds and bundles record, but recipes do not name
_UNLISTED: set[str] = set()

Builder = Callable[..., nn.Module]


def register_model(name: str, *, listed: bool = True) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder`` under ``name``.

    Args:
        name: Registry name, e.g. ``"ae"``; must be unique.
        listed: whether :func:`list_models` names it (a model family a recipe may name);
            ``False`` for what training builds from other models (the ensemble).

    Returns:
        The decorator, which returns the builder unchanged.
    """

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY and _REGISTRY[name] is not builder:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = builder
        if not listed:
            _UNLISTED.add(name)
        return builder

    return decorator


def list_models() -> list[str]:
    """Names of the registered model families (what a recipe's ``model.name`` may be), sorted."""
    return sorted(n for n in _REGISTRY if n not in _UNLISTED)


def is_registered(name: str) -> bool:
    """Whether :func:`create_model` builds ``name`` (a family, or the ensemble)."""
    return name in _REGISTRY


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: Registry name (see :func:`list_models`).
        **kwargs: Architecture options accepted by the builder.

    Returns:
        The network, with ``model.config`` set to ``{"name": name, **all_kwargs}`` (defaults
        filled in, tuples as lists).

    Raises:
        MedaeError: Unknown name, unknown keyword, or an invalid value (one-line message naming
            the model and the offending key).
    """
    builder = _REGISTRY.get(name)
    if builder is None:
        known = ", ".join(list_models()) or "none"
        raise MedaeError(f"unknown model {name!r} (registered: {known})")
    signature = inspect.signature(builder)
    params = signature.parameters
    takes_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    if not takes_var_kw:
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise MedaeError(
                f"model {name!r}: unknown argument {unknown[0]!r} "
                f"(accepted: {', '.join(params)})"
            )
    try:
        bound = signature.bind(**kwargs)
    except TypeError as exc:
        raise MedaeError(f"model {name!r}: {exc}") from None
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    if takes_var_kw:
        extra = next(k for k, p in params.items() if p.kind is p.VAR_KEYWORD)
        arguments.update(arguments.pop(extra, {}))
    try:
        config = {"name": name, **{k: _jsonable(v, k) for k, v in arguments.items()}}
        model = builder(**kwargs)
    except (ValueError, MedaeError) as exc:
        message = exc.reason if isinstance(exc, MedaeError) and exc.reason else str(exc)
        raise MedaeError(f"model {name!r}: {message}") from None
    model.config = config
    return model


def model_config(model: nn.Module) -> dict[str, Any]:
    """The JSON-serialisable configuration of a model built by :func:`create_model`.

    Args:
        model: A model returned by :func:`create_model`.

    Returns:
        A copy of ``{"name": ..., **kwargs}``; ``create_model(**cfg)`` rebuilds the architecture.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or "name" not in config:
        raise MedaeError(f"{type(model).__name__} was not built by create_model (no config)")
    return json.loads(json.dumps(config))


def _jsonable(value: Any, key: str) -> Any:
    """``value`` with tuples turned into lists; ValueError if it is not plain JSON data."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, key) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _jsonable(v, key) for k, v in value.items()}
    raise ValueError(f"argument {key!r} must be plain JSON data, got {type(value).__name__}")
