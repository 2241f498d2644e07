"""Weights in and out: PyTorch ``.pth`` state dicts read without PyTorch,
torchvision -> mmcls key mapping, loading into a model with shape checks, and
the runner's training checkpoints (saving, and resuming with their meta, RNG
state and optimizer state checked).

A ``.pth`` written by ``torch.save`` is a zip archive holding ``data.pkl`` (a
pickle whose tensors refer to storages by key) and ``data/<key>`` (the raw
little-endian bytes of each storage).  The unpickler below rebuilds tensors as
NumPy arrays and refuses every other global it does not know.
"""
import json
import os
import pickle
import re
import tokenize
import zipfile
import zlib
from collections import OrderedDict

import numpy as np

from .config import UserError
from .optim import keeps_state, load_optimizer_state, optimizer_state
from .units import cfg_number

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "BFloat16Storage": None,
}


_SAFE_BUILTINS = {"set": set, "frozenset": frozenset, "dict": dict, "list": list, "tuple": tuple,
                  "int": int, "float": float, "str": str}


class _Placeholder:
    """Stands in for any pickled object that is not part of a state dict."""

    def __init__(self, *args, **kwargs):
        pass

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __setstate__(self, state):
        pass

    def __call__(self, *args, **kwargs):
        return _Placeholder()


class _StorageType:
    def __init__(self, name):
        self.name = name


def _rebuild_tensor(storage, offset, size, stride, *unused):
    """The tensor (offset, size, stride) views in storage, copied; every element it
    would read must lie inside the storage (a crafted file cannot read stray memory)."""
    if not isinstance(storage, np.ndarray):
        raise pickle.UnpicklingError(f"tensor storage is a {type(storage).__name__}, not a storage")
    try:
        offset = int(offset)
        size, stride = tuple(int(v) for v in size), tuple(int(v) for v in stride)
    except (TypeError, ValueError):
        raise pickle.UnpicklingError(f"tensor offset/size/stride are not integers: "
                                     f"{offset!r} {size!r} {stride!r}") from None
    if len(stride) != len(size) or offset < 0 or any(v < 0 for v in size + stride):
        raise pickle.UnpicklingError(f"tensor size {size} / stride {stride} / offset {offset} "
                                     f"are inconsistent")
    if not size:
        if offset >= storage.size:
            raise pickle.UnpicklingError(f"scalar tensor at {offset} lies outside its storage of "
                                         f"{storage.size} elements")
        return storage[offset:offset + 1].reshape(()).copy()
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * st for n, st in zip(size, stride))
    if last >= storage.size:
        raise pickle.UnpicklingError(f"tensor of size {size} and stride {stride} at offset "
                                     f"{offset} reads element {last} of a storage of "
                                     f"{storage.size}")
    item = storage.itemsize
    return np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=tuple(st * item for st in stride)).copy()


def _rebuild_parameter(data, *unused):
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, archive, prefix):
        super().__init__(f)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch" and name == "Size":
            return tuple
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        # anything else (mmengine message hubs, numpy arrays in meta...) becomes an inert placeholder
        return _Placeholder

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 3:
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        kind, stype, key = pid[0], pid[1], pid[2]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        if isinstance(stype, _StorageType):
            dtype = _STORAGE_DTYPES[stype.name]
        else:   # torch >= 2 stores a dtype via torch.storage.UntypedStorage + dtype arg
            dtype = np.float32
        if dtype is None:
            raise pickle.UnpicklingError(f"storage type {stype.name} is not supported")
        raw = self.archive.read(f"{self.prefix}data/{key}")
        return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))


# what zipfile raises on a damaged archive besides BadZipFile: an unknown zip version or
# compression method (NotImplementedError), an encrypted member (RuntimeError), bad sizes
_ZIP_ERRORS = (zipfile.BadZipFile, NotImplementedError, RuntimeError, zlib.error, EOFError,
               ValueError, OverflowError, OSError)
# and numpy on a damaged .npy header inside a .npz (its legacy-header filter tokenizes it)
_NPZ_ERRORS = _ZIP_ERRORS + (KeyError, tokenize.TokenError)


