"""The digits sample-quality score (`dpddpm.digits.quality`) for 1,000 samples: features, FID against the test split,
and confidence.

Timed: building the score (loading the classifier and checking its sha256); the first call, which also computes
the reference's features (cached for later calls); then, the median of --repeats runs each, ``score_seeds`` on
one set (one forward pass: features, FID and confidence) and ``fid`` + ``confidence`` called separately (two
forward passes). The "samples" are real training images with a little noise: the time does not depend on what
the images show.
Usage: python benchmarks/bench_quality.py [--device cpu] [--n 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import pick_device, timed, write

from dpddpm.digits import digits_split
from dpddpm.digits.quality import DigitsScore, add_noise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    device = pick_device(args.device)
    train = digits_split("train")
    samples = add_noise(train.repeat(-(-args.n // len(train)), 1, 1, 1)[: args.n], 0.1)
    load_s, score = timed(lambda: DigitsScore(device=device), device)
    first_s, _ = timed(lambda: score.score_seeds([samples]), device)  # computes and caches the reference's features
    runs = {"score_seeds_s": [], "fid_plus_confidence_s": []}
    for _ in range(args.repeats):
        runs["score_seeds_s"].append(timed(lambda: score.score_seeds([samples]), device)[0])
        runs["fid_plus_confidence_s"].append(timed(lambda: (score.fid(samples), score.confidence(samples)), device)[0])
    res = score.score_seeds([samples])
    write(
        "bench_quality",
        device,
        {
            "n_samples": args.n,
            "reference": "test split (300 images)",
            "threads": torch.get_num_threads(),
            "repeats": args.repeats,
            "load_s": load_s,
            "first_call_with_reference_features_s": first_s,
            **{k: statistics.median(v) for k, v in runs.items()},
            "runs": runs,
            "fid": res.fid.mean,
            "confidence": res.confidence.mean,
        },
    )


if __name__ == "__main__":
    main()
