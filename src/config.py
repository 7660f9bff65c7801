"""Run configuration: one YAML file plus command-line overrides, as a read-only `Config`.

The YAML file IS the schema: every key it holds can be overridden from the command line, nested keys too
(`--train.batch_size 16` or `--train.batch_size=16`), and the type of each key is the type of its value in
the file (bool, int, float, str, list, or null = anything). There is no second list of defaults in code, so
the file cannot be silently overridden after it is read. `--config_path other.yaml` picks another file and
`--help` lists every key with its current value.

Keys that moved (MOVED_KEYS) are one error naming their new place, in a file or on the command line. Old
spellings (DEPRECATED_KEYS, DEPRECATED_VALUES) are translated as the file and the flags are read, with one
`WARNING:` line each, so the run only sees the new names. Then every value is checked against RULES (one error
naming the key and what it allows), before anything is written.

YAML is read with two fixes over PyYAML's 1.1 rules: only true/false (any case) are booleans (`yes`, `no`,
`on`, `off` stay strings) and `1e-5` is a float. A quoted "true"/"false" in the file is rejected.
"""
import copy
import difflib
import fnmatch
import json
import os
import re
import sys
import tempfile
from collections.abc import Mapping

import yaml

from src.errors import UserError

RESOLVED_NAME = "config_resolved.yaml"   # every run's resolved config, beside its outputs

_BOOL_TAG, _FLOAT_TAG = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"
_BOOL_RE = re.compile(r"^(?:true|false)$", re.IGNORECASE)
_EXP_FLOAT_RE = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


# Keys that moved to another section with the same meaning: a file or a --flag that still holds the old key is one
# error naming the new key (the run would otherwise fail later on an unknown key, or silently ignore it).
MOVED_KEYS = {
    "optim.lr": "train.lr",
    "optim.warmup_ratio": "train.warmup_ratio",
}
# Old spellings still read, with one WARNING line on stderr; the run only sees the new ones.
# Renamed keys: old key -> (new key in the same section, {old value: new value}).
# Keys added to a shipped config after users may have copied it: a --config_path file without one gets the run's
# own default value, with one WARNING line.
ADDED_KEYS = ("optim.loss_scale", "task.regression", "data.shuffle_buffer", "importance.rewire_supernet",
              "eval.length_buckets", "quant.weight_rowwise")
DEPRECATED_KEYS = {
    "loss.mask_padding": ("loss.padding", {True: "valid", False: "anchor"}),
    "train.width_matched_teacher": ("train.distill_from", {True: "narrowed_teacher", False: "teacher"}),
}
# Renamed values of a key: key -> {old value: new value}.
DEPRECATED_VALUES = {
    "loss.soft_ce_reduction": {"ce": "row_mean", "mean": "element_mean"},
}
_MISSING = object()


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _one_of(*allowed):
    return lambda v, section, data: v in allowed, " or ".join(allowed)


def _at_least(low):
    return lambda v, section, data: _num(v) and v >= low, f">= {low}"


def _above(low):
    return lambda v, section, data: _num(v) and v > low, f"> {low}"


def _within(low, high, open_low=False, open_high=False):
    def test(v, section, data):
        return _num(v) and (v > low if open_low else v >= low) and (v < high if open_high else v <= high)
    return test, f"in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"


def _buckets(v, section, data):
    return isinstance(v, list) and all(_num(b) and 1 <= b <= section["max_seq_length"] for b in v)


def _epochs(v, section, data):
    """>= 1, or 0 when the section's max_steps > 0 (then max_steps alone says how long the run trains)."""
    return _num(v) and (v >= 1 or (v == 0 and _num(section.get("max_steps")) and section["max_steps"] > 0))


def _clip_norm(v, section, data):
    return _num(v) and (v > 0 or section.get("clip_mode") == "none")


