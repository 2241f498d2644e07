"""mmengine-style config files: ``Config.fromfile``, ``_base_`` merging and ``--cfg-options``.

A ``.py`` config is a Python file whose module-level variables form the config
(names starting with ``_``, modules, functions and classes are left out).
``.yaml``/``.yml`` and ``.json`` files with the same schema load too.

``_base_`` (a string or a list of strings) names files merged underneath, in
order.  A plain path is relative to the config's folder; ``scope::rel/path.py``
is a config shipped in ``dmcp/configs/<scope>/rel/path.py``.  Merging is
recursive for dicts; lists, tuples and scalars replace; a child dict holding
``_delete_=True`` replaces the base dict instead of merging into it.

Inside a ``.py`` config, ``_base_`` is the merged base config:

- reading (``model = dict(cfg=_base_.supernet)``) gives a fresh copy, so later
  changes to the child's value never leak into the base or into other reads;
- assigning through it (``_base_.optim_wrapper = dict(...)``,
  ``_base_.train_cfg.max_epochs = 3``, ``del _base_.x``, or calling a method
  on it as a statement, ``_base_.custom_hooks.append(...)``) changes the base
  value that later reads and the final merge see.  Such a top-level statement
  runs with ``_base_`` bound to the base itself; every other statement sees
  the copying reader.  The file is executed one top-level statement at a time
  to make that switch; nothing is rewritten.

The child's own variables are then merged over the (possibly changed) base.
The loaded config holds no shared objects: every dict is a fresh ``ConfigDict``.
"""
import ast
import copy
import difflib
import inspect
import json
import keyword
import math
import numbers
import os
import types

try:
    import yaml
except ImportError:  # PyYAML is only needed for .yaml configs
    yaml = None

__all__ = ["UserError", "ConfigError", "ConfigDict", "Config", "parse_cfg_options", "check_option_keys",
           "check_keys", "signature_keys", "strip_scope", "build", "RUNTIME_KEYS", "load_config"]

BASE_KEY = "_base_"
DELETE_KEY = "_delete_"
PY_EXTS = (".py",)
YAML_EXTS = (".yaml", ".yml")
JSON_EXTS = (".json",)
SUPPORTED_EXTS = PY_EXTS + YAML_EXTS + JSON_EXTS

# Configs shipped with the package: ``mmcls::_base_/x.py`` -> configs/mmcls/_base_/x.py
PACKAGE_CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

_LINE_WIDTH = 79


class UserError(Exception):
    """A mistake in what the user supplied (config, JSON, data): the message
    names the file/key/value at fault; tools print it without a traceback."""


class ConfigError(Exception):
    """A config that cannot be loaded, merged or written; the message names the file/key."""


# Top-level keys a config may leave out and still set with --cfg-options: what dmcp's
# runner and tools read, plus the rest of mmengine's Runner arguments, so mmcls/mmrazor
# command lines keep working.  A config's own variables need no entry: they are in it.
RUNTIME_KEYS = frozenset({
    # read by dmcp (runner, data, flops, tools)
    "model", "work_dir", "train_dataloader", "val_dataloader", "test_dataloader",
    "data_preprocessor", "optim_wrapper", "param_scheduler", "train_cfg", "default_hooks",
    "custom_hooks", "randomness", "load_from", "resume",
    # the rest of mmengine's Runner arguments
    "val_cfg", "test_cfg", "launcher", "env_cfg", "log_level", "default_scope", "val_evaluator",
    "test_evaluator", "auto_scale_lr", "log_processor", "visualizer", "vis_backends",
    "experiment_name", "model_wrapper_cfg",
})


def _did_you_mean(name, choices):
    hint = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def check_keys(kind, given, allowed):
    """Every key of ``given`` must be in ``allowed``; else a UserError naming ``kind``
    (the type as the config wrote it), the unknown keys with the nearest accepted one,
    and every accepted key."""
    allowed = sorted(set(allowed))
    bad = [k for k in given if k not in allowed]
    if not bad:
        return
    named = ", ".join(f"{k!r}{_did_you_mean(k, allowed)}" for k in bad)
    raise UserError(f"{kind}: unknown key{'s' if len(bad) > 1 else ''} {named}; accepted keys: "
                    f"{', '.join(allowed) or 'none'}")


