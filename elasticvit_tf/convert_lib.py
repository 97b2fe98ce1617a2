"""Official ElasticViT PyTorch checkpoint -> model_dir of our supernet (the flag-free library of
``elasticvit-convert``, whose binary is ``convert_main``).

Every tensor of the official supernet state dict (690 for the official space, names and shapes
in ``tests/data/official_supernet_state_dict.tsv``) is mapped onto one variable of
``ElasticSupernet`` with the layout change of docs/method.md#super-weight-layouts:

* conv ``[out, in, kh, kw]`` -> Keras ``[kh, kw, in, out]``;
* depthwise ``[C, 1, kh, kw]`` -> ``[kh, kw, C, 1]``;
* linear ``[out, in]`` -> ``[in, out]`` (for ``qkv`` this keeps the official super-row order
  [Q | K | V] as columns, which is what the head-major slicing of the supernet expects);
* BN ``weight/bias/running_mean/running_var`` -> ``gamma/beta/moving_mean/moving_variance``;
* relative-position tables and vectors are copied as they are.

Tensors the official forward never reads are accepted and reported as unused: the stem
shortcut convs (stem blocks are identity-residual), the shortcut convs of every block but the
first of a conv stage (those blocks always have ``cin == cout`` and stride 1),
``num_batches_tracked`` and ``relative_position_index`` (the supernet computes the same indices
from the formula of docs/method.md#transformer-layer; the buffer is checked against it).

Missing, unexpected and shape-mismatched tensors are all reported by name and abort the
conversion. The model_dir is written to a temporary sibling directory and renamed into place,
so a failed conversion leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from typing import Any, Callable, Mapping, Optional

import numpy as np

from elasticvit_tf.fileio import write_json_atomic
from elasticvit_tf.space import SearchSpace, get_space

EMA_KEY = "model_ema"
STATE_KEY = "state_dict"
MODULE_PREFIX = "module."
_BN_MAP = (
    ("weight", "gamma"),
    ("bias", "beta"),
    ("running_mean", "moving_mean"),
    ("running_var", "moving_variance"),
)


class ConversionError(ValueError):
    """Bad input for the converter (the message names the offending tensors or file)."""


# ------------------------------------------------------------------------------ layouts
def _conv_to_keras(a):
    return np.transpose(a, (2, 3, 1, 0))


def _dw_to_keras(a):
    return np.transpose(a, (2, 3, 0, 1))


def _dense_to_keras(a):
    return np.transpose(a, (1, 0))


def _copy(a):
    return a


# the inverse permutations: official shape from a Keras variable shape
_TO_OFFICIAL_SHAPE = {
    "conv": lambda s: (s[3], s[2], s[0], s[1]),
    "dw": lambda s: (s[2], s[3], s[0], s[1]),
    "dense": lambda s: (s[1], s[0]),
    "copy": tuple,
}
_TO_KERAS = {"conv": _conv_to_keras, "dw": _dw_to_keras, "dense": _dense_to_keras, "copy": _copy}


@dataclasses.dataclass(frozen=True)
class TensorMapping:
    """Where one official tensor goes.

    Attributes:
        name: official state-dict name.
        shape: official shape.
        variable: the supernet variable it fills, or None for an unused tensor.
        layout: "conv", "dw", "dense" or "copy" (how to transpose into ``variable``).
        note: why an unused tensor is unused.
        check: optional validator for unused tensors (raises ``ConversionError``).
    """

    name: str
    shape: tuple
    variable: Any = None
    layout: str = "copy"
    note: str = ""
    check: Optional[Callable[[np.ndarray], None]] = None

    @property
    def used(self) -> bool:
        return self.variable is not None

    def to_keras(self, value: np.ndarray) -> np.ndarray:
        return _TO_KERAS[self.layout](value)


def _used(name, variable, layout):
    shape = _TO_OFFICIAL_SHAPE[layout](tuple(int(d) for d in variable.shape))
    return TensorMapping(name, tuple(shape), variable, layout)


def _unused(name, shape, note, check=None):
    return TensorMapping(name, tuple(shape), None, "copy", note, check)


def _linear(prefix, dense):
    """``<prefix>.weight`` and ``<prefix>.bias`` of a linear layer."""
    return [
        _used(f"{prefix}.weight", dense.kernel, "dense"),
        _used(f"{prefix}.bias", dense.bias, "copy"),
    ]


def _layer_norm(prefix, ln):
    return [_used(f"{prefix}.weight", ln.gamma, "copy"), _used(f"{prefix}.bias", ln.beta, "copy")]


def _bn(prefix, bn):
    rows = [_used(f"{prefix}.{o}", getattr(bn, k), "copy") for o, k in _BN_MAP]
    rows.append(_unused(f"{prefix}.num_batches_tracked", (), "BN step counter (not used)"))
    return rows


def _mbconv(prefix, blk, shortcut_note):
    rows = []
    if blk.pw is not None:
        rows += [_used(prefix + "pw_conv.weight", blk.pw.kernel, "conv")]
        rows += _bn(prefix + "pw_bn", blk.pw_bn)
    rows += [_used(prefix + "dw_conv.weight", blk.dw.kernel, "dw")]
    rows += _bn(prefix + "dw_bn", blk.dw_bn)
    if blk.se:
        rows += [
            _used(prefix + "se_conv1.weight", blk.se1.kernel, "conv"),
            _used(prefix + "se_conv1.bias", blk.se1.bias, "copy"),
            _used(prefix + "se_conv2.weight", blk.se2.kernel, "conv"),
            _used(prefix + "se_conv2.bias", blk.se2.bias, "copy"),
        ]
    rows += [_used(prefix + "pwl_conv.weight", blk.pwl.kernel, "conv")]
    rows += _bn(prefix + "pwl_bn", blk.pwl_bn)
    if blk.shortcut is not None:
        rows += [_used(prefix + "shortcut_conv.weight", blk.shortcut.kernel, "conv")]
    else:
        c_in, c_out = blk.max_in, blk.max_out
        rows += [_unused(prefix + "shortcut_conv.weight", (c_out, c_in, 1, 1), shortcut_note)]
    return rows


def _relative_index(big_r: int) -> np.ndarray:
    pos = np.arange(big_r * big_r)
    ys, xs = pos // big_r, pos % big_r
    return (ys[:, None] - ys[None, :] + big_r - 1) * (2 * big_r - 1) + (
        xs[:, None] - xs[None, :] + big_r - 1
    )


def _index_check(name, big_r):
    def check(value):
        if not np.array_equal(np.asarray(value), _relative_index(big_r)):
            raise ConversionError(
                f"{name}: the relative-position index buffer differs from the official formula "
                f"(yi - yj + R - 1) * (2R - 1) + (xi - xj + R - 1) with R={big_r}; this checkpoint "
                "is not from the ElasticViT code this converter reproduces"
            )

    return check


def official_mapping(net) -> list[TensorMapping]:
    """The full official tensor list of ``net``'s space, each mapped onto a variable of ``net``.

    Args:
        net: an ``ElasticSupernet`` (built).

    Returns:
        One ``TensorMapping`` per official tensor, in the official state-dict order.
    """
    sp = net.space
    rows = [_used("first_conv.weight", net.first_conv.conv.kernel, "conv")]
    rows += _bn("first_conv_bn", net.first_conv.bn)
    for j, blk in enumerate(net.stem_blocks):
        rows += _mbconv(
            f"conv_stem.layers.{j}.0.",
            blk,
            "stem blocks are identity-residual: the official forward never runs this conv",
        )
    for i, (st, blocks) in enumerate(zip(sp.stages, net.stages)):
        base = f"feature_exactor.{i}.layers."
        if not st.is_transformer:
            for j, blk in enumerate(blocks):
                rows += _mbconv(
                    f"{base}{j}.0.",
                    blk,
                    "only the first block of a stage can change width: never run",
                )
            continue
        big_r = sp.max_feature_side(i)
        for j, blk in enumerate(blocks):
            p = f"{base}{2 * j}."
            idx_name = p + "relative_position_index"
            rows += [
                _used(p + "attention_bias", blk.attention_bias, "copy"),
                _unused(
                    idx_name,
                    (big_r * big_r, big_r * big_r),
                    "index buffer; recomputed from the formula (checked)",
                    _index_check(idx_name, big_r),
                ),
                _used(p + "qkv.weight", blk.qkv.kernel, "dense"),
                *_linear(p + "proj", blk.proj),
                _used(p + "dw_v_conv.weight", blk.dw_v.kernel, "dw"),
                *_layer_norm(p + "norm1", blk.ln1),
            ]
            if blk.mbconv is not None:
                rows += _mbconv(p + "reduction.", blk.mbconv, "")
            p = f"{base}{2 * j + 1}."
            rows += _layer_norm(p + "norm1", blk.ln2) + _linear(p + "fc1", blk.fc1)
            rows += _linear(p + "fc2", blk.fc2)
    head = net.head
    rows += _linear("pre_head_0", head.pre) + _bn("pre_head_norm_0", head.pre_bn)
    rows += _linear("pre_head_1", head.fc) + _linear("classifer", head.classifier)
    return rows


# --------------------------------------------------------------------------- reading
def _to_numpy(value, name):
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu().numpy()
    if not isinstance(value, (np.ndarray, np.generic, int, float)):
        raise ConversionError(
            f"{name}: expected a tensor, got {type(value).__name__}; the state dict must map "
            "parameter names to tensors"
        )
    return np.asarray(value)


def select_state_dict(obj: Any, use_ema: bool = True) -> tuple[dict, str]:
    """Picks the state dict out of a loaded checkpoint object.

    Accepts a dict with ``state_dict`` and/or ``model_ema`` (``use_ema`` picks ``model_ema``
    when present, as the official loader does) or a bare state dict; strips a ``module.``
    prefix. Values become numpy arrays.

    Returns:
        ``(state_dict, source)`` with ``source`` one of "model_ema", "state_dict", "bare".
    """
    if not isinstance(obj, Mapping):
        raise ConversionError(
            f"checkpoint holds a {type(obj).__name__}; expected a dict with 'state_dict' / "
            "'model_ema' or a bare state dict (name -> tensor)"
        )
    if EMA_KEY in obj or STATE_KEY in obj:
        if use_ema and EMA_KEY in obj:
            source = EMA_KEY
        elif STATE_KEY in obj:
            source = STATE_KEY
        else:
            raise ConversionError(
                f"checkpoint has {EMA_KEY!r} but no {STATE_KEY!r}; pass --use_ema to convert "
                "the EMA weights"
            )
        sd = obj[source]
        if not isinstance(sd, Mapping):
            raise ConversionError(
                f"checkpoint[{source!r}] is a {type(sd).__name__}; expected a dict"
            )
    else:
        source, sd = "bare", obj
    return normalize_state_dict(sd), source


def normalize_state_dict(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Official names (a ``module.`` prefix stripped) -> numpy arrays."""
    out = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise ConversionError(f"state dict key {key!r} is not a string")
        name = key[len(MODULE_PREFIX) :] if key.startswith(MODULE_PREFIX) else key
        if name in out:
            raise ConversionError(f"{name}: given twice (with and without {MODULE_PREFIX!r})")
        out[name] = _to_numpy(value, key)
    return out