# Value rules, checked on every config after the overrides: (dotted-key patterns (fnmatch), test(value, its
# section, the whole config) -> bool, what the key allows, as the error says it). The first rule whose pattern
# matches a key decides; a key matching none is free; null values are not checked.
RULES = [
    (("loss.padding",), *_one_of("valid", "anchor")),
    (("loss.attention_heads",), *_one_of("each", "average")),
    (("loss.soft_ce_reduction",), *_one_of("row_mean", "element_mean")),
    (("train.distill_from",), *_one_of("teacher", "supernet", "narrowed_teacher")),
    (("optim.clip_mode",), *_one_of("global", "per_tensor", "none")),
    (("*batch_size",), *_at_least(1)),
    (("lr", "*.lr"), *_above(0)),
    (("*warmup_ratio",), *_within(0, 1)),
    (("*epochs",), _epochs, ">= 1 (or 0 with max_steps > 0: train max_steps steps)"),
    (("*max_steps",), *_at_least(0)),           # 0 = all epochs
    (("eval.every", "log_every", "checkpoint.every_steps"), *_at_least(0)),
    (("checkpoint.keep_last",), *_at_least(1)),
    (("threads",), *_at_least(0)),             # 0 = MindSpore's default
    (("data.max_seq_length", "data.shuffle_buffer"), *_at_least(1)),
    (("data.length_buckets",), _buckets, lambda section, data: "each bucket in [1, data.max_seq_length = "
                                                              f"{section['max_seq_length']}]"),
    (("*temperature",), *_above(0)),
    (("*weight_decay", "*end_lr"), *_at_least(0)),
    (("*.eps",), *_above(0)),
    (("*clip_norm",), _clip_norm, "> 0 (optim.clip_mode none turns clipping off)"),
    (("*loss_scale",), *_at_least(1)),
    (("loss.*_weight", "loss.lambda1", "loss.lambda2"), *_at_least(0)),
    (("quant.ema_decay",), *_within(0, 1, open_low=True, open_high=True)),
    (("quant.weight_clip", "quant.activation_clip"), *_at_least(0)),      # 0 = no clip
    (("quant.lat_iters",), *_at_least(1)),
    (("importance.max_batches", "latency.runs", "train.sample_widths", "pack.max_positions"), *_at_least(0)),
    (("*teacher_cache_max_gb",), *_above(0)),
    # the compression pipeline (configs/compress_*.yaml); export.format and vocab.single_chars are checked by the
    # pipeline against the lists its stages define
    (("ternary.distill_from",), *_one_of("teacher", "depth", "width")),
    (("width.target",), *_within(0, 1, open_low=True, open_high=True)),
    (("vocab.top_n", "report.latency_runs"), *_at_least(0)),
    (("export.seq_length",), *_at_least(1)),
]


class _Loader(yaml.SafeLoader):
    """SafeLoader with strict booleans, `1e-5` floats and an error on duplicate keys."""
    yaml_implicit_resolvers = {ch: [r for r in rs if r[0] != _BOOL_TAG]
                               for ch, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key_node.value}'",
                                                            key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