def signature_keys(func, internal=()):
    """The keyword arguments ``func`` takes from a config: its named parameters less
    ``self`` and the ``internal`` ones the builder passes itself."""
    return [name for name, p in inspect.signature(func).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and name != "self" and name not in internal]


# ---------------------------------------------------------------------------
# Registries: one builder for every kind of object a config names
# ---------------------------------------------------------------------------

def strip_scope(name):
    """A type name without its mmengine scope: ``mmcls.LabelSmoothLoss`` and
    ``mmrazor.DMCPDDP`` name dmcp's ``LabelSmoothLoss`` and ``DMCPDDP``."""
    return name.split(".")[-1] if isinstance(name, str) else name


def build(registry, cfg, where, *args, what="", default=None, internal=(), **kwargs):
    """``registry[type](*args, **cfg, **kwargs)``: mmengine's ``build_from_cfg``, strict.

    ``registry`` maps type names to classes or factory functions; ``cfg`` is a dict
    whose ``type`` (``default`` when it has none) may carry a scope, as may a
    ``_scope_`` key: both are ignored.  An unknown type is a UserError naming
    ``where`` with a did-you-mean and the known types (``what`` says what kind of
    type: "loss", "dataset", ...).  Every other key must be a parameter of the
    factory that neither the positional ``args`` nor the builder's ``kwargs``
    fill and that is not ``internal`` (left to the factory's default), and every
    parameter without a default must be given; both mistakes
    name ``where (type)`` and the key.  A factory with a ``where`` parameter
    gets ``'where (type)'`` for its own messages; one taking ``**kwargs``
    checks the keys they swallow itself."""
    if not isinstance(cfg, dict):
        raise UserError(f"{where}: expected a dict(type=...), got {cfg!r}")
    cfg = dict(cfg)
    cfg.pop("_scope_", None)
    kind = strip_scope(cfg.pop("type", default))
    what = f"{what} type" if what else "type"
    if kind is None:
        raise UserError(f"{where}: missing 'type' (one of {', '.join(sorted(registry))})")
    if not isinstance(kind, str) or kind not in registry:
        raise UserError(f"{where}: unknown {what} {kind!r}{_did_you_mean(kind, registry)}; "
                        f"known: {', '.join(sorted(registry))}")
    factory = registry[kind]
    where = f"{where} ({kind})"
    params = [p for p in inspect.signature(factory).parameters.values() if p.name != "self"]
    if any(p.name == "where" for p in params):
        kwargs["where"] = where
    filled = set(kwargs) | set(internal) | {p.name for p in params[:len(args)]}
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
             and p.name not in filled]
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        check_keys(where, cfg, [p.name for p in named])
    for p in named:
        if p.default is p.empty and p.name not in cfg:
            raise UserError(f"{where}: {p.name!r} is required")
    return factory(*args, **cfg, **kwargs)


def check_option_keys(cfg, options):
    """Each ``--cfg-options`` key must start at a top-level key the config defines or
    one in RUNTIME_KEYS: a misspelt ``trian_cfg.max_epochs=1`` would be set and never read."""
    known = set(cfg) | RUNTIME_KEYS
    for key in options:
        top = key.split(".")[0]
        if top not in known:
            raise ConfigError(f"--cfg-options {key}: {top!r} is neither a key of the config nor "
                              f"one the runner reads{_did_you_mean(top, sorted(known))}")


# ---------------------------------------------------------------------------
# ConfigDict
# ---------------------------------------------------------------------------

