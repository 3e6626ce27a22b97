"""Embeddings and what their neighbourhoods say: near-duplicates and outliers.

An image's embedding is what its model computes before the classifier (`logits_and_embeddings`),
L2-normalised; the training augmentation (mirroring, translations) makes it nearly invariant to
those. Similarity is the cosine. Embeddings only propose near-duplicate candidates (with 8x8 grey
thumbnails, as they are and mirrored); `pixel_similarity` decides.

Search is exact and blocked: `BLOCK` query rows against all N at a time, (BLOCK, N) float32 at
most (1024 x 60,000 = 245 MB), keeping each row's `k` best. At CIFAR scale (60,000 x 60,000 x 256)
that is ~1.8 TFLOP, seconds to tens of seconds on two cores. Beyond a few hundred thousand images
use an approximate index (faiss's IVF/HNSW) on the same embeddings: the cost here is O(N^2).
"""

from __future__ import annotations

import numpy as np
import torch

from cifarkit.infer.inference import Inference

BLOCK = 1024  # query rows per block of the similarity search
THUMB = 16  # side of the grey thumbnails the pixel check compares


def last_linear(model: torch.nn.Module) -> torch.nn.Linear:
    """The model's last `nn.Linear` (airnet's head, ResNet's fc, MobileNetV2's classifier[-1])."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear layer to take embeddings from")
    return linears[-1]


def logits_and_embeddings(inf: Inference, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, H, W) -> (logits (N, C), L2-normalised embeddings (N, D)), of the images as they
    are (no test-time augmentation: the mirrored copies are the pixel check's job).

    One pass through `Inference.logits` (the one inference path); hooks record, batch by batch,
    what the embedding is made of. AirNet: the global max-pool of its second and third stage
    (256 + 256 channels), each centred on the data's mean and normalised, then joined: the middle
    stage keeps more of the individual picture than the class-level last one (on CIFAR-10 with
    500 planted altered copies, a 2-epoch fold model: the source is the copy's nearest image for
    88% of copies with the middle stage, 80% with the last alone). Other models: the input of
    their last linear layer."""
    from cifarkit.models.airnet import AirNet

    if inf.model is None:
        raise ValueError("embeddings need a PyTorch checkpoint")
    model = inf.model
    feats: dict[int, list[torch.Tensor]] = {}
    hooks = []
    if isinstance(model, AirNet):
        for k, stage in enumerate(model.layers[1:]):
            hooks.append(stage.register_forward_hook(
                lambda m, args, out, k=k: feats.setdefault(k, []).append(out.detach().float().amax((2, 3)))))
    else:
        hooks.append(last_linear(model).register_forward_pre_hook(
            lambda m, args: feats.setdefault(0, []).append(args[0].detach().float().flatten(1))))
    try:
        logits = inf.logits(images, tta="none")
    finally:
        for h in hooks:
            h.remove()
    sizes = [min(inf.batch_size, len(images) - k) for k in range(0, len(images), inf.batch_size)]
    parts = []
    for k in sorted(feats):
        e = torch.cat([feats[k][b][:n].cpu() for b, n in enumerate(sizes)])  # (N, D_k); small batches are padded
        parts.append(torch.nn.functional.normalize(e - e.mean(0), dim=1))
    emb = torch.cat(parts, 1) if parts else torch.zeros(0, 1)
    return logits, torch.nn.functional.normalize(emb, dim=1)  # (N, D)


