"""The introspection snippet that runs inside a notebook's kernel, sent there verbatim.

:mod:`jupyter_ds.context.kernel` reads this file's text and has the kernel ``exec`` it into
a fresh dict (never into the user's namespace) and call :func:`probe` with the user
namespace; nothing here is imported or kept in the kernel afterwards. The server never
imports this module either; tests do, to run the same code against hostile objects.

What it may do to the user's objects is the whole point, so the rules are strict:

- A value is only ever looked at through ``type(v)`` (C level, it never asks the object)
  and identity checks against well-known classes (``type(v) is pandas.DataFrame``, exact:
  a subclass may override anything). Names are read through ``type``'s own descriptors
  (``type.__dict__["__name__"]``), so even a metaclass cannot run code on the way.
- Only values of those exact well-known types are asked anything more, and only what
  their own library computes: a pandas/polars DataFrame's column labels and dtypes, a
  numpy array's or torch tensor's shape and dtype. Column labels and dtypes that are not
  builtin, numpy, pandas or polars objects are described by their type name, not
  converted to text.
- Plain functions (``types.FunctionType``) and methods are described from their code
  object, defaults and (before Python 3.14) annotations; default values and annotations
  are rendered only when they are builtin scalars, strings or classes.
  :func:`inspect.signature` is not used for them: it follows ``__wrapped__`` to any
  object, honours a user-set ``__signature__`` and, from Python 3.14, evaluates lazy
  annotations, each a way to run user code. Builtin functions bound to a module (or
  nothing) use ``inspect.signature``, which reads their C ``__text_signature__``.
- No ``repr``/``str``/``len``/``bool``/``==``/``hash`` of a user object, no attribute
  access on one, no import of anything that is not already loaded: pandas, numpy, polars
  and torch are found in ``sys.modules`` only when the user has imported them.
- It never raises (an exception would overwrite ``sys.last_traceback`` and so the user's
  ``%debug``), never prints, and stops describing after a time and size budget.

The result is JSON text: ``{"v": 1, "names": [...], "more": int, "partial": bool}``, each
name ``{"n": name, "k": kind, ...}`` (kinds: frame, series, array, function, class, module,
other), most recently defined first.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
import types

VERSION = 1

# IPython's own names in every user namespace; names starting with "_" are skipped too.
SKIP = frozenset(("In", "Out", "get_ipython", "exit", "quit", "open"))

# Read a class's name, module, MRO and dict through type's own descriptors: a metaclass
# that overrides these attributes is never consulted.
_TYPE_NAME = type.__dict__["__name__"].__get__
_TYPE_MODULE = type.__dict__["__module__"].__get__
_TYPE_MRO = type.__dict__["__mro__"].__get__
_TYPE_DICT = type.__dict__["__dict__"].__get__

_CO_VARARGS = 0x04
_CO_VARKEYWORDS = 0x08
_LIBRARY_MODULES = ("numpy", "pandas", "polars", "torch")

DEFAULT_LIMITS = {
    "names": 200,  # names described, most recent first
    "visit": 20000,  # namespace entries looked at, at most
    "columns": 200,  # column labels and dtypes per DataFrame
    "total_columns": 2000,  # over all DataFrames
    "ms": 30,  # then only type names
    "text": 120,  # characters of any one label, dtype or signature
}


def probe(ns: dict, limits: dict | None = None) -> str:
    """Describe ``ns`` (the user namespace) as JSON text; never raises."""
    try:
        lim = dict(DEFAULT_LIMITS)
        if type(limits) is dict:
            for key, value in limits.items():
                if key in lim and type(value) is int:
                    lim[key] = value
        out = _probe(ns, lim)
    except Exception as exc:  # the user's %debug must keep its own traceback
        out = {"v": VERSION, "error": _tname(type(exc)), "names": []}
    return json.dumps(out)


def _probe(ns: dict, lim: dict) -> dict:
    started = time.perf_counter()
    if type(ns) is not dict:
        return {"v": VERSION, "names": [], "error": "namespace"}
    known = _known_types()
    rich_types = [cls for cls, _ in known] + [types.FunctionType, types.MethodType,
                                              types.BuiltinFunctionType, types.ModuleType]
    # Pick which names to describe: the most recently defined first (insertion order),
    # but data, functions, classes and modules before plain values, so that a DataFrame
    # defined early is not crowded out by many later scalars.
    rich, plain = [], []
    partial = False
    visited = 0
    for name in reversed(list(ns)):
        visited += 1
        if visited > lim["visit"]:
            partial = True
            break
        if type(name) is not str or name.startswith("_") or name in SKIP:
            continue
        value = dict.get(ns, name)
        cls = type(value)
        is_rich = _subclass_of(cls, type) or any(cls is each for each in rich_types)
        (rich if is_rich else plain).append(name)
        if len(rich) >= lim["names"]:
            partial = partial or visited < len(ns)
            break
    chosen = set(rich[: lim["names"]])
    chosen.update(plain[: lim["names"] - len(chosen)])
    more = len(rich) + len(plain) - len(chosen)
    names: list = []
    state = {"columns": lim["total_columns"]}
    for name in reversed(list(ns)):
        if type(name) is not str or name not in chosen:
            continue
        value = dict.get(ns, name)
        if (time.perf_counter() - started) * 1000 > lim["ms"]:
            partial = True  # over time: the type name only, which costs nothing
            entry = {"k": "other", "t": _tname(type(value))}
        else:
            try:
                entry = _describe(value, known, lim, state)
            except Exception:
                entry = {"k": "other", "t": _tname(type(value))}
        entry["n"] = name
        names.append(entry)
        if len(names) >= len(chosen):
            break
    return {"v": VERSION, "names": names, "more": more, "partial": partial}


def _known_types() -> list:
    """(class, kind) of the well-known types whose libraries the user has imported."""
    found = []
    wanted = (
        ("pandas", "DataFrame", "pandas_frame"),
        ("pandas", "Series", "pandas_series"),
        ("polars", "DataFrame", "polars_frame"),
        ("numpy", "ndarray", "ndarray"),
        ("torch", "Tensor", "tensor"),
    )
    for module_name, attr, kind in wanted:
        module = sys.modules.get(module_name)
        if type(module) is not types.ModuleType:
            continue  # not imported (or replaced by something that is not a module)
        cls = module.__dict__.get(attr)  # the module's dict: no module __getattr__
        if isinstance(cls, type):
            found.append((cls, kind))
    numpy = sys.modules.get("numpy")
    if type(numpy) is types.ModuleType:
        dtype = numpy.__dict__.get("dtype")
        if isinstance(dtype, type):
            found.append((dtype, "numpy_dtype"))
    return found


def _describe(value: object, known: list, lim: dict, state: dict) -> dict:
    cls = type(value)
    for known_cls, kind in known:
        if cls is known_cls:
            if kind == "pandas_frame":
                return _pandas_frame(value, known, lim, state)
            if kind == "polars_frame":
                return _polars_frame(value, lim, state)
            if kind == "pandas_series":
                return {"k": "series", "t": "Series", "dtype": _dtype(value.dtype, known, lim),
                        "shape": [len(value)]}
            if kind == "ndarray":
                return {"k": "array", "t": "ndarray", "dtype": _text(value.dtype.name, lim),
                        "shape": [int(n) for n in value.shape]}
            if kind == "tensor":
                dtype = str(value.dtype)
                entry = {"k": "array", "t": "Tensor", "shape": [int(n) for n in value.shape],
                         "dtype": _text(dtype[6:] if dtype.startswith("torch.") else dtype, lim)}
                device = str(value.device)
                if device != "cpu":
                    entry["device"] = _text(device, lim)
                return entry
    if cls is types.FunctionType:
        return {"k": "function", "sig": _function_signature(value, False, lim)}
    if cls is types.MethodType:
        func = value.__func__  # the C-level member; the bound object is never touched
        if type(func) is types.FunctionType:
            return {"k": "function", "sig": _function_signature(func, True, lim)}
        return {"k": "other", "t": "method"}
    if cls is types.BuiltinFunctionType:
        return {"k": "function", "sig": _builtin_signature(value, lim)}
    if cls is types.ModuleType:
        module_name = value.__dict__.get("__name__")
        return {"k": "module", "module": _text(module_name, lim) if type(module_name) is str
                else "?"}
    if _subclass_of(cls, type):  # a class, whatever its metaclass
        return {"k": "class", "t": _tname(cls), "sig": _class_signature(value, lim)}
    return {"k": "other", "t": _tname(cls)}


def _pandas_frame(frame: object, known: list, lim: dict, state: dict) -> dict:
    columns = frame.columns  # pandas' own property (the exact type has no override)
    count = len(columns)
    take = max(0, min(count, lim["columns"], state["columns"]))
    state["columns"] -= take
    labels = [_label(x, lim) for x in columns[:take]] if take else []
    dtypes = [_dtype(d, known, lim) for d in frame.dtypes.iloc[:take]] if take else []
    return {"k": "frame", "t": "DataFrame", "ncols": count, "rows": len(frame.index),
            "cols": [[labels[i], dtypes[i]] for i in range(min(len(labels), len(dtypes)))]}


def _polars_frame(frame: object, lim: dict, state: dict) -> dict:
    names = frame.columns  # a list of str, polars' own
    count = len(names)
    take = max(0, min(count, lim["columns"], state["columns"]))
    state["columns"] -= take
    dtypes = frame.dtypes[:take] if take else []
    # (no zip(strict=...): the kernel may run a Python older than 3.10)
    cols = [[_label(names[i], lim), _library_text(dtypes[i], lim)]
            for i in range(min(take, len(dtypes)))]
    return {"k": "frame", "t": "DataFrame", "ncols": count, "rows": int(frame.height),
            "cols": cols}


def _dtype(dtype: object, known: list, lim: dict) -> str:
    cls = type(dtype)
    for known_cls, kind in known:
        if kind == "numpy_dtype" and _subclass_of(cls, known_cls):
            return _text(dtype.name, lim)  # numpy's C getter
    library = _library_module(cls)
    if library in ("pandas", "polars"):
        name = dtype.name if library == "pandas" else str(dtype)  # the library's own
        if type(name) is str:
            return _text(name, lim)
    return _tname(cls)


def _label(label: object, lim: dict, depth: int = 0) -> object:
    """A column label as JSON: builtin scalars as they are, library scalars as their
    library prints them, tuples (MultiIndex) element-wise, anything else
    ``{"t": type name}`` (not a label the user could type)."""
    cls = type(label)
    if cls is str:
        return _text(label, lim)
    if cls is bool or cls is float or label is None:
        return label
    if cls is int:
        return label if -(10**15) < label < 10**15 else {"t": "int"}
    if cls is tuple and depth == 0:
        return [_label(part, lim, 1) for part in label[:8]]
    if _library_module(cls) in ("numpy", "pandas"):
        text = str(label)
        if type(text) is str:
            return {"t": _tname(cls), "s": _text(text, lim)}
    return {"t": _tname(cls)}


def _library_text(value: object, lim: dict) -> str:
    if _library_module(type(value)) is not None:
        text = str(value)
        if type(text) is str:
            return _text(text, lim)
    return _tname(type(value))


def _library_module(cls: type) -> str | None:
    module = _TYPE_MODULE(cls)
    if type(module) is not str:
        return None
    top = module.split(".", 1)[0]
    return top if top in _LIBRARY_MODULES else None


def _function_signature(func: types.FunctionType, bound: bool, lim: dict) -> str:
    """``(a, b=2, *args, c: int, **kw) -> str`` from the code object, defaults and
    annotations, rendering only values that are safe to render."""
    code = func.__code__
    if type(code) is not types.CodeType:
        return "(...)"
    names = code.co_varnames
    positional = code.co_argcount
    positional_only = getattr(code, "co_posonlyargcount", 0)
    keyword_only = code.co_kwonlyargcount
    defaults = func.__defaults__
    defaults = defaults if type(defaults) is tuple else ()
    kwdefaults = func.__kwdefaults__
    kwdefaults = kwdefaults if type(kwdefaults) is dict else {}
    annotations: dict = {}
    if sys.version_info < (3, 14):  # from 3.14 reading them runs the annotation code
        read = func.__annotations__
        annotations = read if type(read) is dict else {}
    parts = []
    first_default = positional - len(defaults)
    for i in range(positional):
        if not (bound and i == 0):
            part = names[i] + _annotation(annotations, names[i])
            if i >= first_default:
                default = _value(defaults[i - first_default])
                part += (" = " if part != names[i] else "=") + default
            parts.append(part)
        if positional_only and i == positional_only - 1 and not (bound and i == 0):
            parts.append("/")
    rest = positional + keyword_only
    if code.co_flags & _CO_VARARGS:
        parts.append("*" + names[rest] + _annotation(annotations, names[rest]))
        rest += 1
    elif keyword_only:
        parts.append("*")
    for i in range(positional, positional + keyword_only):
        part = names[i] + _annotation(annotations, names[i])
        if dict.__contains__(kwdefaults, names[i]):
            default = _value(dict.get(kwdefaults, names[i]))
            part += (" = " if part != names[i] else "=") + default
        parts.append(part)
    if code.co_flags & _CO_VARKEYWORDS:
        parts.append("**" + names[rest] + _annotation(annotations, names[rest]))
    text = "(" + ", ".join(parts) + ")"
    if dict.__contains__(annotations, "return"):
        returned = _annotation(annotations, "return")
        if returned:
            text += " ->" + returned[1:]
    return _text(text, lim)


def _annotation(annotations: dict, name: str) -> str:
    """``: int`` for a string or class annotation; nothing for anything else."""
    if not dict.__contains__(annotations, name):
        return ""
    value = dict.get(annotations, name)
    if type(value) is str:
        return ": " + value[:60]
    if _subclass_of(type(value), type):
        return ": " + _tname(value)
    if value is None:
        return ": None"
    return ""


def _value(value: object) -> str:
    """A default value, rendered only when it is a builtin scalar or a short string."""
    cls = type(value)
    if value is None or cls is bool or cls is float:
        return repr(value)
    if cls is int:
        return repr(value) if -(10**15) < value < 10**15 else "..."
    if cls is str:
        return repr(value) if len(value) <= 30 else repr(value[:27]) + "..."
    return "..."


def _builtin_signature(func: object, lim: dict) -> str:
    owner = func.__self__  # C getter of builtin functions
    if owner is not None and type(owner) is not types.ModuleType:
        return "(...)"  # a method bound to some object: inspect would look at it
    try:
        signature = inspect.signature(func)
    except (ValueError, TypeError):
        return "(...)"
    parts = []
    for parameter in signature.parameters.values():
        prefix = {inspect.Parameter.VAR_POSITIONAL: "*",
                  inspect.Parameter.VAR_KEYWORD: "**"}.get(parameter.kind, "")
        part = prefix + parameter.name
        if parameter.default is not inspect.Parameter.empty:
            part += "=" + _value(parameter.default)
        parts.append(part)
    return _text("(" + ", ".join(parts) + ")", lim)


def _class_signature(cls: type, lim: dict) -> str:
    """The parameters of the first ``__init__`` or ``__new__`` written in Python along
    the MRO, without ``self``; ``()`` when only ``object`` constructs it."""
    for base in _TYPE_MRO(cls):
        if base is object:
            return "()"
        namespace = _TYPE_DICT(base)
        for method in ("__init__", "__new__"):
            found = namespace.get(method)
            if found is None:
                continue
            if type(found) is staticmethod:  # __new__ is stored as one
                found = found.__func__
            if type(found) is types.FunctionType:
                return _function_signature(found, True, lim)
            return "(...)"
    return "(...)"


def _subclass_of(cls: type, base: type) -> bool:
    for each in _TYPE_MRO(cls):
        if each is base:
            return True
    return False


def _tname(cls: type) -> str:
    name = _TYPE_NAME(cls)
    return name if type(name) is str else "?"


def _text(text: object, lim: dict) -> str:
    if type(text) is not str:
        return "?"
    limit = lim["text"]
    return text if len(text) <= limit else text[: limit - 1] + "…"