def _convert(value):
    """Nested dicts become ConfigDicts; lists are converted in place, tuples rebuilt."""
    if isinstance(value, ConfigDict):
        return value
    if isinstance(value, dict):
        return ConfigDict(value)
    if isinstance(value, list):
        for i, item in enumerate(value):
            new = _convert(item)
            if new is not item:
                value[i] = new
        return value
    if isinstance(value, tuple) and type(value) is tuple:
        new = tuple(_convert(item) for item in value)
        return value if all(a is b for a, b in zip(new, value)) else new
    return value


def _missing_key(container, name):
    keys = [k for k in container if isinstance(k, str)]
    return AttributeError(f"config has no key {name!r}{_did_you_mean(name, keys)}")


class ConfigDict(dict):
    """A dict with attribute access: ``cfg.model.backbone.depth``.

    Nested dicts (also inside lists and tuples) are ConfigDicts: converted on
    assignment, and on access for dicts added behind its back (list.append).
    """

    def __init__(self, *args, **kwargs):
        super().__init__()
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __setitem__(self, key, value):
        super().__setitem__(key, _convert(value))

    def __getitem__(self, key):
        value = super().__getitem__(key)
        new = _convert(value)
        if new is not value:
            super().__setitem__(key, new)
        return new

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise _missing_key(self, name) from None

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        try:
            del self[name]
        except KeyError:
            raise _missing_key(self, name) from None

    def __dir__(self):
        keys = [k for k in self if isinstance(k, str) and k.isidentifier()]
        return list(super().__dir__()) + keys

    def get(self, key, default=None):
        return self[key] if key in self else default

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args, **kwargs):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def pop(self, key, *default):
        return _convert(super().pop(key, *default))

    def items(self):
        for key in self:
            self[key]  # convert stragglers before handing out the view
        return super().items()

    def values(self):
        self.items()
        return super().values()

    def copy(self):
        return ConfigDict(self)

    def __copy__(self):
        return ConfigDict(self)

    def __deepcopy__(self, memo):
        out = ConfigDict()
        memo[id(self)] = out
        for key, value in super().items():
            dict.__setitem__(out, copy.deepcopy(key, memo), _convert(copy.deepcopy(value, memo)))
        return out

    def to_dict(self):
        """Plain dicts all the way down (lists and tuples kept)."""
        return _plain(self)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in dict.items(value)}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def _fresh(value):
    """A deep copy sharing nothing, with dicts as ConfigDicts and ``_delete_`` keys dropped."""
    if isinstance(value, dict):
        out = ConfigDict()
        for key, item in dict.items(value):
            if key != DELETE_KEY:
                dict.__setitem__(out, key, _fresh(item))
        return out
    if isinstance(value, list):
        return [_fresh(v) for v in value]
    if isinstance(value, tuple) and type(value) is tuple:
        return tuple(_fresh(v) for v in value)
    return copy.deepcopy(value)


def _merge(child, base):
    """``child`` merged over ``base`` (neither is modified): dicts merge key by key,
    a child dict with ``_delete_=True`` replaces, everything else replaces."""
    out = ConfigDict()
    for key, value in dict.items(base):
        dict.__setitem__(out, key, value)
    for key, value in dict.items(child):
        old = dict.get(out, key)
        if isinstance(value, dict) and isinstance(old, dict) and not value.get(DELETE_KEY, False):
            value = _merge(value, old)
        dict.__setitem__(out, key, value)
    return out


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

class _BaseReader:
    """``_base_`` as a reading statement sees it: every value is a fresh copy."""

    __slots__ = ("_live",)

    def __init__(self, live):
        object.__setattr__(self, "_live", live)

    def __getattr__(self, name):
        if name.startswith("__") or name == "_live":   # copy/pickle probing a bare instance
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"_base_ has no key {name!r}") from None

    def __deepcopy__(self, memo):     # a bound method of _base_ kept in a config value
        return _BaseReader(_fresh(self._live))

    def __getitem__(self, key):
        return _fresh(self._live[key])

    def __setattr__(self, name, value):  # top-level writes still reach the base
        self._live[name] = value

    def __setitem__(self, key, value):
        self._live[key] = value

    def __contains__(self, key):
        return key in self._live

    def __iter__(self):
        return iter(list(self._live))

    def __len__(self):
        return len(self._live)

    def keys(self):
        return list(self._live)

    def get(self, key, default=None):
        return self[key] if key in self._live else default

    def items(self):
        return [(k, self[k]) for k in self._live]

    def values(self):
        return [self[k] for k in self._live]

    def __repr__(self):
        return f"_base_({dict.__repr__(self._live)})"


