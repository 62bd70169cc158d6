"""Estimator ``__init__``s derived from a base estimator's, with other defaults and extra parameters.

scikit-learn reads an estimator's parameters from the explicit signature of its ``__init__`` (no
``**kwargs``), so a subclass that changes defaults or adds parameters needs a signature of its own;
:func:`derived_init` builds it instead of repeating every parameter.
"""

from __future__ import annotations

import inspect


def derived_init(base: type, keyword_only: bool = True, **defaults):
    """An ``__init__`` with ``base``'s parameters, the new ``defaults`` and, after them, keyword-only extras
    (names ``base`` lacks). ``keyword_only`` makes every parameter keyword-only; otherwise ``base``'s
    positional parameters stay positional."""
    base_signature = inspect.signature(base.__init__)
    names = [name for name in base_signature.parameters if name != "self"]
    parameters = [
        base_signature.parameters[name].replace(default=defaults.get(name, base_signature.parameters[name].default))
        for name in names
    ]
    if keyword_only:
        parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in parameters]
    extras = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=value)
              for name, value in defaults.items() if name not in base_signature.parameters]
    self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    signature = base_signature.replace(parameters=[self_parameter, *parameters, *extras])

    def __init__(*args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{type(args[0]).__name__}: {error}") from None
        bound.apply_defaults()
        self, values = args[0], dict(bound.arguments)
        del values["self"]
        base.__init__(self, **{name: values[name] for name in names})
        for extra in extras:
            setattr(self, extra.name, values[extra.name])

    __init__.__signature__ = signature
    __init__.__doc__ = base.__init__.__doc__
    return __init__
