"""Each fusion block alone (forward + backward, fp32) as the number of image regions grows: the paper's
claim (DF-GAN Sec. 1, 3.3) is that cross-modal attention cannot be afforded at high resolution while the
DFBlock's cost stays small. Fixed channel width, so that only the number of regions (side x side) changes."""

from __future__ import annotations

import pytest
import torch

from benchmarks.harness import COND_DIM, N_WORDS, count_flops, peak_memory, sync


def test_fusion_block(benchmark, record, device, profile, fusion, fusion_side):
    import dfgan.experiment  # noqa: F401  (registers every component)
    from dfgan.registry import FUSIONS
    from dfgan.spec import FusionSpec

    c, b, side = profile.fusion_channels, profile.fusion_batch, fusion_side
    z_dim = 100  # DF-GAN's noise size: the fusion condition is cat(noise, sentence)
    spec = FusionSpec(name=fusion, attention_resolutions=[side], fallback="dfblock")
    try:
        block = FUSIONS.build(fusion, cond_dim=z_dim + COND_DIM, channels=c, spec=spec, word_dim=COND_DIM,
                              resolution=side).to(device)
    except ValueError as e:
        pytest.skip(f"{fusion} at {side}x{side}: {e}")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, c, side, side, generator=g).to(device).requires_grad_(True)
    cond = torch.randn(b, z_dim + COND_DIM, generator=g).to(device)
    words = torch.randn(b, COND_DIM, N_WORDS, generator=g).to(device)
    mask = torch.zeros(b, N_WORDS, dtype=torch.bool, device=device)
    weight = torch.randn(b, c, side, side, generator=g).to(device)

    def fwd_bwd():
        out = block(x, cond, words, mask)
        (out * weight).sum().backward()
        sync(device)

    flops = count_flops(fwd_bwd)
    memory = peak_memory(fwd_bwd, device) if profile.memory else {}
    benchmark.pedantic(fwd_bwd, rounds=profile.fusion_rounds, warmup_rounds=1)
    seconds = benchmark.stats.stats.median
    record(kind="fusion_cost", fusion=fusion, block=type(block).__name__, side=side, regions=side * side,
           channels=c, batch=b, words=N_WORDS, device=str(device), dtype="float32",
           threads=torch.get_num_threads(), torch=torch.__version__, seconds=seconds,
           ms_per_image=seconds / b * 1e3, gflop_per_image=flops / b / 1e9,
           parameters=sum(p.numel() for p in block.parameters()), peak_memory_bytes=memory.get("peak_bytes"))


def test_word_region_attention_alone(benchmark, record, device, profile, fusion_side):
    """The attention inside ``cross_attention`` without its joint conv: AttnGAN's word-region attention,
    whose cost grows with regions x words (the part the paper's argument is about)."""
    import dfgan.experiment  # noqa: F401  (registers every component)
    from dfgan.registry import FUSIONS

    if "cross_attention" not in FUSIONS:
        pytest.skip("no cross_attention fusion registered")
    from dfgan.nn.fusion import WordRegionAttention

    c, b, side = profile.fusion_channels, profile.fusion_batch, fusion_side
    attn = WordRegionAttention(COND_DIM, c).to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, c, side, side, generator=g).to(device).requires_grad_(True)
    words = torch.randn(b, COND_DIM, N_WORDS, generator=g).to(device)
    weight = torch.randn(b, c, side, side, generator=g).to(device)

    def fwd_bwd():
        ctx, _ = attn(x, words, None)
        (ctx * weight).sum().backward()
        sync(device)

    flops = count_flops(fwd_bwd)
    benchmark.pedantic(fwd_bwd, rounds=profile.fusion_rounds, warmup_rounds=1)
    seconds = benchmark.stats.stats.median
    record(kind="fusion_cost", fusion="cross_attention (attention only)", block=type(attn).__name__, side=side,
           regions=side * side, channels=c, batch=b, words=N_WORDS, device=str(device), dtype="float32",
           threads=torch.get_num_threads(), torch=torch.__version__, seconds=seconds,
           ms_per_image=seconds / b * 1e3, gflop_per_image=flops / b / 1e9,
           parameters=sum(p.numel() for p in attn.parameters()), peak_memory_bytes=None)