def _rooted_at_base(node):
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return isinstance(node, ast.Name) and node.id == BASE_KEY


def _writes_base(stmt):
    """Does this top-level statement assign into ``_base_`` (``_base_.a.b = v``,
    ``_base_.a += v``, ``del _base_.a``, ``_base_.hooks.append(v)``)?"""
    for node in ast.walk(stmt):
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            func = node.value.func
            if isinstance(func, ast.Attribute) and _rooted_at_base(func.value):
                return True
            continue
        else:
            continue
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, (ast.Attribute, ast.Subscript)) and _rooted_at_base(sub):
                    return True
    return False


def _split_base_assignment(tree, path):
    """Find the top-level ``_base_ = ...``; return (base names or None, the other statements)."""
    bases, body, base_stmt = None, [], None
    for stmt in tree.body:
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name) and stmt.targets[0].id == BASE_KEY
                and base_stmt is None):
            base_stmt = stmt
            try:
                bases = ast.literal_eval(stmt.value)
            except ValueError:
                bases = None
            if isinstance(bases, str):
                bases = [bases]
            if not (isinstance(bases, (list, tuple)) and all(isinstance(b, str) for b in bases)):
                raise ConfigError(f"{path}:{stmt.lineno}: _base_ must be a string or a list of "
                                  f"strings written literally")
            bases = list(bases)
        else:
            body.append(stmt)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Name) and node.id == BASE_KEY and isinstance(node.ctx, ast.Store)
                and (base_stmt is None or node is not base_stmt.targets[0])):
            raise ConfigError(f"{path}:{node.lineno}: _base_ may only be assigned once, "
                              f"at the top level, as `_base_ = [...]`")
    return bases, body


def _error_line(exc, path):
    line, tb = "?", exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == path:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _is_config_value(name, value):
    return not name.startswith("_") and not isinstance(
        value, (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type))


