"""Validate the digits sample-quality scores (`dpddpm.digits.quality`) on real and deliberately damaged images.

- the classifier: its test accuracy as recorded in the card and as recomputed here;
- real held-out images (the 300 of the "selection" split) against the reference ("test" split, 300);
- the noise floor: FIDs of 300 vs 300 real images, random re-splits of the 600 selection + test images;
- growing Gaussian noise on the selection images (clipped to [-1, 1]), several noise seeds per level:
  the FID must rise and the confidence fall with sigma.

    python scripts/validate_digits_fid.py [--out results/digits_fid_validation.json] [--repeats 50] [--seeds 5]

Runs in seconds on a CPU and writes one JSON file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import dpddpm
from dpddpm.digits import classifier_card, digits_labels, digits_split
from dpddpm.digits.classifier import accuracy
from dpddpm.digits.quality import add_noise, load_digits_score
from dpddpm.files import write_json

SIGMAS = (0.0, 0.1, 0.2, 0.4, 0.8)
OUT = Path(__file__).resolve().parent.parent / "results" / "digits_fid_validation.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--repeats", type=int, default=50, help="re-splits for the noise floor")
    ap.add_argument("--seeds", type=int, default=5, help="noise seeds per sigma")
    args = ap.parse_args()

    score = load_digits_score()
    card = classifier_card()
    selection, test = digits_split("selection"), digits_split("test")
    floor = score.noise_floor(size=300, repeats=args.repeats, seed=0)
    real_fid = score.fid(selection, reference="test")
    levels = []
    for sigma in SIGMAS:
        res = score.score_seeds([add_noise(selection, sigma, seed) for seed in range(args.seeds)], reference="test")
        levels.append(
            {
                "sigma": sigma,
                "fid": res.fid.mean,
                "fid_stderr_over_seeds": res.fid.stderr,
                "fid_excess_over_floor_in_floor_stds": (res.fid.mean - floor.mean) / floor.std,
                "confidence": res.confidence.mean,
                "confidence_stderr_over_seeds": res.confidence.stderr,
                "fids": res.fids,
                "confidences": res.confidences,
            }
        )
    fids, confs = [r["fid"] for r in levels], [r["confidence"] for r in levels]
    conf_sel, conf_test = score.confidence(selection), score.confidence(test)
    result = {
        "dpddpm_version": dpddpm.__version__,
        "what": "FID (squared feature units, the bundled digits classifier's 32 penultimate features) and mean max "
        "softmax confidence; reference: the test split (300 images); sample sets: 300 images",
        "classifier": {
            "test_accuracy_card": card["test_accuracy"],
            "test_accuracy_recomputed": accuracy(score.classifier, test, digits_labels("test")),
            "selection_accuracy_recomputed": accuracy(score.classifier, selection, digits_labels("selection")),
            "sha256": card["sha256"],
            "parameters": card["parameters"],
            "live_feature_units_on_test": int((score.features(test).std(dim=0) > 0).sum()),
        },
        "real_selection_vs_test": {
            "fid": real_fid,
            "fid_minus_floor_in_floor_stds": (real_fid - floor.mean) / floor.std,
            "confidence_selection": conf_sel.mean,
            "confidence_selection_stderr": conf_sel.stderr,
            "confidence_test": conf_test.mean,
            "confidence_test_stderr": conf_test.stderr,
        },
        "noise_floor": {
            "protocol": f"FID of 300 vs 300 real images: {args.repeats} random re-splits (numpy default_rng(0)) "
            "of the 600 selection + test images",
            "mean": floor.mean,
            "std": floor.std,
            "min": min(floor.values),
            "max": max(floor.values),
            "p95": float(np.quantile(floor.values, 0.95)),
            "values": floor.values,
        },
        "noise": {
            "protocol": f"selection images + sigma N(0, 1) (torch.Generator seeds 0..{args.seeds - 1}), clipped to "
            "[-1, 1]; mean and standard error over the seeds, against the test split",
            "levels": levels,
            "fid_increasing": bool(np.all(np.diff(fids) > 0)),
            "confidence_decreasing": bool(np.all(np.diff(confs) < 0)),
        },
    }
    write_json(args.out, result)
    print(
        f"classifier test accuracy: card {card['test_accuracy']:.4f}, recomputed "
        f"{result['classifier']['test_accuracy_recomputed']:.4f}"
    )
    print(
        f"noise floor (300 vs 300, {args.repeats} re-splits): {floor.mean:.2f} +- {floor.std:.2f} "
        f"(min {min(floor.values):.2f}, max {max(floor.values):.2f})"
    )
    print(f"real selection vs test: FID {real_fid:.2f}, confidence {conf_sel.mean:.4f} +- {conf_sel.stderr:.4f}")
    for r in levels:
        print(
            f"sigma {r['sigma']:.1f}: FID {r['fid']:7.2f} +- {r['fid_stderr_over_seeds']:.2f}  "
            f"({r['fid_excess_over_floor_in_floor_stds']:+.1f} floor stds), "
            f"confidence {r['confidence']:.4f} +- {r['confidence_stderr_over_seeds']:.4f}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