class _Dumper(yaml.SafeDumper):
    """Quotes every string that either PyYAML's or our loader would read as something else."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver(_BOOL_TAG, _BOOL_RE, list("tTfF"))
    _cls.add_implicit_resolver(_FLOAT_TAG, _EXP_FLOAT_RE, list("-+0123456789."))
_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


class Config(Mapping):
    """Read-only nested config: `cfg.train.batch_size`, `cfg["train"]`, `"train" in cfg`, `cfg.get(k, d)`.

    Lists come back as copies, so mutating them cannot change the config. Use `replace` for a changed copy.
    """
    __slots__ = ("_data",)

    def __init__(self, data: Mapping):
        object.__setattr__(self, "_data", {k: Config(v) if isinstance(v, Mapping) else copy.deepcopy(v)
                                           for k, v in data.items()})

    def __getitem__(self, key):
        value = self._data[key]
        return copy.deepcopy(value) if isinstance(value, list) else value

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            close = difflib.get_close_matches(name, [str(k) for k in self._data], n=3)
            raise AttributeError(f"config has no key '{name}'" + (f"; close: {', '.join(close)}" if close else ""))

    def __setattr__(self, name, value):
        raise AttributeError(f"Config is read-only (tried to set '{name}'); use cfg.replace(**{{'a.b': value}})")

    __delattr__ = __setattr__

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)

    def __repr__(self):
        return f"Config({self.to_dict()!r})"

    def __reduce__(self):   # pickle / deepcopy without going through the read-only __setattr__
        return Config, (self.to_dict(),)

    def to_dict(self) -> dict:
        """Plain nested dict (a deep copy)."""
        return {k: v.to_dict() if isinstance(v, Config) else copy.deepcopy(v) for k, v in self._data.items()}

    def replace(self, **dotted) -> "Config":
        """New Config with `{"train.epochs": 2, ...}` applied, type-checked like command-line values."""
        data = self.to_dict()
        for key, value in dotted.items():
            _set(data, key, value, label=key)
        return Config(data)


def _check(label, value, default, raw=None):
    """`value` converted to the type of `default`, or UserError. `raw` is the command-line text, if any."""
    def bad(expected):
        shown = raw if raw is not None else value
        return UserError(f"{label}: expected {expected}, got {shown!r}")

    if default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise bad("bool (true or false)")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad("int")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad("float")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        if isinstance(value, (bool, list, dict)) or (value is None and raw is None):
            raise bad("a string")
        return raw if raw is not None else str(value)
    if isinstance(default, list):
        if not isinstance(value, list):
            raise bad("a list, e.g. [1, 2] or 1 2")
        return [_check(f"{label}[{i}]", v, default[0]) for i, v in enumerate(value)] if default else value
    raise bad(type(default).__name__)


def _lookup(data: dict, key: str):
    """The value at dotted `key` of nested `data`, or _MISSING."""
    node = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _moved(key: str, known) -> tuple:
    """(message start, new keys) for a key of MOVED_KEYS, in a config whose dotted keys are `known`. Where the new
    key does not exist (a config with one schedule section per phase), the keys with the same name stand in."""
    new = MOVED_KEYS[key]
    leaf = new.rsplit(".", 1)[-1]
    targets = [new] if new in known else [k for k in known if k.rsplit(".", 1)[-1] == leaf] or [new]
    return f"{key} moved to {', '.join(targets)}", targets


def _set(data: dict, key: str, value, label: str, raw=None):
    """Set dotted `key` in nested `data` after checking `value` against the value already there."""
    parts, node = key.split("."), data
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            if key in MOVED_KEYS:
                text, targets = _moved(key, list(_keys(data)))
                flags = " or ".join(f"--{t}" for t in targets)
                raise UserError(f"{text}: pass {flags} instead of --{key}")
            raise UserError(f"{label}: unknown key{_suggest(data, key)}")
        if i < len(parts) - 1:
            node = node[part]
    default = node[parts[-1]]
    if isinstance(default, dict):
        raise UserError(f"{label}: is a section, not a value; set its keys, e.g. --{key}.{next(iter(default), '')}")
    node[parts[-1]] = _check(label, value, default, raw)


def _keys(data: dict, prefix=""):
    for k, v in data.items():
        yield from _keys(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]


def _suggest(data: dict, key: str) -> str:
    keys = list(_keys(data))
    leaf = key.rsplit(".", 1)[-1]
    close = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    close += [k for k in difflib.get_close_matches(key, keys, n=3) if k not in close]
    return f"; did you mean {', '.join('--' + k for k in close)}?" if close else "; run with --help to list keys"


def _parse_value(label: str, tokens, default):
    """Command-line tokens -> (python value, raw text). Lists also take `1 2 3` and `1,2,3`."""
    if not tokens:
        raise UserError(f"{label}: expected a value after the flag")
    text = " ".join(tokens)
    try:
        if isinstance(default, list) or (default is None and len(tokens) > 1):
            if len(tokens) == 1 and tokens[0].lstrip().startswith("["):
                return yaml.load(tokens[0], Loader=_Loader), text
            items = [t for t in re.split(r"[,\s]+", text) if t]
            if default:   # keep element text so a list of str gets '1' rather than 1
                return [_check(f"{label}[{i}]", yaml.load(t, Loader=_Loader), default[0], t)
                        for i, t in enumerate(items)], text
            return [yaml.load(t, Loader=_Loader) for t in items], text
        if len(tokens) > 1:
            raise UserError(f"{label}: expected one value, got {len(tokens)}: {text!r}")
        return yaml.load(text, Loader=_Loader), text
    except yaml.YAMLError as e:
        raise UserError(f"{label}: cannot parse {text!r} as a YAML value ({str(e).splitlines()[0]})") from None


def _parse_argv(argv):
    """argv -> (config_path or None, help?, [(key, value tokens)])."""
    path, want_help, items, i = None, False, [], 0
    while i < len(argv):
        tok = argv[i]
        if tok in ("-h", "--help"):
            want_help, i = True, i + 1
            continue
        if not tok.startswith("--") or len(tok) == 2:
            raise UserError(f"unexpected argument {tok!r}: expected --key value or --key=value")
        key, eq, val = tok[2:].partition("=")
        j = i + 1
        while not eq and j < len(argv) and not argv[j].startswith("--") and argv[j] != "-h":
            j += 1
        tokens, i = ([val] if eq else argv[i + 1:j]), j
        if key == "config_path":
            if len(tokens) != 1:
                raise UserError("--config_path: expected one YAML file path")
            path = tokens[0]
        else:
            items.append((key, tokens))
    return path, want_help, items


def _read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"config file '{path}' not found (--config_path)")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_Loader)
    except yaml.YAMLError as e:
        raise UserError(f"config file '{path}': invalid YAML: {e}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}': expected a mapping of keys at the top, got {type(data).__name__}")
    _reject_string_bools(data, path)
    return data


def _reject_string_bools(data: dict, path: str, prefix=""):
    for k, v in data.items():
        if isinstance(v, dict):
            _reject_string_bools(v, path, f"{prefix}{k}.")
        elif isinstance(v, str) and v.lower() in ("true", "false"):
            raise UserError(f"config file '{path}': {prefix}{k} is the string '{v}'; "
                            f"write a real boolean: {v.lower()} (unquoted)")


def _reject_moved(data: dict, path: str, default_yaml_path: str):
    """One error for the first old key of MOVED_KEYS the file holds, naming the new key in this file's (or the
    default file's) schema."""
    for old in MOVED_KEYS:
        if _lookup(data, old) is not _MISSING:
            known = set(_keys(data))
            if os.path.abspath(path) != os.path.abspath(default_yaml_path) and os.path.isfile(default_yaml_path):
                known |= set(_keys(_read_yaml(default_yaml_path)))
            text, _ = _moved(old, sorted(known - set(MOVED_KEYS)))
            raise UserError(f"{text}: rename it in config file '{path}'")