def _read_text(path):
    """A config file's text; a file that is not UTF-8 is a ConfigError naming the byte."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def _load_py(path, stack):
    source = _read_text(path)
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno}: invalid syntax: {e.msg}") from None
    bases, body = _split_base_assignment(tree, path)
    base = _load_bases(path, bases, stack) if bases is not None else None

    env = {"__file__": os.path.abspath(path), "__name__": "__dmcp_config__"}
    reader = _BaseReader(base) if base is not None else None
    for stmt in body:
        try:
            code = compile(ast.Module(body=[stmt], type_ignores=[]), path, "exec")
        except SyntaxError as e:
            raise ConfigError(f"{path}:{e.lineno}: invalid syntax: {e.msg}") from None
        if base is not None:
            env[BASE_KEY] = base if _writes_base(stmt) else reader
        try:
            exec(code, env)
        except ConfigError:
            raise
        except SystemExit as e:     # sys.exit(0) in a config must not end the tool silently
            raise ConfigError(f"{path}:{_error_line(e, path)}: the config exited "
                              f"(sys.exit({e.code!r})) while being read") from None
        except Exception as e:
            raise ConfigError(f"{path}:{_error_line(e, path)}: {type(e).__name__}: {e}") from None
    own = {k: v for k, v in env.items() if _is_config_value(k, v)}
    return _fresh(_merge(own, base if base is not None else {}))


MAX_CONFIG_NODES = 1_000_000
MAX_CONFIG_DEPTH = 100


def _check_tree(data, path):
    """A loaded YAML/JSON tree must be finite and of config size once its aliases are
    expanded: a self-referencing anchor, nesting deeper than MAX_CONFIG_DEPTH or more
    than MAX_CONFIG_NODES values (an alias bomb) is a ConfigError, found after at
    most that many steps."""
    count = 0
    todo = [(data, 1, ())]
    while todo:
        value, depth, open_ids = todo.pop()
        count += 1
        if count > MAX_CONFIG_NODES:
            raise ConfigError(f"{path}: expands to more than {MAX_CONFIG_NODES} values once its "
                              f"YAML aliases are followed (an alias bomb?)")
        if not isinstance(value, (dict, list, tuple)):
            continue
        if id(value) in open_ids:
            raise ConfigError(f"{path}: a YAML anchor refers to itself (the config would be "
                              f"infinite)")
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"{path}: nested deeper than {MAX_CONFIG_DEPTH} levels")
        inner = open_ids + (id(value),)
        items = value.values() if isinstance(value, dict) else value
        todo.extend((v, depth + 1, inner) for v in items)


def _load_data(path, stack):
    """A .yaml/.yml/.json config: a mapping, optionally with a ``_base_`` key."""
    text = _read_text(path)
    if path.endswith(JSON_EXTS):
        try:
            data = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        except RecursionError:
            raise ConfigError(f"{path}: nested deeper than {MAX_CONFIG_DEPTH} levels") from None
    else:
        if yaml is None:
            raise ConfigError(f"{path}: PyYAML is needed to read .yaml configs")
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        try:
            data = yaml.load(text, Loader=loader)
        except RecursionError:
            raise ConfigError(f"{path}: nested deeper than {MAX_CONFIG_DEPTH} levels") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).replace("\n", " ")
            raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
        if data is None:
            data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    _check_tree(data, path)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return _fresh(data)
    if isinstance(bases, str):
        bases = [bases]
    if not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"{path}: _base_ must be a string or a list of strings")
    return _fresh(_merge(data, _load_bases(path, bases, stack)))


def _resolve_base(ref, name):
    """Path of base ``name`` referenced from config file ``ref``."""
    if "::" in name:
        scope, rel = name.split("::", 1)
        scope_dir = os.path.join(PACKAGE_CONFIG_DIR, scope)
        if not os.path.isdir(scope_dir):
            shipped = sorted(d for d in os.listdir(PACKAGE_CONFIG_DIR)
                             if os.path.isdir(os.path.join(PACKAGE_CONFIG_DIR, d))) \
                if os.path.isdir(PACKAGE_CONFIG_DIR) else []
            raise ConfigError(f"{ref}: _base_ {name!r}: unknown config scope {scope!r} "
                              f"(shipped: {', '.join(shipped) or 'none'})")
        path = os.path.join(scope_dir, rel)
    else:
        path = os.path.join(os.path.dirname(ref), os.path.expanduser(name))
    path = os.path.normpath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"{ref}: _base_ file not found: {name!r} (looked for {path})")
    return path


def _load_bases(ref, names, stack):
    merged = ConfigDict()
    for name in names:
        path = _resolve_base(ref, name)
        real = os.path.realpath(path)
        if real in stack:
            chain = " -> ".join(stack + [real])
            raise ConfigError(f"{ref}: circular _base_: {chain}")
        merged = _merge(_load(path, stack + [real]), merged)
    return merged


def _load(path, stack):
    ext = os.path.splitext(path)[1].lower()
    if ext not in SUPPORTED_EXTS:
        raise ConfigError(f"{path}: unsupported config file extension {ext or '(none)'!r} "
                          f"(use .py, .yaml, .yml or .json)")
    if ext in PY_EXTS:
        return _load_py(path, stack)
    return _load_data(path, stack)


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------

def _is_kwarg(key):
    return isinstance(key, str) and key.isidentifier() and not keyword.iskeyword(key)


def _scalar_text(value, where):
    if value is None or isinstance(value, (bool, str)):
        return repr(value)
    if isinstance(value, numbers.Integral):
        return repr(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        return repr(value) if math.isfinite(value) else f"float('{value}')"
    raise ConfigError(f"cannot write {where!r} = {value!r} ({type(value).__name__}) "
                      f"to a .py config")


def _inline_text(value, where):
    if isinstance(value, dict):
        if all(_is_kwarg(k) for k in value):
            return "dict(" + ", ".join(f"{k}={_inline_text(v, f'{where}.{k}')}"
                                       for k, v in dict.items(value)) + ")"
        return "{" + ", ".join(f"{_scalar_text(k, where)}: {_inline_text(v, f'{where}.{k}')}"
                               for k, v in dict.items(value)) + "}"
    if isinstance(value, (list, tuple)):
        items = [_inline_text(v, f"{where}.{i}") for i, v in enumerate(value)]
        if isinstance(value, list):
            return "[" + ", ".join(items) + "]"
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    return _scalar_text(value, where)


def _value_text(value, indent, used, where):
    """``value`` as Python source starting at column ``indent + used``, wrapped at 79 columns."""
    text = _inline_text(value, where)
    if (indent + used + len(text) < _LINE_WIDTH or not isinstance(value, (dict, list, tuple))
            or len(value) == 0):
        return text
    inner = indent + 4
    if isinstance(value, dict) and all(_is_kwarg(k) for k in value):
        opening, closing = "dict(", ")"
        items = [f"{k}=" + _value_text(v, inner, len(k) + 1, f"{where}.{k}")
                 for k, v in dict.items(value)]
    elif isinstance(value, dict):
        opening, closing = "{", "}"
        items = []
        for k, v in dict.items(value):
            key = _scalar_text(k, where) + ": "
            items.append(key + _value_text(v, inner, len(key), f"{where}.{k}"))
    else:
        opening, closing = ("[", "]") if isinstance(value, list) else ("(", ")")
        items = [_value_text(v, inner, 0, f"{where}.{i}") for i, v in enumerate(value)]
        if not any(isinstance(v, (dict, list, tuple)) for v in value):
            items = _fill(items, _LINE_WIDTH - inner)  # scalars: several to a line
    pad = " " * inner
    return opening + "\n" + "".join(f"{pad}{item},\n" for item in items) + " " * indent + closing


def _fill(items, width):
    """Join scalar items into lines of at most ``width`` columns (``a, b, c``, no final comma)."""
    lines = [items[0]]
    for item in items[1:]:
        if len(lines[-1]) + 2 + len(item) + 1 <= width:
            lines[-1] += ", " + item
        else:
            lines.append(item)
    return lines


def _py_text(cfg):
    lines = []
    for key, value in dict.items(cfg):
        if not _is_kwarg(key) or key.startswith("_"):
            raise ConfigError(f"cannot write top-level key {key!r} to a .py config "
                              f"(not a public Python name); dump to .json or .yaml instead")
        lines.append(f"{key} = {_value_text(value, 0, len(key) + 3, key)}")
    return "\n".join(lines) + "\n"


def _json_ready(value):
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in dict.items(value)}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------

class Config:
    """A loaded config: attribute and item access to its top-level keys."""

    def __init__(self, cfg_dict=None, filename=None):
        if cfg_dict is None:
            cfg_dict = {}
        if not isinstance(cfg_dict, dict):
            raise TypeError(f"Config expects a dict, got {type(cfg_dict).__name__}")
        object.__setattr__(self, "_cfg_dict", _fresh(cfg_dict))
        object.__setattr__(self, "_filename", None if filename is None else os.fspath(filename))

    @classmethod
    def fromfile(cls, filename):
        """Load a .py/.yaml/.yml/.json config with its ``_base_`` files merged in."""
        path = os.path.normpath(os.path.expanduser(os.fspath(filename)))
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        return cls(_load(path, [os.path.realpath(path)]), filename=path)

    @property
    def filename(self):
        return self._filename

    @property
    def pretty_text(self):
        """The config as a .py file that ``fromfile`` reads back to the same values."""
        return _py_text(self._cfg_dict)

    def to_dict(self):
        return _plain(self._cfg_dict)

    def dump(self, file=None):
        """Write to ``file`` (.py, .json, .yaml/.yml by extension); without a file,
        return the .py text."""
        if file is None:
            return self.pretty_text
        file = os.fspath(file)
        ext = os.path.splitext(file)[1].lower()
        if ext in PY_EXTS:
            text = self.pretty_text
        elif ext in JSON_EXTS:
            try:
                text = json.dumps(_json_ready(self._cfg_dict), indent=4) + "\n"
            except TypeError as e:
                raise ConfigError(f"{file}: cannot write config as JSON: {e}") from None
        elif ext in YAML_EXTS:
            if yaml is None:
                raise ConfigError(f"{file}: PyYAML is needed to write .yaml configs")
            dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
            try:
                text = yaml.dump(_json_ready(self._cfg_dict), Dumper=dumper, sort_keys=False,
                                 default_flow_style=False)
            except yaml.YAMLError as e:
                raise ConfigError(f"{file}: cannot write config as YAML: {e}") from None
        else:
            raise ConfigError(f"{file}: unsupported config file extension {ext or '(none)'!r} "
                              f"(use .py, .yaml, .yml or .json)")
        with open(file, "w", encoding="utf-8") as f:
            f.write(text)
        return None

    def merge_from_dict(self, options):
        """Apply ``{'a.b.c': value}`` overrides (as from ``parse_cfg_options``).

        A numeric path component indexes a list or tuple
        (``custom_hooks.0.subnet_sample_num``); missing dict keys are created;
        a dict value merges into an existing dict (``_delete_=True`` replaces).
        """
        for key, value in options.items():
            if not isinstance(key, str) or not key or any(p == "" for p in key.split(".")):
                raise ConfigError(f"bad config option key {key!r}")
            _set_path(self._cfg_dict, key.split("."), value, key, 0)

    # -- dict-like access ---------------------------------------------------
    def __getattr__(self, name):
        cfg = self.__dict__.get("_cfg_dict")
        if cfg is None:
            raise AttributeError(name)
        return getattr(cfg, name)

    def __setattr__(self, name, value):
        self._cfg_dict[name] = value

    def __delattr__(self, name):
        delattr(self._cfg_dict, name)

    def __getitem__(self, key):
        return self._cfg_dict[key]

    def __setitem__(self, key, value):
        self._cfg_dict[key] = value

    def __delitem__(self, key):
        del self._cfg_dict[key]

    def __contains__(self, key):
        return key in self._cfg_dict

    def __iter__(self):
        return iter(self._cfg_dict)

    def __len__(self):
        return len(self._cfg_dict)

    def keys(self):
        return self._cfg_dict.keys()

    def values(self):
        return self._cfg_dict.values()

    def items(self):
        return self._cfg_dict.items()

    def get(self, key, default=None):
        return self._cfg_dict.get(key, default)

    def __copy__(self):
        return Config(self._cfg_dict, self._filename)

    def __deepcopy__(self, memo):
        return Config(self._cfg_dict, self._filename)

    def __repr__(self):
        return f"Config (path: {self._filename}): {dict.__repr__(self._cfg_dict)}"


def _merged_option(value, old):
    """An option's dict value merges into the dict it lands on, unless it holds ``_delete_``."""
    if isinstance(value, dict) and isinstance(old, dict) and not value.get(DELETE_KEY, False):
        return _merge(value, old)
    return value