def _load_npz(path):
    """np.load of a .npz; a plain .npy (an array, not an archive) is a UserError."""
    z = np.load(path, allow_pickle=False)
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise UserError(f"checkpoint '{path}' holds a single .npy array, not a .npz archive")
    return z


def read_pth(path):
    """A PyTorch zip checkpoint as nested dicts of NumPy arrays."""
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise UserError(f"checkpoint '{path}' does not exist") from None
    except _ZIP_ERRORS:
        raise UserError(f"checkpoint '{path}' is not a PyTorch zip checkpoint "
                        f"(legacy torch.save format or not a checkpoint)") from None
    with archive:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if not pkl:
            raise UserError(f"checkpoint '{path}' has no data.pkl")
        prefix = pkl[0][:-len("data.pkl")]
        try:
            with archive.open(pkl[0]) as f:
                return _Unpickler(f, archive, prefix).load()
        except (pickle.UnpicklingError, KeyError, TypeError, AttributeError, IndexError,
                RecursionError, MemoryError) + _ZIP_ERRORS as e:
            raise UserError(f"checkpoint '{path}' could not be read: "
                            f"{type(e).__name__}: {e}") from None


def read_checkpoint(path):
    """A state dict from a .pth (torchvision/mmcls) or a dmcp .npz checkpoint."""
    if str(path).endswith(".npz"):
        try:
            with _load_npz(path) as z:
                state = {k[len("state_dict/"):]: z[k] for k in z.files if k.startswith("state_dict/")}
            for k, v in state.items():      # np.load gives a member without the .npy magic as bytes
                if not isinstance(v, np.ndarray):
                    raise UserError(f"checkpoint '{path}': entry 'state_dict/{k}' is not a .npy "
                                    f"array (damaged .npz)")
            return state
        except FileNotFoundError:
            raise UserError(f"checkpoint '{path}' does not exist") from None
        except IsADirectoryError:
            raise UserError(f"checkpoint '{path}' is a directory, not a file") from None
        except _NPZ_ERRORS as e:
            raise UserError(f"checkpoint '{path}' is not a readable dmcp checkpoint "
                            f"(truncated or not a .npz): {type(e).__name__}: {e}") from None
    obj = read_pth(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UserError(f"checkpoint '{path}' does not hold a state dict")
    return obj


def _npz_json(path, entry):
    """The JSON text stored as bytes in `entry` of a .npz file, parsed; None when
    `path` is not an existing .npz or has no such entry.  Read errors propagate."""
    if not str(path).endswith(".npz") or not os.path.isfile(path):
        return None
    with _load_npz(path) as z:
        if entry not in z.files:
            return None
        return json.loads(np.asarray(z[entry]).tobytes().decode("utf-8"))


def embedded_subnet(path):
    """The fix-subnet dict a slim .npz written by tools/export.py carries, else None."""
    try:
        return _npz_json(path, "fix_subnet")
    except (UnicodeDecodeError,) + _NPZ_ERRORS as e:
        raise UserError(f"checkpoint '{path}': its fix_subnet entry is unreadable "
                        f"({type(e).__name__}: {e})") from None


def trained_epochs(path):
    """The epochs a training checkpoint (.npz with a 'meta' entry) had completed,
    or None when it says nothing usable (a .pth, an export, a damaged meta)."""
    try:
        meta = _npz_json(path, "meta")
    except (UnicodeDecodeError, ValueError, RecursionError) + _NPZ_ERRORS:
        return None
    epoch = meta.get("epoch") if isinstance(meta, dict) else None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch > 0 else None


def _torchvision_mbv2_names(model):
    """torchvision MobileNetV2 prefix -> mmcls prefix, from the model's blocks."""
    mapping = {"features.0.0": "backbone.conv1.conv", "features.0.1": "backbone.conv1.bn"}
    i = 1
    bb = model.backbone
    for s in range(7):
        for b, blk in enumerate(getattr(bb, f"layer{s + 1}")):
            pre = f"backbone.layer{s + 1}.{b}.conv"
            n = len(blk.conv)
            for j in range(n - 1):
                mapping[f"features.{i}.conv.{j}.0"] = f"{pre}.{j}.conv"
                mapping[f"features.{i}.conv.{j}.1"] = f"{pre}.{j}.bn"
            mapping[f"features.{i}.conv.{n - 1}"] = f"{pre}.{n - 1}.conv"
            mapping[f"features.{i}.conv.{n}"] = f"{pre}.{n - 1}.bn"
            i += 1
    mapping[f"features.{i}.0"] = "backbone.conv2.conv"
    mapping[f"features.{i}.1"] = "backbone.conv2.bn"
    mapping["classifier.1"] = "head.fc"
    return mapping


def to_mmcls_names(model, state):
    """Map torchvision keys (``conv1.weight``, ``fc.bias``, ``features.3.conv.0.0.weight``)
    and ``module.``-prefixed keys onto mmcls names; mmcls keys pass through."""
    state = {re.sub(r"^module\.", "", k): v for k, v in state.items()}
    if any(k.startswith(("backbone.", "head.")) for k in state):
        return state
    if any(k.startswith("features.") for k in state):
        mapping = _torchvision_mbv2_names(model)
        out = {}
        for k, v in state.items():
            pre, _, leaf = k.rpartition(".")
            out[f"{mapping.get(pre, pre)}.{leaf}"] = v
        return out
    return {("head." + k if k.startswith("fc.") else "backbone." + k): v for k, v in state.items()}


def _sliceable(key, src, dst):
    """A supernet tensor may be cut to a pruned model's channels: conv weights along
    out/in channels (never the kernel), BN vectors, the classifier's input features."""
    if src.ndim != dst.ndim or any(s < d for s, d in zip(src.shape, dst.shape)):
        return False
    if src.ndim == 4:
        return src.shape[2:] == dst.shape[2:]
    if key.startswith("head.fc."):
        return src.shape[0] == dst.shape[0]
    return src.ndim == 1


def load_weights(model, state, strict=True, slice_channels=False):
    """Copy a state dict (or a checkpoint path) into the model, checking names and shapes.
    With ``slice_channels`` (a pruned model loading its supernet) larger tensors give
    their leading channels."""
    if isinstance(state, (str, os.PathLike)):
        state = os.fspath(state)
    source = state if isinstance(state, str) else "state dict"
    if isinstance(state, str):
        state = read_checkpoint(state)
    if not isinstance(state, dict):
        raise UserError(f"load_state_dict expects a dict or a checkpoint path, got {type(state).__name__}")
    state = to_mmcls_names(model, state)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (missing or unexpected):
        raise UserError(f"{source}: missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                        f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for k, dst in own.items():
        if k not in state:
            continue
        src = np.asarray(state[k])
        if src.shape != dst.shape:
            if not (slice_channels and _sliceable(k, src, dst)):
                raise UserError(f"{source}: '{k}' has shape {src.shape}, the model needs {dst.shape}")
            src = src[tuple(slice(0, d) for d in dst.shape)]
        dst[...] = src.astype(dst.dtype, copy=False)
    return missing, unexpected


# ---------------------------------------------------------------- training checkpoints

def atomic_savez(path, arrays):
    """np.savez through a temporary file: a run killed while saving leaves the old file."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def save_training(work_dir, name, model, optimizer, arch_optimizer, names, meta):
    """WORK_DIR/NAME (a .npz): the model's state dict (``state_dict/...``), the
    optimizers' state (``optimizer/...``, ``arch_optimizer/...``; ``names`` maps
    id(param) to its name) and ``meta`` as UTF-8 JSON; then ``last_checkpoint``
    names it.  Both files are replaced atomically.  Returns the path."""
    arrays = {f"state_dict/{k}": v for k, v in model.state_dict().items()}
    for prefix, opt in (("optimizer", optimizer), ("arch_optimizer", arch_optimizer)):
        if opt is not None:
            arrays.update({f"{prefix}/{k}": v for k, v in optimizer_state(opt, names).items()})
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    path = os.path.join(work_dir, name)
    atomic_savez(path, arrays)
    tmp = os.path.join(work_dir, "last_checkpoint.tmp")
    with open(tmp, "w") as f:
        f.write(os.path.abspath(path))
    os.replace(tmp, os.path.join(work_dir, "last_checkpoint"))
    return path


def resume_training(path, work_dir, model, optimizer, arch_optimizer, names, iters_per_epoch):
    """Load a training checkpoint written by ``save_training`` into the model and the
    optimizers; ``path`` True or "auto" is the one WORK_DIR/last_checkpoint names.
    Returns (path, meta): meta's epoch and iter fit ``iters_per_epoch``, its ``rng``
    is a PCG64 state and ``random_prob`` a number or None.  A file that is not such
    a checkpoint, a bad meta entry, missing weight-optimizer state (when the
    optimizer keeps any) or weights and optimizer state of another model is a
    UserError naming the file and the entry; the file and its meta are checked
    before anything is loaded."""
    if path is True or path == "auto":
        marker = os.path.join(work_dir, "last_checkpoint")
        if not os.path.exists(marker):
            raise UserError(f"--resume: no last_checkpoint in {work_dir}")
        with open(marker) as f:
            path = f.read().strip()
    if not os.path.exists(path):
        raise UserError(f"--resume: checkpoint '{path}' does not exist")
    weights_only = (f"; to start from its weights with a fresh optimizer at epoch 0, use "
                    f"--cfg-options load_from={path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            files = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user error here
        raise UserError(f"--resume: '{path}' is not a dmcp training checkpoint "
                        f"({type(e).__name__}: {e}){weights_only}") from None
    if "meta" not in files:
        raise UserError(f"--resume: '{path}' is not a dmcp training checkpoint (no 'meta' "
                        f"entry){weights_only}")
    meta = _training_meta(path, files["meta"], iters_per_epoch)

    def entries(prefix):
        return {k[len(prefix):]: v for k, v in files.items() if k.startswith(prefix)}
    opt_state = entries("optimizer/")
    if not opt_state and keeps_state(optimizer):
        raise UserError(f"--resume: '{path}' has no optimizer state{weights_only}")
    model.load_state_dict(entries("state_dict/"))
    load_optimizer_state(optimizer, names, opt_state, f"--resume: '{path}' optimizer")
    if arch_optimizer is not None:
        load_optimizer_state(arch_optimizer, names, entries("arch_optimizer/"),
                             f"--resume: '{path}' arch_optimizer")
    return path, meta


def _training_meta(path, raw, iters_per_epoch):
    """A checkpoint's 'meta' entry: UTF-8 JSON whose epoch/iter fit this run, as
    dict(epoch, iter, rng, random_prob); anything else is a UserError naming file and entry."""
    where = f"--resume: '{path}': entry 'meta'"
    try:
        meta = json.loads(np.asarray(raw).tobytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{where} is not UTF-8 text") from None
    except (ValueError, RecursionError) as e:
        raise UserError(f"{where} is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{where} is not a JSON object: {meta!r:.60}")
    for key in ("epoch", "iter"):
        v = meta.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise UserError(f"{where}: " + (f"{key}={v!r} is not a non-negative integer"
                                            if key in meta else f"no '{key}'"))
    epoch, it = meta["epoch"], meta["iter"]
    if not 0 <= it - epoch * iters_per_epoch <= iters_per_epoch:
        raise UserError(f"{where}: epoch {epoch} / iteration {it} do not fit this config's "
                        f"{iters_per_epoch} iterations per epoch (batch size or dataset "
                        f"changed?)")
    probe = np.random.default_rng(0)
    try:
        probe.bit_generator.state = meta.get("rng")
    except (TypeError, ValueError, KeyError) as e:
        raise UserError(f"{where}: 'rng' is not a {type(probe.bit_generator).__name__} "
                        f"state ({type(e).__name__}: {e})") from None
    random_prob = meta.get("random_prob")
    if random_prob is not None:
        random_prob = cfg_number(random_prob, f"{where}: random_prob")
    return dict(epoch=epoch, iter=it, rng=probe.bit_generator.state, random_prob=random_prob)
