"""Loss functions of the three deep-clustering objectives, as plain functions of tensors.

Every function takes already-computed network outputs (no model inside), so each one can be
checked against a value worked out by hand on a tiny input (tests/deep/test_losses.py).

DivClust (Metaxas et al., CVPR 2023) on top of CC (Li et al., AAAI 2021):
- ``nt_xent``: the normalised-temperature cross-entropy that CC uses twice, on instance
  projections (rows) and on cluster-assignment columns.
- ``cluster_contrastive_loss``: CC's cluster-level loss, NT-Xent over the columns of the two
  views' assignment matrices plus CC's entropy term ``log C - H(mean assignment)`` per view.
- ``clustering_similarity`` / ``diversity_loss``: DivClust's inter-clustering similarity
  (mean over clusters of the best-matching cluster's cosine) and the loss that pushes every
  ordered pair's similarity below the dynamic threshold ``d``, as the authors' code does.

MMDC (Shiran 2021): ``target_distance_loss`` (Eq. 3.1, Euclidean distance to the target).

ICBPL (Hu & Zhu): ``mmd_loss`` (Eq. 2), ``augmentation_cosine_loss`` (Eq. 4),
``neighbour_cosine_loss`` (Eq. 5), ``min_cosine_distance_loss`` (Eq. 6), and
``barlow_twins_loss`` (Zbontar et al. 2021) for Algorithm 1's self-supervised first step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent between paired rows of ``a`` and ``b`` (n, d): row i of a and b are positives.

    The 2n rows are L2-normalised; each row's positive is its partner, its negatives the other
    2n - 2 rows; the mean cross-entropy over all 2n rows is returned (as SimCLR and CC do).
    """
    if a.shape != b.shape:
        raise ValueError(f"a.shape={tuple(a.shape)} should equal b.shape={tuple(b.shape)}")
    n = a.shape[0]
    if n < 2:
        raise ValueError(f"nt_xent needs n >= 2 paired rows; got n={n}")
    z = F.normalize(torch.cat([a, b], dim=0), dim=1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, partner)


def assignment_entropy_penalty(probs: torch.Tensor) -> torch.Tensor:
    """``log C - H(mean_i p_i)`` for soft assignments (n, C): 0 when clusters are used evenly.

    CC adds it per view so that the cluster-level loss cannot be met by one big cluster.
    """
    marginal = probs.mean(dim=0)
    n_clusters = probs.shape[1]
    return math.log(n_clusters) + (marginal * torch.log(marginal.clamp_min(1e-12))).sum()


def cluster_contrastive_loss(
    probs_a: torch.Tensor,
    probs_b: torch.Tensor,
    temperature: float = 1.0,
    entropy_weight: float = 1.0,
) -> torch.Tensor:
    """CC's cluster-level loss for two views' soft assignments (n, C) of the same samples."""
    contrast = nt_xent(probs_a.T, probs_b.T, temperature)
    penalty = assignment_entropy_penalty(probs_a) + assignment_entropy_penalty(probs_b)
    return contrast + entropy_weight * penalty