def _set_path(node, parts, value, full_key, depth):
    """Set ``parts`` under ``node``; returns the node to store in its parent
    (a new tuple when an item of a tuple changed)."""
    key, where = parts[0], ".".join(full_key.split(".")[:depth])
    last = len(parts) == 1
    if isinstance(node, dict):
        if last:
            node[key] = _fresh(_merged_option(value, node.get(key)))
        else:
            child = node[key] if key in node else ConfigDict()
            node[key] = _set_path(child, parts[1:], value, full_key, depth + 1)
        return node
    if isinstance(node, (list, tuple)):
        kind = type(node).__name__
        if not key.isdigit():
            raise ConfigError(f"cannot set option {full_key!r}: {where!r} is a {kind}, "
                              f"so {key!r} must be an index")
        index = int(key)
        if index >= len(node):
            raise ConfigError(f"cannot set option {full_key!r}: index {index} out of range, "
                              f"{where!r} is a {kind} of length {len(node)}")
        items = node if isinstance(node, list) else list(node)
        if last:
            items[index] = _fresh(_merged_option(value, items[index]))
        else:
            items[index] = _set_path(items[index], parts[1:], value, full_key, depth + 1)
        return items if isinstance(node, list) else tuple(items)
    raise ConfigError(f"cannot set option {full_key!r}: {where!r} is {node!r} "
                      f"({type(node).__name__}), not a dict or list")


