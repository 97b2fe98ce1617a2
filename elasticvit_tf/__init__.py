"""elasticvit-tf: ElasticViT (Tang et al., ICCV 2023) in TensorFlow / Keras 3."""

from elasticvit_tf.arch import ArchConfig, StageArch, StemArch
from elasticvit_tf.space import SearchSpace, get_published_arch, get_space, space_names

__version__ = "0.1.0"


def __getattr__(name):
    # Heavy (TensorFlow) parts load lazily so that `import elasticvit_tf` stays fast.
    if name == "ElasticSupernet":
        from elasticvit_tf.supernet import ElasticSupernet

        return ElasticSupernet
    if name in ("extract_subnet", "recalibrate_bn"):
        from elasticvit_tf import extract

        return getattr(extract, name)
    raise AttributeError(f"module 'elasticvit_tf' has no attribute {name!r}")