def cluster_similarity_matrices(probs: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between the clusters of every pair of clusterings.

    ``probs`` (K, n, C): K clusterings' soft assignments of the same n samples. A cluster is
    represented by its column (its membership over the batch), L2-normalised over the batch;
    result (K, K, C, C) with ``[a, b, i, j] = cos(column i of clustering a, column j of b)``.
    """
    columns = F.normalize(probs, p=2, dim=1)  # each cluster's column has unit norm
    return torch.einsum("anc,bnd->abcd", columns, columns)


def clustering_similarity(probs: torch.Tensor) -> torch.Tensor:
    """DivClust's similarity between clusterings, a (K, K) matrix (main paper Eq. 5).

    ``Sim(A, B) = 1/C * sum_i max_j S_AB[i, j]``: each cluster of A is matched to its most
    similar cluster of B and the matches are averaged. Not symmetric in general; two identical
    clusterings (up to a relabelling) score 1.
    """
    return cluster_similarity_matrices(probs).amax(dim=3).mean(dim=2)


def diversity_loss(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """DivClust's diversity loss: ``sum_{A != B} relu(Sim(A, B) - d)`` over ordered pairs.

    As the authors' released code computes it (engine/criterion.py): only clustering pairs more
    similar than the dynamic threshold ``d`` are pushed apart, by how much they exceed it. The
    CC training step of that code then divides this sum by the number of heads K (done by the
    caller, ``DivClustObjective``). Two identical heads at d = 0.5 give 2 * 0.5 = 1.0.
    """
    n_heads = probs.shape[0]
    if n_heads < 2:
        return probs.sum() * 0.0
    excess = torch.relu(clustering_similarity(probs) - threshold)
    return excess.sum() - torch.diagonal(excess).sum()


def target_distance_loss(embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """MMDC/NAT objective (Eq. 3.1): mean Euclidean distance between embeddings and targets."""
    return (embeddings - targets).norm(dim=1).mean()


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, sigma: float) -> torch.Tensor:
    """``exp(-||x_i - y_j||^2 / (2 sigma^2))`` for every pair of rows (ICBPL Eq. 3)."""
    # Expanded form: an (n, m, d) difference tensor costs ~20x more time and memory.
    sq_dist = (x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1) - 2.0 * x @ y.T).clamp_min(0.0)
    return torch.exp(-sq_dist / (2.0 * sigma**2))


def mmd_loss(latents: torch.Tensor, centroids: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Unbiased squared MMD between latent rows (M, d) and class centroids (C, d), ICBPL Eq. 2."""
    m, c = latents.shape[0], centroids.shape[0]
    if m < 2 or c < 2:
        raise ValueError(f"mmd_loss needs >= 2 latents and >= 2 centroids; got M={m}, C={c}")
    k_ll = gaussian_kernel(latents, latents, sigma)
    k_cc = gaussian_kernel(centroids, centroids, sigma)
    k_lc = gaussian_kernel(latents, centroids, sigma)
    within_latents = (k_ll.sum() - torch.diagonal(k_ll).sum()) / (m * (m - 1))
    within_centroids = (k_cc.sum() - torch.diagonal(k_cc).sum()) / (c * (c - 1))
    return within_latents + within_centroids - 2.0 * k_lc.mean()


def augmentation_cosine_loss(z: torch.Tensor, z_aug: torch.Tensor) -> torch.Tensor:
    """ICBPL Eq. 4: ``1/(2N) sum_i (1 - cos(z_i, z_aug_i))^2``."""
    cos = F.cosine_similarity(z, z_aug, dim=1)
    return (1.0 - cos).pow(2).sum() / (2 * z.shape[0])


def neighbour_cosine_loss(z: torch.Tensor, z_neighbours: torch.Tensor) -> torch.Tensor:
    """ICBPL Eq. 5: ``1/(2NM) sum_i sum_j (1 - cos(z_i, z_k[i, j]))^2`` over M neighbours.

    ``z`` (N, d) and ``z_neighbours`` (N, M, d): row i's own M nearest neighbours.
    """
    n, m = z_neighbours.shape[:2]
    cos = F.cosine_similarity(z.unsqueeze(1), z_neighbours, dim=2)
    return (1.0 - cos).pow(2).sum() / (2 * n * m)


def min_cosine_distance_loss(z: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """ICBPL Eq. 6: mean of ``(1 - max_j cos(z_i, p_j))^2``: pull each latent to its nearest centroid."""
    cos = F.normalize(z, dim=1) @ F.normalize(centroids, dim=1).T
    return (1.0 - cos.max(dim=1).values).pow(2).mean()


def barlow_twins_loss(
    z_a: torch.Tensor, z_b: torch.Tensor, off_diagonal_weight: float = 5e-3
) -> torch.Tensor:
    """Barlow Twins' redundancy-reduction loss between two views' embeddings (n, d).

    Each dimension is standardised over the batch (population std); ``C = z_a^T z_b / n`` is
    their cross-correlation; loss ``sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2``
    (lambda 5e-3 as in the Barlow Twins paper).
    """
    if z_a.shape != z_b.shape or z_a.shape[0] < 2:
        raise ValueError(
            f"barlow_twins_loss needs two (n >= 2, d) batches of one shape; got "
            f"{tuple(z_a.shape)} and {tuple(z_b.shape)}"
        )
    n = z_a.shape[0]

    def standardise(z: torch.Tensor) -> torch.Tensor:
        return (z - z.mean(dim=0)) / z.std(dim=0, unbiased=False).clamp_min(1e-6)

    c = standardise(z_a).T @ standardise(z_b) / n
    diagonal = torch.diagonal(c)
    off = c.pow(2).sum() - diagonal.pow(2).sum()
    return (1.0 - diagonal).pow(2).sum() + off_diagonal_weight * off