def _in_open(key: str, open_sections) -> bool:
    """True for a dotted key inside one of `open_sections` (sections whose keys are another config's)."""
    return any(key.startswith(s + ".") for s in open_sections)


def _require_default_keys(data: dict, path: str, default_yaml_path: str, open_sections=()):
    """A file given with --config_path must hold every key of the run's own config file (the YAML is the only
    list of defaults, so a missing key has no value): one error naming the missing keys and their shipped values,
    instead of a failure deep inside the run. Keys inside `open_sections` are the file's own."""
    if os.path.abspath(path) == os.path.abspath(default_yaml_path) or not os.path.isfile(default_yaml_path):
        return
    default = _read_yaml(default_yaml_path)
    _translate_deprecated(default, default_yaml_path)
    for key in ADDED_KEYS:
        if _lookup(data, key) is _MISSING and _lookup(default, key) is not _MISSING:
            _warn(f"config file '{path}' has no {key}; using {json.dumps(_lookup(default, key))} from "
                  f"{default_yaml_path}")
            *parents, leaf = key.split(".")
            section = data
            for part in parents:
                section = section.setdefault(part, {})
            section[leaf] = _lookup(default, key)
    missing = [k for k in _keys(default) if _lookup(data, k) is _MISSING and not _in_open(k, open_sections)]
    if missing:
        shown = ", ".join(f"{k} ({json.dumps(_lookup(default, k), default=str)})" for k in missing[:4])
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        raise UserError(f"config file '{path}' lacks {len(missing)} key(s) of {default_yaml_path}: {shown}{more}; "
                        f"start from a copy of that file")
    for key in _keys(default):                      # the file's values have the types of the run's own file
        if _in_open(key, open_sections):
            continue
        shipped = _lookup(default, key)
        if not isinstance(shipped, dict):
            _put(data, key, _check(f"{key} (config file '{path}')", _lookup(data, key), shipped))


