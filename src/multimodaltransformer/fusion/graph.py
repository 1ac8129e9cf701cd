"""Graph fusion: image regions as graph nodes, message passing over the patch grid, then the prefix.

A relational inductive bias (Battaglia et al. 2018, "Relational inductive biases, deep learning,
and graph networks"): the patch tokens are nodes on their h x w grid (row-major, as ViT emits
them), optionally average-pooled `pool` x `pool` into region nodes; node i hears from every node j
within `radius` (Chebyshev distance, so radius 1 = the 8 neighbours) and from itself, and the edge
carries j's offset (dx, dy) from i (x right, y down), so a message knows "left of" / "above".
`depth` edge-conditioned message-passing layers (an MPNN, Gilmer et al. 2017), pre-LN residual:
    x = LN(h);  m_ij = MLP([x_i, x_j, e_ij]);  a_i = mean_{j -> i} m_ij;  h_i = h_i + MLP([x_i, a_i])
The nodes then go in front of the text, as in early fusion. A batch is one block-diagonal graph:
flat nodes (B*n, C), edges (2, B*E) shifted by b*n for image b, no padding.
Choices: the mean (not attention) lets the message MLP's last Linear run after the aggregation, so
no matmul runs per edge; each update's output Linear starts at zero, so at init this is early
fusion (over the pooled nodes). pool 1 is the default: the same prefix as early fusion, so a
comparison isolates the message passing; pool 2 cuts the prefix 4x (64 -> 16 tokens on the bench's
8 x 8 grid), which makes a train step cheaper than early fusion's, at the cost of 2x coarser positions.
Legend: B batch, N media tokens (h x w patches), Cm media dim, C decoder dim, n nodes per image
(N / pool^2), E edges per image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.blocks import build_norm
from .config import FusionOutput, Projector, build_projector


def node_grid_side(num_media: int, pool: int) -> int:
    """Side of the node grid: the media must be a square patch grid whose side `pool` divides."""
    side = math.isqrt(num_media)
    if side * side != num_media:
        raise ValueError(f"graph fusion needs a square grid of media tokens, got {num_media}")
    if side % pool:
        raise ValueError(f"fusion.graph_pool {pool} must divide the side of the {side} x {side} patch grid")
    return side // pool


def grid_graph(h: int, w: int, radius: int) -> tuple[Tensor, Tensor]:
    """Edges j -> i of an h x w row-major grid, for all j within Chebyshev `radius` of i (self loops too).

    Returns edge_index (2, E) as [source j; target i], sorted by target, and the offsets (E, 2),
    float (dx, dy) = position of j - position of i.
    """
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1, 1), xs.reshape(-1, 1)  # (n, 1)
    d = torch.arange(-radius, radius + 1)
    dy, dx = (t.reshape(1, -1) for t in torch.meshgrid(d, d, indexing="ij"))  # (1, K), K = (2r + 1)^2
    ny, nx = ys + dy, xs + dx  # (n, K) neighbour coordinates, some off the grid
    keep = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
    src = (ny * w + nx)[keep]
    dst = torch.arange(h * w).reshape(-1, 1).expand_as(ny)[keep]
    offset = torch.stack([dx.expand_as(ny)[keep], dy.expand_as(ny)[keep]], -1).float()
    return torch.stack([src, dst]), offset


class MessagePassingLayer(nn.Module):
    """h_i <- h_i + MLP([x_i, mean_j MLP([x_i, x_j, e_ij])]), x = LN(h), over a flat edge list."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = build_norm("layernorm", dim, eps)
        # m_ij = msg_out(gelu(Linear([x_i, x_j, e_ij]))), the first Linear split in three, so the node
        # parts run once per node (B*n rows) instead of once per edge (B*E, about 9x more at radius 1).
        self.msg_dst = nn.Linear(dim, dim)
        self.msg_src = nn.Linear(dim, dim, bias=False)
        self.msg_edge = nn.Linear(dim, dim, bias=False)
        self.msg_out = nn.Linear(dim, dim)
        self.update = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, dim))
        # zero: at init every layer is the identity and graph fusion is early fusion; training
        # opens the relational path (as Flamingo's closed gates do), instead of adding noise to it.
        nn.init.zeros_(self.update[2].weight)
        nn.init.zeros_(self.update[2].bias)

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor, inv_degree: Tensor) -> Tensor:
        """h (B*n, C); edge_index (2, B*E) [source; target], image-major; edge_attr (E, C), the
        embedded offsets, the same for every image; inv_degree (B*n, 1) 1 / in-degree -> (B*n, C)."""
        src, dst = edge_index
        x = self.norm(h)
        C, E = x.shape[-1], edge_attr.shape[0]
        pre = self.msg_dst(x)[dst] + self.msg_src(x)[src]  # (B*E, C)
        pre = (pre.view(-1, E, C) + self.msg_edge(edge_attr)).view(-1, C)  # (B, E, C): offsets broadcast
        hidden = F.gelu(pre)  # (B*E, C) the message MLP's hidden layer, per edge
        # mean_j msg_out(hidden_ij) = msg_out(mean_j hidden_ij): the last Linear commutes with the
        # mean, so it runs per node too, and no matmul runs per edge. The sum is in fp32 (like a softmax).
        mean = x.new_zeros(x.shape, dtype=torch.float32).index_add_(0, dst, hidden.float()) * inv_degree
        agg = self.msg_out(mean.to(hidden.dtype))  # (B*n, C) a_i, the mean message
        return h + self.update(torch.cat([x, agg], -1))