def nearest(emb: torch.Tensor, k: int, block: int = BLOCK, keys: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's `k` most similar other rows (of `keys`, default `emb` itself, row i of `keys`
    standing for image i): (cosine similarities (N, k), indices (N, k)), best first."""
    keys = emb if keys is None else keys
    n = len(emb)
    k = min(k, n - 1)
    sims, idx = torch.empty(n, k), torch.empty(n, k, dtype=torch.long)
    for s in range(0, n, block):
        e = min(n, s + block)
        sim = emb[s:e] @ keys.T  # (B, N)
        sim[torch.arange(e - s), torch.arange(s, e)] = -2.0  # never your own neighbour
        sims[s:e], idx[s:e] = sim.topk(k, dim=1)
    return sims, idx


def outlier_scores(emb: torch.Tensor, labels: np.ndarray, k: int = 10) -> np.ndarray:
    """(N,) 1 - the mean cosine similarity to the `k` nearest images of the same given label:
    high = far from everything in its class (odd, corrupted or out-of-distribution)."""
    scores = np.zeros(len(emb), dtype=np.float64)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        if len(rows) < 2:
            scores[rows] = 1.0  # alone in its class: nothing to be near
            continue
        sims, _ = nearest(emb[torch.from_numpy(rows)], k)
        scores[rows] = 1.0 - sims.mean(1).double().numpy()
    return scores


def candidate_pairs(grey: torch.Tensor, emb: torch.Tensor, k: int = 10, k_pixels: int = 5) -> torch.Tensor:
    """(P, 2) index pairs i < j: every image with its `k` nearest embeddings and its `k_pixels`
    nearest 8x8 grey thumbnails (of `grey`, (N, H, W)), as they are and mirrored (a model that has
    learnt its classes well puts all of a class's embeddings close together: the thumbnails still
    tell copies apart)."""
    g = grey[:, None]  # (N, 1, H, W)
    thumb = _unit(torch.nn.functional.adaptive_avg_pool2d(g, 8)[:, 0].reshape(len(g), -1))  # (N, 64)
    mirrored = _unit(torch.nn.functional.adaptive_avg_pool2d(g.flip(-1), 8)[:, 0].reshape(len(g), -1))
    found = [nearest(emb, k)[1], nearest(thumb, k_pixels)[1], nearest(thumb, k_pixels, keys=mirrored)[1]]
    pairs = []
    for idx in found:
        rows = torch.arange(len(emb))[:, None].expand_as(idx)
        pairs.append(torch.stack([rows.reshape(-1), idx.reshape(-1)], 1))
    return torch.unique(torch.sort(torch.cat(pairs), 1).values, dim=0)


def to_grey(images: np.ndarray, chunk: int = 8192) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float grey (N, H, W), a chunk at a time (never all images as float RGB)."""
    out = torch.empty(images.shape[:3])
    weights = torch.tensor([0.299, 0.587, 0.114])
    for s in range(0, len(images), chunk):
        out[s:s + chunk] = (torch.from_numpy(images[s:s + chunk]).float() * weights).sum(-1)
    return out


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Rows centred and L2-normalised along the last dim: their dot product is the correlation."""
    return torch.nn.functional.normalize(x - x.mean(-1, keepdim=True), dim=-1)


def thumbnail_views(grey: torch.Tensor, side: int = THUMB) -> torch.Tensor:
    """(N, 3, side, side) thumbnails of grey images (N, H, W), whole and their centre 29/32 and
    26/32 (a copy cropped by a few pixels and resized back matches its original's centre)."""
    g = grey[:, None]  # (N, 1, H, W)
    h, w = g.shape[-2:]
    views = []
    for frac in (1.0, 29 / 32, 26 / 32):
        ch, cw = round(h * frac), round(w * frac)
        oy, ox = (h - ch) // 2, (w - cw) // 2
        views.append(torch.nn.functional.interpolate(g[..., oy:oy + ch, ox:ox + cw], size=(side, side),
                                                     mode="area")[:, 0])
    return torch.stack(views, 1)


def _best_correlation(kernels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(Q,) the highest correlation of each pair's kernels (Q, K, mh, mw), centred and unit-norm, with
    every mh x mw window of its image (Q, H, W) and of the image's mirror: a grouped convolution for
    the numerators, box sums of x and x^2 for each window's norm (no window is materialised)."""
    q, k, mh, mw = kernels.shape
    w = kernels.reshape(q * k, 1, mh, mw)
    area = mh * mw
    best = torch.full((q,), -1.0)
    for x in (images, images.flip(-1)):
        num = torch.nn.functional.conv2d(x[None], w, groups=q)[0].reshape(q, k, -1)  # (Q, K, windows)
        s1 = torch.nn.functional.avg_pool2d(x[:, None], (mh, mw), stride=1).reshape(q, 1, -1) * area
        s2 = torch.nn.functional.avg_pool2d((x * x)[:, None], (mh, mw), stride=1).reshape(q, 1, -1) * area
        norm = (s2 - s1 * s1 / area).clamp_min(1e-6).sqrt()
        best = torch.maximum(best, (num / norm).amax((1, 2)))
    return best


def pixel_similarity(grey: torch.Tensor, pairs: torch.Tensor, refine_from: float = 0.85,
                     threshold: float = 1.0, chunk: int = 4096) -> torch.Tensor:
    """(P,) how alike each pair's pixels are (`grey`: the images as `to_grey` makes them), 1 for
    the same picture: the best correlation of grey thumbnails over mirroring, shifts of up to 2
    thumbnail pixels, and matching either image's centre crop (29/32, 26/32) to the other whole
    (brightness and contrast fall out of a correlation). Pairs from `refine_from` up to
    `threshold` are also compared at full size with shifts of up to 3 pixels (a small shift is
    lost between the thumbnail's pixels)."""
    views = thumbnail_views(grey)  # (N, 3, S, S)
    sh = 2
    m = views.shape[-1] - 2 * sh
    centres = _unit(views[:, :, sh:sh + m, sh:sh + m].reshape(len(views), 3, m * m)).reshape(len(views), 3, m, m)
    whole = views[:, 0]  # (N, S, S)
    out = torch.empty(len(pairs))
    for c in range(0, len(pairs), chunk):
        i, j = pairs[c:c + chunk, 0], pairs[c:c + chunk, 1]
        # every view of i against j whole, and i whole against j's two centre crops
        out[c:c + chunk] = torch.maximum(_best_correlation(centres[i], whole[j]),
                                         _best_correlation(centres[j, 1:], whole[i]))
    refine = torch.nonzero((out >= refine_from) & (out < threshold)).flatten()
    if len(refine):
        g = grey  # (N, H, W)
        sh = 3
        mh, mw = g.shape[1] - 2 * sh, g.shape[2] - 2 * sh
        for c in range(0, len(refine), chunk):
            r = refine[c:c + chunk]
            i, j = pairs[r, 0], pairs[r, 1]
            a = _unit(g[i, sh:sh + mh, sh:sh + mw].reshape(len(r), -1)).reshape(len(r), 1, mh, mw)
            out[r] = torch.maximum(out[r], _best_correlation(a, g[j]))
    return out


def near_pairs(images: np.ndarray, emb: torch.Tensor, threshold: float, k: int = 10
               ) -> list[tuple[int, int, float]]:
    """(i < j, pixel similarity) of the pairs whose pixels match at least `threshold`, most alike
    first, among `candidate_pairs` (neighbours propose, the pixels decide: a classifier's
    embedding puts any two cats near each other)."""
    grey = to_grey(images)  # (N, H, W), once for the candidates and the pixel check
    pairs = candidate_pairs(grey, emb, k)
    sim = pixel_similarity(grey, pairs, threshold=threshold)
    keep = torch.nonzero(sim >= threshold).flatten()
    order = keep[torch.argsort(-sim[keep], stable=True)]
    return [(int(pairs[o, 0]), int(pairs[o, 1]), float(sim[o])) for o in order]
