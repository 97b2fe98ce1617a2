"""ElasticSupernet: every subnet of a SearchSpace in one traced graph (docs/method.md#blocks,
docs/design.md#one-traced-graph).

The active subnet of each *slot* is a row of one int32 non-trainable variable ``arch``
(shape ``[num_slots, 4 + 4 * num_stages]``), the arch's encoded row (``blocks.arch_row``:
``[resolution, stem width, stem depth, stem kernel]`` then per stage ``[width, depth, a, b]``). Widths, depths (``tf.cond``),
kernels (``tf.switch_case``), ratios and the resolution are read from it inside the graph, so
``set_arch`` never retraces. The forward's ``slot`` is a Python int (one graph branch per slot
used) or a scalar integer tensor (a *graph slot*: one branch that indexes ``arch`` at run time,
e.g. in a step that loops over slots inside the graph; its range is not checked on the host).

Variable paths (Keras ``variable.path``), Cmax = stage max width::

  elastic_supernet/first_conv/{conv/kernel [3,3,3,C0max], bn/{gamma,beta,moving_mean,...}}
  elastic_supernet/stem_block{j}/{dw,dw_bn,pwl,pwl_bn}/...             (no expansion conv)
  elastic_supernet/stage{i}_block{j}/{pw,pw_bn,dw,dw_bn,[se1,se2],pwl,pwl_bn,[shortcut]}/...
  elastic_supernet/stage{i}_layer{j}/{[transition/...],ln1,qkv,dw_v,proj,attention_bias,
                                        ln2,fc1,fc2}/...
  elastic_supernet/head/{pre,pre_bn,fc,classifier}/...

(Only block 0 of each stage has ``shortcut``.) Layouts are documented on each block class.

Official PyTorch tensor -> variable (docs/method.md#super-weight-layouts transposes: conv
``(2, 3, 1, 0)``, depthwise ``(2, 3, 0, 1)``, linear ``.T``; BN
``weight/bias/running_mean/running_var`` -> ``gamma/beta/moving_mean/moving_variance``;
``num_batches_tracked`` unused)::

  first_conv.weight, first_conv_bn.*            -> first_conv/conv/kernel, first_conv/bn/*
  conv_stem.layers.{j}.0.{dw_conv,dw_bn,pwl_conv,pwl_bn}
                                                -> stem_block{j}/{dw,dw_bn,pwl,pwl_bn}
  conv_stem.layers.{j}.0.shortcut_conv          -> unused (identity residual)
  feature_exactor.{i}.layers.{j}.0.{pw_conv,pw_bn,dw_conv,dw_bn,se_conv1,se_conv2,pwl_conv,
      pwl_bn,shortcut_conv}   (i = 0, 1)        -> stage{i}_block{j}/{pw,pw_bn,dw,dw_bn,se1,se2,
                                                   pwl,pwl_bn,shortcut}  (shortcut: j = 0 only;
                                                   j > 0 shortcut_conv unused)
  feature_exactor.{i}.layers.{2j}.{attention_bias,qkv,proj,dw_v_conv,norm1,reduction.*}
                                                -> stage{i}_layer{j}/{attention_bias,qkv,proj,
                                                   dw_v,ln1,transition/*}
  feature_exactor.{i}.layers.{2j}.relative_position_index -> unused (recomputed)
  feature_exactor.{i}.layers.{2j+1}.{norm1,fc1,fc2} -> stage{i}_layer{j}/{ln2,fc1,fc2}
  pre_head_0, pre_head_norm_0, pre_head_1, classifer -> head/{pre,pre_bn,fc,classifier}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from elasticvit_tf.arch import ArchConfig
from elasticvit_tf.blocks import STAGE_COLUMNS, STEM_COLUMNS, arch_row, decode
from elasticvit_tf.layers.dynamic_blocks import (
    ClassifierHead,
    FirstConv,
    MBConvBlock,
    TransformerLayer,
)
from elasticvit_tf.layers.resize import RESIZE_METHODS, resize_images
from elasticvit_tf.space import SearchSpace, get_space

# Keras policies of the blocks: None (float32) or mixed precision (float32 variables).
MIXED_POLICIES = (None, "mixed_bfloat16", "mixed_float16")


@keras.saving.register_keras_serializable(package="elasticvit_tf")
class ElasticSupernet(keras.Model):
    """The weight-sharing ElasticViT supernet.

    Args:
        space: a ``SearchSpace`` or a preset name.
        num_classes: classifier outputs.
        num_slots: number of independently settable active archs (one per subnet of a step).
        resize_method: ``"bicubic"`` (TF), ``"torch_bicubic"`` (PyTorch a=-0.75, half-pixel, no
            antialias) or ``"bilinear"``; inputs of any size are resized in-model to the slot's
            resolution (identity when already at that size).
        dtype_policy: None (float32) or a Keras mixed-precision policy (``"mixed_bfloat16"``,
            ``"mixed_float16"``) for the blocks: float32 variables, convolutions and matmuls in
            the low precision; BatchNorm/LayerNorm statistics, the attention softmax and the
            logits stay float32 (docs/method.md#mixed-precision). The supernet model itself,
            its input resize and its arch variables stay float32.
    """

    def __init__(
        self,
        space: SearchSpace | str,
        num_classes: int,
        num_slots: int = 4,
        resize_method: str = "bicubic",
        name: str = "elastic_supernet",
        dtype_policy: Optional[str] = None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if dtype_policy not in MIXED_POLICIES:
            raise ValueError(f"dtype_policy={dtype_policy!r}; expected one of {MIXED_POLICIES}")
        previous = keras.config.dtype_policy()
        if dtype_policy is not None:
            keras.config.set_dtype_policy(dtype_policy)  # the blocks created below take it
        try:
            self._create_blocks(space, num_classes, num_slots, resize_method)
        finally:
            keras.config.set_dtype_policy(previous)

    def _create_blocks(self, space, num_classes, num_slots, resize_method):
        if isinstance(space, str):
            space = get_space(space)
        if isinstance(space, dict):
            space = SearchSpace.from_dict(space)
        if not isinstance(space, SearchSpace):
            raise ValueError(  # noqa: TRY004
                f"space: expected a SearchSpace or preset name, got {space!r}"
            )
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes={num_classes!r}; expected a positive int")
        if isinstance(num_slots, bool) or not isinstance(num_slots, int) or num_slots < 1:
            raise ValueError(f"num_slots={num_slots!r}; expected a positive int")
        if resize_method not in RESIZE_METHODS:
            raise ValueError(
                f"resize_method={resize_method!r}; expected one of {list(RESIZE_METHODS)}"
            )
        self.space = space
        self.num_classes = num_classes
        self.num_slots = num_slots
        self.resize_method = resize_method

        sp = space
        c0max = max(sp.stem.widths)
        self.first_conv = FirstConv(c0max, name="first_conv")
        self.stem_blocks = [
            MBConvBlock(c0max, c0max, 0, sp.stem.kernels, name=f"stem_block{j}")
            for j in range(max(sp.stem.depths))
        ]
        self.stages = []
        for i, st in enumerate(sp.stages):
            cm = st.max_width
            blocks = []
            for j in range(st.max_depth):
                if st.is_transformer:
                    blocks.append(
                        TransformerLayer(
                            cm,
                            max(st.mlp_ratios),
                            max(st.v_scales),
                            sp.max_feature_side(i),
                            head_dim=sp.head_dim,
                            transition=j == 0,
                            transition_strides=2 if st.downsample else 1,
                            transition_expand=sp.transition_expand,
                            transition_kernel=sp.transition_kernel,
                            name=f"stage{i}_layer{j}",
                        )
                    )
                else:
                    first = j == 0
                    blocks.append(
                        MBConvBlock(
                            cm,
                            cm,
                            max(st.expand_ratios),
                            st.kernels,
                            strides=2 if (first and st.downsample) else 1,
                            se=st.se,
                            may_change_width=first,
                            name=f"stage{i}_block{j}",
                        )
                    )
            self.stages.append(blocks)
        self.head = ClassifierHead(
            sp.stages[-1].max_width, sp.head_mul, sp.head_width, num_classes, name="head"
        )
        # NOTE: tf.train.Checkpoint does not see blocks held in (Keras-tracked) Python lists;
        # without these named attributes a checkpoint holds only first_conv, head and arch.
        # Keras dedups by id, so net.weights (and its order) is unchanged.
        for blk in self.stem_blocks + [b for blocks in self.stages for b in blocks]:
            setattr(self, blk.name, blk)
        self.build(None)

    # ------------------------------------------------------------------------------ build
    def _all_blocks(self):
        out = [self.first_conv] + list(self.stem_blocks)
        for blocks in self.stages:
            out += blocks
        return out + [self.head]

    def build(self, input_shape=None):
        if getattr(self, "arch", None) is None:
            row = np.asarray(arch_row(self.space.max_arch()), np.int32)
            self.arch = self.add_weight(
                name="arch",
                shape=(self.num_slots, row.shape[0]),
                dtype="int32",
                trainable=False,
                initializer=keras.initializers.Constant(np.tile(row, (self.num_slots, 1))),
            )
        for block in self._all_blocks():
            if not block.built:
                block.build(None)
        self.built = True

    @property
    def arch_variables(self):
        """The int32 non-trainable arch variables (one, shape ``[num_slots, row]``)."""
        return [self.arch]

    # ---------------------------------------------------------------------------- archs
    def _check_slot(self, slot, allow_tensor: bool = False):
        """``slot`` as a Python int in ``[0, num_slots)``; with ``allow_tensor`` (the forward
        passes) a scalar integer tensor is returned as it is."""
        if allow_tensor and tf.is_tensor(slot):
            if slot.shape.rank != 0 or not slot.dtype.is_integer:
                raise ValueError(
                    f"slot: a tensor slot must be a scalar integer, got shape {slot.shape} "
                    f"and dtype {slot.dtype.name}"
                )
            return slot
        if isinstance(slot, bool) or not isinstance(slot, (int, np.integer)):
            raise ValueError(  # noqa: TRY004
                f"slot={slot!r}; expected a Python int in [0, {self.num_slots})"
            )
        if not 0 <= int(slot) < self.num_slots:
            raise ValueError(f"slot={slot}; expected 0 <= slot < num_slots={self.num_slots}")
        return int(slot)

    def set_arch(self, arch: ArchConfig, slot: int = 0) -> None:
        """Activates ``arch`` in ``slot`` (validated against the space; ``ValueError``)."""
        slot = self._check_slot(slot)
        self.space.validate_arch(arch)
        rows = np.array(self._read_rows())
        rows[slot] = arch_row(arch)
        self.arch.assign(rows)

    def set_archs(self, archs: Sequence[ArchConfig]) -> None:
        """Slot ``i`` <- ``archs[i]`` (one assignment; fewer archs than slots leave the rest)."""
        archs = list(archs)
        if len(archs) > self.num_slots:
            raise ValueError(f"set_archs: got {len(archs)} archs; num_slots={self.num_slots}")
        rows = np.array(self._read_rows())
        for i, a in enumerate(archs):
            self.space.validate_arch(a)
            rows[i] = arch_row(a)
        self.arch.assign(rows)

    def _read_rows(self):
        return np.asarray(keras.ops.convert_to_numpy(self.arch.value))

    def get_arch(self, slot: int = 0) -> ArchConfig:
        """Host-side copy of the active arch of ``slot``."""
        slot = self._check_slot(slot)
        return decode(self.space, self._read_rows()[slot])

    # --------------------------------------------------------------------------- forward
    def _dims(self, slot):
        row = self.arch.value[slot]
        d = {"resolution": row[0], "stem": (row[1], row[2], row[3]), "stages": []}
        for i in range(len(self.space.stages)):
            b = STEM_COLUMNS + STAGE_COLUMNS * i
            d["stages"].append((row[b], row[b + 1], row[b + 2], row[b + 3]))
        return d

    def call(self, inputs, training=None, slot=0):
        feats = self.forward_features(inputs, training=training, slot=slot)
        return self.forward_head(feats, training=training, slot=slot)

    def forward_features(self, images, training=None, slot=0):
        """Resize to the slot's resolution, first conv, stem and all stages: tokens (B, N, C).
        ``slot``: a Python int or a scalar integer tensor (see the module docstring)."""
        slot = self._check_slot(slot, allow_tensor=True)
        training = bool(training)
        sp = self.space
        d = self._dims(slot)
        x = tf.convert_to_tensor(images, tf.float32)
        if x.shape.rank != 4 or (x.shape[-1] is not None and x.shape[-1] != 3):
            raise ValueError(f"images: expected NHWC with 3 channels, got shape {x.shape}")
        x = resize_images(x, d["resolution"], self.resize_method)
        c0, d0, k0 = d["stem"]
        x = self.first_conv(x, width=c0, training=training)
        dmin = min(sp.stem.depths)
        for j, blk in enumerate(self.stem_blocks):
            fn = lambda x=x, blk=blk: blk(x, width=c0, kernel=k0, training=training)
            x = fn() if j < dmin else tf.cond(d0 > j, fn, lambda x=x: tf.identity(x))
        side = None
        for i, (st, blocks) in enumerate(zip(sp.stages, self.stages)):
            w, depth, a, b = d["stages"][i]
            dmin = min(st.depths)
            if st.is_transformer and side is None:
                side = tf.shape(x)[1]
                x = tf.reshape(x, [-1, side * side, tf.shape(x)[-1]])
            for j, blk in enumerate(blocks):
                if st.is_transformer:
                    if j == 0:
                        x, side = blk(
                            x, side=side, width=w, mlp_ratio=a, v_scale=b, training=training
                        )
                        continue

                    def fn(x=x, blk=blk, w=w, a=a, b=b, side=side):
                        return blk(
                            x, side=side, width=w, mlp_ratio=a, v_scale=b, training=training
                        )[0]

                else:

                    def fn(x=x, blk=blk, w=w, a=a, b=b):
                        return blk(x, width=w, expand=a, kernel=b, training=training)

                x = fn() if j < dmin else tf.cond(depth > j, fn, lambda x=x: tf.identity(x))
        return x

    def forward_head(self, features, training=None, slot=0):
        """Logits, always float32 (the head computes in the blocks' precision)."""
        self._check_slot(slot, allow_tensor=True)
        return tf.cast(self.head(features, training=bool(training)), tf.float32)

    # ---------------------------------------------------------------------- weight decay
    def weight_decay_variables(self):
        """Trainable variables that get weight decay (docs/method.md#training-recipe): transformer
        qkv/proj/fc1/fc2 kernels, relative-position tables, V depthwise kernels, head and classifier
        kernels."""
        out = []
        for blocks, st in zip(self.stages, self.space.stages):
            if not st.is_transformer:
                continue
            for blk in blocks:
                out += [blk.qkv.kernel, blk.proj.kernel, blk.fc1.kernel, blk.fc2.kernel]
                out += [blk.attention_bias, blk.dw_v.kernel]
        out += [self.head.pre.kernel, self.head.fc.kernel, self.head.classifier.kernel]
        return out

    def batch_norm_layers(self):
        from elasticvit_tf.layers.dynamic_layers import DynamicBatchNorm

        return [l for l in self._flatten_layers() if isinstance(l, DynamicBatchNorm)]

    # ---------------------------------------------------------------------------- config
    def get_config(self):
        return {
            "name": self.name,
            "space": self.space.to_dict(),
            "num_classes": self.num_classes,
            "num_slots": self.num_slots,
            "resize_method": self.resize_method,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["space"] = SearchSpace.from_dict(config["space"])
        return cls(**config)
