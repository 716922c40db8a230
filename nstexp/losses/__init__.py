"""Loss functions of neural style transfer, pure and per sample, one module per family.

Every function takes batched tensors and returns one value per sample, shape (B,), so
independent images can share a forward pass. Notation follows Gatys et al.: F are the
generated image's features, P the content image's, N a layer's number of channels and
M = H * W its number of positions.

Each family's file also holds its loss class, registered under its config name
(nstexp.losses.base); importing this package registers them all, in the order below, which
is the order error messages list the options in.
"""

# isort: off
from nstexp.losses.base import CONTENT_LOSSES, STYLE_LOSSES, ContentLoss, StyleLoss, register
from nstexp.losses.content import content_loss
from nstexp.losses.gram import gram_matrix, style_loss
from nstexp.losses.wasserstein import centered_covariance, covariance, moments, sqrtm, trace_sqrt, w2_loss
from nstexp.losses.sliced import quantiles, random_directions, sliced_loss
from nstexp.losses.mmd import bn_loss, gaussian_mmd2_exact, gaussian_mmd2_linear, mmd_linear_loss, mmd_poly_loss
from nstexp.losses.cmd import central_moments, cmd_loss
from nstexp.losses.histogram import histogram_loss, histogram_remap
from nstexp.losses.mrf import mrf_loss
from nstexp.losses.strotss import relaxed_emd, strotss_loss
from nstexp.losses.self_similarity import self_similarity_loss
from nstexp.losses.nnst import nnst_loss
from nstexp.losses.nnst_split import split_distance
from nstexp.losses.tv import tv_loss
from nstexp.losses.laplacian import laplacian, laplacian_loss
# isort: on

__all__ = [
    "CONTENT_LOSSES", "STYLE_LOSSES", "ContentLoss", "StyleLoss", "register",
    "centered_covariance", "content_loss", "covariance", "gram_matrix", "moments", "quantiles",
    "random_directions", "sliced_loss", "sqrtm", "style_loss", "trace_sqrt", "tv_loss", "w2_loss",
    "bn_loss", "central_moments", "cmd_loss", "gaussian_mmd2_exact", "gaussian_mmd2_linear", "histogram_loss",
    "histogram_remap", "laplacian", "laplacian_loss", "mmd_linear_loss", "mmd_poly_loss", "mrf_loss",
    "nnst_loss", "relaxed_emd", "self_similarity_loss", "split_distance", "strotss_loss",
]