class GraphFusion(nn.Module):
    """media (B, N, Cm) on a square patch grid -> prefix (B, N / pool^2, C) after message passing."""

    def __init__(self, media_dim: int, dim: int, depth: int = 2, radius: int = 1, pool: int = 1,
                 projector: Projector = "linear") -> None:
        super().__init__()
        self.radius, self.pool = radius, pool
        self.proj = build_projector(projector, media_dim, dim)
        # (dx, dy) -> C, once per forward for all layers; each layer reads it through its msg_edge.
        self.edge_embed = nn.Sequential(nn.Linear(2, dim), nn.GELU(), nn.Linear(dim, dim))
        self.layers = nn.ModuleList(MessagePassingLayer(dim) for _ in range(depth))
        self.type_embed = nn.Parameter(torch.zeros(1, 1, dim))  # zeros, as in early fusion
        # one image's grid graph, built for the first (h, w) seen (the grid comes with the media);
        # non-persistent: checkpoints don't carry it, and `.to()` moves it with the module.
        self.register_buffer("edge_index", None, persistent=False)  # (2, E) long
        self.register_buffer("edge_offset", None, persistent=False)  # (E, 2) float
        self.register_buffer("inv_degree", None, persistent=False)  # (n, 1) float
        self._side: int | None = None

    def _graph(self, side: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        if self._side != side:
            edge_index, offset = grid_graph(side, side, self.radius)
            degree = torch.bincount(edge_index[1], minlength=side * side).float()
            self.edge_index, self.edge_offset = edge_index.to(device), offset.to(device)
            self.inv_degree = (1.0 / degree).reshape(-1, 1).to(device)
            self._side = side
        return self.edge_index, self.edge_offset, self.inv_degree

    def nodes(self, media: Tensor) -> tuple[Tensor, int]:
        """media (B, N, Cm) -> nodes (B, n, Cm), mean-pooled over pool x pool patches, and the grid side."""
        B, N, Cm = media.shape
        side = node_grid_side(N, self.pool)
        if self.pool == 1:
            return media, side
        grid = media.transpose(1, 2).reshape(B, Cm, side * self.pool, side * self.pool)
        return F.avg_pool2d(grid, self.pool).flatten(2).transpose(1, 2), side  # (B, n, Cm) row-major

    def forward(self, media: Tensor) -> FusionOutput:
        """media (B, N, Cm) -> prefix (B, n, C), no memory."""
        nodes, side = self.nodes(media)
        B, n, _ = nodes.shape
        edge_index, offset, inv_degree = self._graph(side, media.device)
        shift = n * torch.arange(B, device=media.device)  # image b's nodes are rows b*n .. b*n + n - 1
        edges = (edge_index[:, None, :] + shift[None, :, None]).reshape(2, -1)  # (2, B*E) block-diagonal
        h = self.proj(nodes).reshape(B * n, -1)  # (B*n, C)
        edge_attr = self.edge_embed(offset.to(h.dtype))  # (E, C)
        inv_degree = inv_degree.repeat(B, 1)  # (B*n, 1)
        for layer in self.layers:
            h = layer(h, edges, edge_attr, inv_degree)
        return FusionOutput(prefix=h.view(B, n, -1) + self.type_embed, memory=None)
