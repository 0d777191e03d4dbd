"""Make a plugin class that forwards ``**kwargs`` to an ESPnet class show every option.

ESPnet's ``--print_config`` lists a class's options from the signature of its
``__init__`` (``espnet2.utils.get_default_kwargs``); a subclass written as
``__init__(self, input_size, gate_conf=None, **conformer_kwargs)`` would show
only its own options. :func:`inherit_signature` gives the subclass's
``__init__`` the merged signature: its own named options, then every option of
the ESPnet base class that it forwards.
"""

from __future__ import annotations

import inspect
from typing import Callable, Type, TypeVar

T = TypeVar("T", bound=type)


def inherit_signature(base: Type) -> Callable[[T], T]:
    """Class decorator: ``cls.__init__`` advertises its own options plus ``base.__init__``'s."""

    def decorate(cls: T) -> T:
        own = inspect.signature(cls.__init__).parameters
        forwarded = inspect.signature(base.__init__).parameters
        params = [p for p in own.values() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        names = {p.name for p in params}
        keyword_only = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for name, p in forwarded.items()
            if name not in names and name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]
        # keyword-only options may not precede positional ones without defaults
        merged = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind == p.KEYWORD_ONLY else p for p in params]
        cls.__init__.__signature__ = inspect.Signature(merged + keyword_only)
        return cls

    return decorate
