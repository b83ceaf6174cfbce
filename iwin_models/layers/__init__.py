"""Model building blocks shared by the model families (as ``timm.layers``): input checks, the convolution and
pooling forms a size-free exported graph needs, BatchNorm that tolerates 1x1 maps at batch 1."""
from .checks import check_image_batch
from .conv import conv2d_as_conv3d
from .norm import BATCH_NORMS, PoolSafeBatchNorm2d, pool_safe_batchnorms, running_statistics_frozen
from .pool import AdaptiveAvgPool2d, adaptive_avg_pool2d_by_averaging
from .resize import resize_bilinear

__all__ = ["check_image_batch", "conv2d_as_conv3d", "BATCH_NORMS", "PoolSafeBatchNorm2d", "pool_safe_batchnorms",
           "running_statistics_frozen", "AdaptiveAvgPool2d", "adaptive_avg_pool2d_by_averaging", "resize_bilinear"]