def _warn(message: str):
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


def _yaml_text(value) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _new_value(label: str, value, values: dict):
    """The new spelling of a deprecated key's value (`values`: old -> new), or UserError naming the old values."""
    for old, new in values.items():
        if type(value) is type(old) and value == old:
            return new
    raise UserError(f"{label}: expected {' or '.join(_yaml_text(v) for v in values)}, got {value!r}")


def _put(data: dict, key: str, value, rename_to: str = None):
    """Set the existing dotted `key` to `value`; with `rename_to` (a key of the same section) under that name, at
    the same place in its section (a resolved file keeps the YAML's order)."""
    *parents, leaf = key.split(".")
    section = data
    for part in parents:
        section = section[part]
    new_leaf = rename_to.rsplit(".", 1)[-1] if rename_to else leaf
    items = list(section.items())
    section.clear()
    for k, v in items:
        section[new_leaf if k == leaf else k] = value if k == leaf else v


def _translate_deprecated(data: dict, path: str):
    """Old spellings in a config file -> the new ones, one WARNING line each."""
    for old, (new, values) in DEPRECATED_KEYS.items():
        value = _lookup(data, old)
        if value is _MISSING:
            continue
        if _lookup(data, new) is not _MISSING:
            raise UserError(f"config file '{path}' holds both {old} (deprecated) and {new}: keep {new} only")
        mapped = _new_value(f"config file '{path}': {old}", value, values)
        _put(data, old, mapped, rename_to=new)
        _warn(f"{old} is deprecated; use {new}: {mapped} (config file '{path}')")
    for key, values in DEPRECATED_VALUES.items():
        value = _lookup(data, key)
        if isinstance(value, str) and value in values:
            _put(data, key, values[value])
            _warn(f"{key}: {value} is deprecated; use {key}: {values[value]} (config file '{path}')")


def _leaves(data: dict, prefix: str = ""):
    """(dotted key, value, its section) of every value of nested `data`."""
    for k, v in data.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v, data


def _validate(data: dict, open_sections=()):
    """UserError for the first value a RULES entry refuses, naming the key and what it allows (keys inside
    `open_sections` are checked by the config they belong to)."""
    for key, value, section in _leaves(data):
        if _in_open(key, open_sections):
            continue
        rule = next((r for r in RULES if any(fnmatch.fnmatchcase(key, p) for p in r[0])), None)
        if rule is None or value is None:
            continue
        _, test, allowed = rule
        try:
            ok = bool(test(value, section, data))
        except (TypeError, KeyError):
            ok = False
        if not ok:
            allowed = allowed(section, data) if callable(allowed) else allowed
            raise UserError(f"{key} is {json.dumps(value, default=str)}; expected {allowed}")


def _help_comments(path: str) -> dict:
    """Dotted key -> comment at the end of its line (best effort: block-style mappings only)."""
    comments, stack = {}, []
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^(\s*)([\w.-]+):(.*)$", line)
            if not m:
                continue
            indent = len(m.group(1))
            stack = [(d, k) for d, k in stack if d < indent] + [(indent, m.group(2))]
            c = re.search(r"\s#\s?(.*)$", m.group(3))
            if c:
                comments[".".join(k for _, k in stack)] = c.group(1).strip()
    return comments