def load_checkpoint_file(path: str, allow_pickle: bool = False) -> Any:
    """``torch.load`` on CPU; ``weights_only`` unless ``allow_pickle`` (trusted files only)."""
    if not os.path.isfile(path):
        raise ConversionError(f"--checkpoint {path!r} does not exist or is not a file")
    try:
        import torch
    except ImportError:
        raise ConversionError(
            "reading PyTorch checkpoints needs torch: pip install 'elasticvit-tf[torch]' "
            "(torch==2.13.0)"
        ) from None
    if not _looks_like_torch_save(path):
        raise ConversionError(
            f"--checkpoint {path} is not a PyTorch checkpoint: expected a torch.save file (a zip "
            "archive, or a legacy pickle file)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # torch raises many types for foreign files
        msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        hint = ""
        if not allow_pickle and "weights_only" in str(e):
            hint = (
                "; the file holds pickled Python objects besides tensors: if you trust it, "
                "rerun with --allow_pickle"
            )
        raise ConversionError(f"{path} is not a readable PyTorch checkpoint: {msg}{hint}") from None


def _looks_like_torch_save(path: str) -> bool:
    """torch.save writes a zip archive (``PK\\x03\\x04``) or, before torch 1.6, a pickle
    stream (protocol 2+: first byte ``\\x80``)."""
    import zipfile

    with open(path, "rb") as f:
        head = f.read(1)
    return head == b"\x80" or zipfile.is_zipfile(path)


# ------------------------------------------------------------------------------ checking
@dataclasses.dataclass
class ConversionReport:
    """What a conversion did (also written as ``conversion.json`` into the model_dir)."""

    source: str
    num_tensors: int
    num_used: int
    unused: list
    num_classes: int
    space: str

    def to_dict(self):
        return dataclasses.asdict(self)


def check_state_dict(state_dict: Mapping[str, np.ndarray], mapping: list[TensorMapping]) -> None:
    """Raises ``ConversionError`` listing every missing, unexpected and mis-shaped tensor."""
    want = {m.name: m for m in mapping}
    missing = [n for n in want if n not in state_dict]
    unexpected = sorted(n for n in state_dict if n not in want)
    wrong = [
        f"{n}: got shape {list(np.shape(state_dict[n]))}, expected {list(want[n].shape)}"
        for n in want
        if n in state_dict and tuple(np.shape(state_dict[n])) != want[n].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {_names(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): {_names(wrong)}")
    if problems:
        raise ConversionError(
            "state dict does not match the official supernet: " + "; ".join(problems)
        )
    for m in mapping:
        value = state_dict[m.name]
        if m.used and not np.all(np.isfinite(value)):
            raise ConversionError(f"{m.name}: holds NaN or Inf values")
        if m.check is not None:
            m.check(value)


def _names(items, limit=40):
    items = list(items)
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def assign_official_weights(net, state_dict: Mapping[str, Any]) -> list[str]:
    """Checks ``state_dict`` against ``net``'s official layout and assigns every used tensor.

    Nothing is assigned unless the whole state dict is valid.

    Returns:
        The names of the accepted but unused tensors.
    """
    sd = normalize_state_dict(state_dict)
    mapping = official_mapping(net)
    check_state_dict(sd, mapping)
    updates = []
    for m in mapping:
        if m.used:
            updates.append((m.variable, m.to_keras(sd[m.name]).astype(np.float32)))
    for var, value in updates:
        var.assign(value)
    return [m.name for m in mapping if not m.used]


# ------------------------------------------------------------------------------ convert
def infer_num_classes(state_dict: Mapping[str, np.ndarray]) -> int:
    w = state_dict.get("classifer.weight")
    if w is None or np.ndim(w) != 2:
        raise ConversionError(
            "classifer.weight: missing or not 2-D, cannot infer the number of classes; "
            "pass --num_classes"
        )
    return int(np.shape(w)[0])


def convert_state_dict(
    state_dict: Mapping[str, Any],
    model_dir: str,
    space: SearchSpace | str = "elasticvit",
    num_classes: Optional[int] = None,
    source: str = "bare",
) -> ConversionReport:
    """Writes a model_dir holding ``state_dict`` (official names, numpy or torch values).

    The model_dir is written to a temporary sibling directory and renamed into place; it must
    not exist yet (or be empty). Its config selects the PyTorch-compatible bicubic resize.
    """
    from elasticvit_tf import model_dir as md
    from elasticvit_tf.supernet import ElasticSupernet

    if isinstance(space, str):
        space = get_space(space)
    _check_output_dir(model_dir)
    sd = normalize_state_dict(state_dict)
    n_cls = infer_num_classes(sd) if num_classes is None else int(num_classes)
    if n_cls < 1:
        raise ConversionError(f"--num_classes={num_classes}; expected a positive int")
    supernet_kwargs = {"resize_method": "torch_bicubic"}
    net = ElasticSupernet(space, n_cls, **supernet_kwargs)
    unused = assign_official_weights(net, sd)
    report = ConversionReport(
        source=source,
        num_tensors=len(sd),
        num_used=len(sd) - len(unused),
        unused=unused,
        num_classes=n_cls,
        space=space.name,
    )
    config = {
        "num_classes": n_cls,
        "data": None,
        "split_seed": None,
        "supernet_kwargs": supernet_kwargs,
        "converted_from": {"source": source, "format": "official ElasticViT PyTorch"},
    }
    target = os.path.abspath(model_dir)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(target) + ".converting-", dir=parent)
    try:
        md.save_supernet(tmp, net, config)
        write_json_atomic(
            os.path.join(tmp, "conversion.json"), report.to_dict(), sort_keys=True, fsync=True
        )
        _verify_written(tmp, net)
        if os.path.isdir(target):
            os.rmdir(target)  # empty (checked above); rename needs it gone or empty
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _verify_written(model_dir: str, net) -> None:
    """Reloads the written model_dir and compares every weight with ``net``'s."""
    from elasticvit_tf import model_dir as md

    loaded, _ = md.load_supernet(model_dir)
    arch_ids = {id(v) for v in getattr(net, "arch_variables", ())}
    bad = [
        a.path
        for a, b in zip(net.weights, loaded.weights)
        if id(a) not in arch_ids
        and (tuple(a.shape) != tuple(b.shape) or not np.array_equal(np.asarray(a), np.asarray(b)))
    ]
    if bad or len(net.weights) != len(loaded.weights):
        raise RuntimeError(
            f"the written checkpoint does not restore {len(bad)} of {len(net.weights)} supernet "
            f"weights (e.g. {_names(bad, 5)}); the supernet's checkpoint tracking is broken"
        )


def convert_checkpoint(
    checkpoint: str,
    model_dir: str,
    space: SearchSpace | str = "elasticvit",
    num_classes: Optional[int] = None,
    use_ema: bool = True,
    allow_pickle: bool = False,
) -> ConversionReport:
    """Official ``torch.save``d checkpoint -> model_dir (see ``convert_state_dict``)."""
    _check_output_dir(model_dir)
    obj = load_checkpoint_file(checkpoint, allow_pickle=allow_pickle)
    sd, source = select_state_dict(obj, use_ema=use_ema)
    report = convert_state_dict(sd, model_dir, space, num_classes, source)
    return report


def _check_output_dir(model_dir: str) -> None:
    if not model_dir:
        raise ConversionError("model_dir is empty; expected an output directory")
    if os.path.exists(model_dir) and (not os.path.isdir(model_dir) or os.listdir(model_dir)):
        raise ConversionError(
            f"model_dir {model_dir!r} already exists and is not an empty directory; "
            "choose a new directory (the converter never overwrites)"
        )