# ---------------------------------------------------------------------------
# --cfg-options
# ---------------------------------------------------------------------------

_CLOSING = {"[": "]", "(": ")"}


def _split_top(text):
    """Split at commas outside brackets and quotes; raises ValueError on unbalanced text."""
    parts, start, stack, quote = [], 0, [], None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in _CLOSING:
            stack.append(_CLOSING[ch])
        elif ch in ")]":
            if not stack or stack.pop() != ch:
                raise ValueError(f"unbalanced brackets in {text!r}")
        elif ch == "," and not stack:
            parts.append(text[start:i])
            start = i + 1
    if stack:
        raise ValueError(f"unbalanced brackets in {text!r}")
    if quote:
        raise ValueError(f"unclosed quote in {text!r}")
    parts.append(text[start:])
    return parts


def _closing_index(text):
    """Index of the bracket closing ``text[0]``, or -1."""
    stack, quote = [], None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in _CLOSING:
            stack.append(_CLOSING[ch])
        elif ch in ")]":
            if not stack or stack.pop() != ch:
                return -1
            if not stack:
                return i
    return -1


def _parse_items(text):
    parts = [p.strip() for p in _split_top(text)]
    if parts and parts[-1] == "":  # trailing comma: (1,) or [] or 1,
        parts.pop()
    if any(p == "" for p in parts):
        raise ValueError(f"empty item in {text!r}")
    return [_parse_value(p) for p in parts]