def load_config(default_yaml_path: str, argv=None, check_values: bool = True, open_sections=()) -> Config:
    """YAML (`--config_path` or `default_yaml_path`) + `--a.b.c VALUE` overrides -> Config. `--help` exits 0.
    `check_values=False` skips the value RULES: for a finished run's config_resolved.yaml, read to pack or report
    that run (it was checked by the rules of its day). `open_sections` (dotted section names, e.g. "depth.args")
    hold another config's keys: any key may be set there (created if new, typed like the value it replaces) and
    the config those keys belong to checks them."""
    argv = sys.argv[1:] if argv is None else list(argv)
    path, want_help, items = _parse_argv(argv)
    path = path or default_yaml_path
    data = _read_yaml(path)
    _reject_moved(data, path, default_yaml_path)
    _translate_deprecated(data, path)
    _require_default_keys(data, path, default_yaml_path, open_sections)
    for key, tokens in items:
        if _in_open(key, open_sections):
            _set_open(data, key, tokens)
            continue
        if key in DEPRECATED_KEYS and _lookup(data, key) is _MISSING:
            new, values = DEPRECATED_KEYS[key]
            value, raw = _parse_value(f"--{key}", tokens, next(iter(values)))
            mapped = _new_value(f"--{key}", value, values)
            _warn(f"--{key} {raw} is deprecated; use --{new} {mapped}")
            _set(data, new, mapped, f"--{new}")
            continue
        node = data
        for part in key.split(".")[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        default = node.get(key.rsplit(".", 1)[-1]) if isinstance(node, dict) else None
        value, raw = _parse_value(f"--{key}", tokens, default)
        old_values = DEPRECATED_VALUES.get(key, {})
        if isinstance(value, str) and value in old_values:
            _warn(f"--{key} {value} is deprecated; use --{key} {old_values[value]}")
            value = raw = old_values[value]
        _set(data, key, value, f"--{key}", raw)
    if want_help:
        comments = _help_comments(path)
        print(f"Keys of {path} (override with --key value):")
        for key in _keys(data):
            value = data
            for part in key.split("."):
                value = value[part]
            note = f"  # {comments[key]}" if key in comments else ""
            print(f"  --{key} = {json.dumps(value, default=str)}{note}")
        sys.exit(0)
    if check_values:
        _validate(data, open_sections)
    return Config(data)


def _set_open(data: dict, key: str, tokens):
    """`--key tokens` inside an open section: sections created as needed, the value typed like the one it
    replaces (a new key takes the YAML value of its text)."""
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        if not isinstance(node.get(part, {}), dict):
            raise UserError(f"--{key}: '{part}' is a value, not a section")
        node = node.setdefault(part, {})
    old = node.get(leaf)
    if isinstance(old, dict):
        raise UserError(f"--{key}: is a section, not a value; set its keys, e.g. --{key}.{next(iter(old), '')}")
    value, raw = _parse_value(f"--{key}", tokens, old)
    node[leaf] = _check(f"--{key}", value, old, raw)


def load_run_config(run_dir: str, expected: str, overrides=(), open_sections=()) -> Config:
    """A finished run's config_resolved.yaml (+ `--a.b VALUE` overrides) -> Config, for a tool that packs, reports or
    re-evaluates that run; the value rules are not applied again (see load_config). A missing file is one error
    naming it, `expected` saying what folder --run_dir should have been."""
    path = os.path.join(run_dir, RESOLVED_NAME)
    if not os.path.isfile(path):
        raise UserError(f"{path} missing: {expected}")
    return load_config(path, ["--config_path", path, *overrides], check_values=False, open_sections=open_sections)


def save_resolved(cfg: Config, out_dir: str, name: str = RESOLVED_NAME) -> str:
    """Write the resolved config as YAML (temp file + os.replace) and return its path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yaml.dump(cfg.to_dict(), f, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                      allow_unicode=True)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
