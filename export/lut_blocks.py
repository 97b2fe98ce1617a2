"""The models the latency LUT times: the shipped static layers, one block or a whole subnet.

Time what ships (docs/method.md#blocks): a block's model is the static twin that
``extract_subnet`` builds for it (``to_static`` of ``layers/dynamic_blocks.py``: the same Keras
layers and the same two custom layers of ``layers/static_layers.py``), taken from a fresh
dynamic block of exactly the block's size; a whole subnet is ``extract_subnet`` of a supernet
of the space. Weights are random (latency does not depend on weight values; BatchNorm gammas
are drawn away from the zero init so that int8 calibration sees a real range). Both are batch-1
models; ``lut_builder.convert_for_latency`` converts them with the export's own conversion.
"""

from __future__ import annotations

import keras
import numpy as np

from elasticvit_tf.arch import ArchConfig
from elasticvit_tf.blocks import BlockKind, BlockSpec
from elasticvit_tf.space import SearchSpace

_TOKEN_KINDS = (BlockKind.TRANSITION, BlockKind.TRANSFORMER, BlockKind.HEAD)


def randomize_gammas(layer, seed: int = 0) -> None:
    """Draws every BatchNorm / LayerNorm gamma of ``layer`` from U(0.5, 1.5) in place (the
    zero-initialised residual gammas would make int8 calibration see an all-zero branch)."""
    rng = np.random.default_rng(seed)
    for v in layer.weights:
        if v.path.endswith("gamma"):
            v.assign(rng.uniform(0.5, 1.5, tuple(v.shape)).astype(np.float32))


def op_input_shape(sig: BlockSpec) -> tuple[int, ...]:
    """Per-sample input shape of the one-block model of ``sig`` (tokens for token kinds)."""
    s = sig.input_side
    if sig.kind in _TOKEN_KINDS:
        return (s * s, sig.in_channels)
    return (s, s, sig.in_channels)


def _block_layer(sig: BlockSpec):
    """A dynamic block of exactly ``sig``'s size (as ``ElasticSupernet`` builds them)."""
    from elasticvit_tf.layers import dynamic_blocks as db

    k = sig.kind
    if k is BlockKind.FIRST_CONV:
        return db.FirstConv(sig.out_channels, name="first_conv")
    if k is BlockKind.STEM_BLOCK:
        return db.MBConvBlock(sig.in_channels, sig.out_channels, 0, (sig.kernel,), name="stem")
    if k is BlockKind.MBCONV:
        return db.MBConvBlock(
            sig.in_channels,
            sig.out_channels,
            sig.expand_ratio,
            (sig.kernel,),
            strides=sig.stride,
            se=sig.se,
            may_change_width=sig.in_channels != sig.out_channels,
            name="mbconv",
        )
    if k is BlockKind.TRANSITION:
        return db.TransformerLayer(
            max(sig.in_channels, sig.out_channels),
            1,
            1,
            sig.output_side,
            head_dim=16,
            transition=True,
            transition_strides=sig.stride,
            transition_expand=sig.expand_ratio,
            transition_kernel=sig.kernel,
            name="layer0",
        )
    if k is BlockKind.TRANSFORMER:
        return db.TransformerLayer(
            sig.out_channels,
            sig.mlp_ratio,
            sig.v_scale,
            sig.input_side,
            head_dim=sig.head_dim,
            name="layer",
        )
    if k is BlockKind.HEAD:
        return db.ClassifierHead(
            sig.in_channels,
            sig.hidden // sig.in_channels,
            sig.head_width,
            sig.num_classes,
            name="head",
        )
    raise ValueError(f"op.kind={k!r}: expected one of {[b.value for b in BlockKind]}")


def build_op_model(sig: BlockSpec, seed: int = 0) -> keras.Model:
    """A batch-1 Keras model of exactly one block: its ``to_static`` twin (random weights)."""
    layer = _block_layer(sig)
    layer.build(None)
    randomize_gammas(layer, seed)
    x = keras.Input(op_input_shape(sig), batch_size=1)
    k, name = sig.kind, sig.kind.value
    if k is BlockKind.FIRST_CONV:
        y = layer.to_static(x, sig.out_channels, name)
    elif k is BlockKind.STEM_BLOCK:
        y = layer.to_static(x, sig.out_channels, name, kernel=sig.kernel)
    elif k is BlockKind.MBCONV:
        y = layer.to_static(x, sig.out_channels, name, expand=sig.expand_ratio, kernel=sig.kernel)
    elif k is BlockKind.TRANSITION:
        y, _ = layer.static_transition(x, sig.input_side, sig.out_channels, name)
    elif k is BlockKind.TRANSFORMER:
        y, _ = layer.to_static(
            x, sig.input_side, sig.out_channels, sig.mlp_ratio, sig.v_scale, name
        )
    else:
        y = layer.to_static(x, name)
    return keras.Model(x, y, name=f"op_{name}")


_SUPERNETS: dict[str, object] = {}


def random_supernet(space: SearchSpace):
    """A random-weight ``ElasticSupernet`` of ``space`` (one kept per process: building the
    ``elasticvit`` supernet takes seconds)."""
    from elasticvit_tf.supernet import ElasticSupernet

    key = space.fingerprint()
    if key not in _SUPERNETS:
        _SUPERNETS.clear()
        net = ElasticSupernet(space, num_classes=space.num_classes, num_slots=1)
        randomize_gammas(net)
        _SUPERNETS[key] = net
    return _SUPERNETS[key]


def build_arch_model(space: SearchSpace, arch: ArchConfig) -> keras.Model:
    """The model ``elasticvit-export`` ships for ``arch`` (``extract_subnet``), random weights."""
    from elasticvit_tf.extract import extract_subnet

    return extract_subnet(random_supernet(space), arch)