def _parse_atom(text):
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text == "None":
        return None
    return text


def _parse_value(text):
    text = text.strip()
    if text[:1] in _CLOSING and _closing_index(text) == len(text) - 1:
        items = _parse_items(text[1:-1])
        return items if text[0] == "[" else tuple(items)
    if len(_split_top(text)) > 1:
        return _parse_items(text)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return _parse_atom(text)


def parse_cfg_options(options):
    """``['a.b=1', 'k=[1,(2,3)]']`` -> ``{'a.b': 1, 'k': [1, (2, 3)]}``, as mmengine's DictAction.

    Values: int, float, ``True``/``False`` (any case), ``None``, ``[..]`` lists,
    ``(..)`` tuples, ``a,b`` comma lists, nested brackets; quotes make a string
    (``'1'`` stays the string ``1``); anything else is a string.
    """
    result = {}
    for option in options or []:
        if "=" not in option:
            raise ConfigError(f"--cfg-options: expected KEY=VALUE, got {option!r}")
        key, text = option.split("=", 1)
        key = key.strip()
        if not key or any(p == "" for p in key.split(".")):
            raise ConfigError(f"--cfg-options: bad key in {option!r}")
        try:
            result[key] = _parse_value(text)
        except ValueError as e:
            raise ConfigError(f"--cfg-options {key}: {e}") from None
    return result


def load_config(path, options=None):
    """A config file with ``--cfg-options`` (mmengine syntax, top-level keys checked) merged in."""
    cfg = Config.fromfile(path)
    if options:
        options = parse_cfg_options(options)
        check_option_keys(cfg, options)
        cfg.merge_from_dict(options)
    return cfg
