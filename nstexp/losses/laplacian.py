"""The Laplacian content term (Li et al., "Laplacian-Steered Neural Style Transfer", ACM MM
2017; code: askerlee/lapstyle, lap_style.lua).

The image (B, 3, H, W) is average-pooled in 2^p × 2^p blocks, then filtered with the 3×3
Laplacian [[0, −1, 0], [−1, 4, −1], [0, −1, 0]] summed over the three channels (one output
channel, no padding, stride 1), and compared with the content image's by mean squared error:

    L_lap = mean_ij (D(pool_p(x)) − D(pool_p(c)))²_ij

as lapstyle's ContentLoss (nn.MSECriterion, a mean) after its SpatialAveragePooling(2^p) and
SpatialConvolution(3, 1, 3, 3). lapstyle filters the Caffe input, 256 × the image (the mean
pixel cancels: the kernel sums to 0); here the image is RGB in [0, 1], so lapstyle's weights
carry over times 256² (the channel order does not matter for the sum).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KERNEL = ((0.0, -1.0, 0.0), (-1.0, 4.0, -1.0), (0.0, -1.0, 0.0))


def laplacian(image: torch.Tensor, pool: int) -> torch.Tensor:
    """D(pool_p(image)): (B, 3, H, W) -> (B, 1, H / 2^p − 2, W / 2^p − 2)."""
    if pool:
        image = F.avg_pool2d(image, 2**pool)
    kernel = torch.tensor(KERNEL, dtype=image.dtype, device=image.device).expand(1, image.shape[1], 3, 3)
    return F.conv2d(image, kernel)


def laplacian_loss(image: torch.Tensor, target: torch.Tensor, pool: int) -> torch.Tensor:
    """mean (D(pool_p(x)) − target)²; image (B, 3, H, W), target D(pool_p(c)) (1, 1, h, w) -> (B,)."""
    return (laplacian(image, pool) - target).pow(2).flatten(1).mean(1)
