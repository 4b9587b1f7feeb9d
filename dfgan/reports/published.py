"""Published numbers of the paper and of the baselines it cites, each with its source.

Shown beside our numbers, never mixed into our columns: they were measured on CUB/COCO at 256 px with the
paper's own FID protocol (and an IS model fine-tuned on CUB that is no longer available), while our studies
run on whatever data and protocol their tags record. Values from the DF-GAN paper (Tables 1-2) and the official
repository's README (tobran/DF-GAN), as each entry's source says.
"""

from __future__ import annotations

from dataclasses import dataclass

SRC_PAPER = "Tao et al., DF-GAN, CVPR 2022, and the official repository's README (tobran/DF-GAN)"
SRC_RELEASED = "official README (tobran/DF-GAN): numbers of the released checkpoints"
SRC_BASELINES = "as cited for the baselines in the DF-GAN paper and the literature it compares against"


@dataclass(frozen=True)
class Published:
    model: str
    dataset: str
    metric: str
    value: str
    source: str
    note: str = ""
    ours: str | None = None  # the variant of ours that corresponds (only when it is the same model)


PUBLISHED: tuple[Published, ...] = (
    Published("DF-GAN (paper)", "CUB", "FID", "14.81", SRC_PAPER, ours="full"),
    Published("DF-GAN (paper)", "COCO", "FID", "19.32", SRC_PAPER, ours="full"),
    Published("DF-GAN (paper)", "-", "NoP", "19M", SRC_PAPER, "counting rule not stated", ours="full"),
    Published("DF-GAN (released checkpoints)", "CUB", "FID", "12.10", SRC_RELEASED, ours="full"),
    Published("DF-GAN (released checkpoints)", "COCO", "FID", "15.41", SRC_RELEASED, ours="full"),
    Published("DF-GAN (released checkpoints)", "-", "NoP", "18M", SRC_RELEASED, "counting rule not stated",
              ours="full"),
    Published("AttnGAN", "CUB", "IS", "4.36", SRC_BASELINES, "IS with a CUB-fine-tuned Inception"),
    Published("AttnGAN", "COCO", "FID", "35.49", SRC_BASELINES),
    Published("DM-GAN", "CUB", "IS", "4.75", SRC_BASELINES, "IS with a CUB-fine-tuned Inception"),
)

CAVEAT = ("Published numbers: CUB/COCO at 256 px, the paper's FID protocol (its own Inception preprocessing and "
          "reference statistics) and NoP without a stated counting rule; not comparable with our rows, shown for "
          "orientation only. The paper's per-row numbers of its component and fusion tables are not included "
          "(not in our reference notes).")


def for_variant(variant: str) -> list[Published]:
    return [p for p in PUBLISHED if p.ours == variant]
