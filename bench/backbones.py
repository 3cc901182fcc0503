"""Other offline backbones on kinds of places (issue 21): google-coral/test_data's CPU TFLite
models (where the shipped MobileNet v1 comes from, Apache-2.0) on EuroSAT, 100 a class.

Feature: each model's global-average-pooled tensor before its classifier (the output of the
shipped embedding extractor), de-quantised; pictures resized bilinear to the model's input, as
geosearch's ``_resized_rgb`` does. Metrics: ``bench.protocols.kinds`` (every picture a query,
the rest the candidates, relevant = its class): plain cosine, centred, centred with the search's
expansion, and PCA to 128-d with geosearch's partial whitening then expansion. Time: CNN ms a
picture on one thread, batch 1, after a warm-up, the shipped model timed before each for the
ratio. A survey, not a quality claim of geosearch (``quality.py --only semantic`` is).

    .venv/bin/python bench/backbones.py --models DIR [--per-class 500] [KEY ...]

DIR holds the .tflite files named in ``SPECS`` (from google-coral/test_data); the shipped one
is read from geosearch/models. Features are cached and results written under ``--work``.
Prints one JSON line a model, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from bench.protocols.common import unit_rows  # noqa: E402
from bench.protocols.kinds import (  # noqa: E402
    cosine_rankings,
    eurosat_sample,
    expanded_rankings,
    kinds_metrics,
)
from geosearch.features import Projection  # noqa: E402
from geosearch.features.cnn import MODELS_DIR, TFLITE_MODELS  # noqa: E402

warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")

TIMED = 200  # pictures timed after WARMUP
WARMUP = 10
EXPANSION = 10  # geosearch's default search.expansion
PCA_DIMS, WHITENING = 128, 0.25  # geosearch's vectors.dims / vectors.whitening defaults
V1 = TFLITE_MODELS["mobilenet_v1"]

SPECS: dict[str, dict] = {
    "v1_224_ref": dict(
        file=V1,
        tensors=["MobilenetV1/Logits/AvgPool_1a/AvgPool"],
        note="shipped file (byte-identical)",
    ),
    "v1_0.75_192": dict(
        file="mobilenet_v1_0.75_192_quant.tflite", tensors=["MobilenetV1/Logits/AvgPool_1a/AvgPool"]
    ),
    "v1_0.5_160": dict(
        file="mobilenet_v1_0.5_160_quant.tflite", tensors=["MobilenetV1/Logits/AvgPool_1a/AvgPool"]
    ),
    "v1_0.25_128": dict(
        file="mobilenet_v1_0.25_128_quant.tflite", tensors=["MobilenetV1/Logits/AvgPool_1a/AvgPool"]
    ),
    "v2_224": dict(
        file="mobilenet_v2_1.0_224_quant.tflite", tensors=["MobilenetV2/Logits/AvgPool"]
    ),
    "tf2_v2_224_ptq": dict(
        file="tf2_mobilenet_v2_1.0_224_ptq.tflite", tensors=["MobileNetV2/top/GlobalPool/Mean"]
    ),
    "v2_224_inat_bird": dict(
        file="mobilenet_v2_1.0_224_inat_bird_quant.tflite", tensors=["AvgPool/AvgPool"]
    ),
    "v2_224_inat_insect": dict(
        file="mobilenet_v2_1.0_224_inat_insect_quant.tflite", tensors=["AvgPool/AvgPool"]
    ),
    "deeplab_v3_mnv2_pascal_513": dict(
        file="deeplabv3_mnv2_pascal_quant.tflite", tensors=["AvgPool2D/AvgPool"]
    ),
    "deeplab_mnedgetpu_cityscapes_513": dict(
        file="deeplab_mobilenet_edgetpu_slim_cityscapes_quant.tflite", tensors=["AvgPool2D/AvgPool"]
    ),
    # Extras from the shipped file itself (no new model): mid-level layers, pooled here
    "v1_224_pw11_gap": dict(
        file=V1,
        tensors=["Conv2d_11_pointwise/Relu6"],
        note="shipped file, 14x14x512 layer averaged",
    ),
    "v1_224_pw12_gap": dict(
        file=V1, tensors=["Conv2d_12_pointwise/Relu6"], note="shipped file, 7x7x1024 layer averaged"
    ),
    "v1_0.75_192_pw11_gap": dict(
        file="mobilenet_v1_0.75_192_quant.tflite",
        tensors=["Conv2d_11_pointwise/Relu6"],
        note="12x12x384 layer averaged",
    ),
    # Input size changed (resize_tensor_input), the last layer averaged here
    "v1_0.75_at224_pw13gap": dict(
        file="mobilenet_v1_0.75_192_quant.tflite", size=224, tensors=["Conv2d_13_pointwise/Relu6"]
    ),
    "v1_0.75_at160_pw13gap": dict(
        file="mobilenet_v1_0.75_192_quant.tflite", size=160, tensors=["Conv2d_13_pointwise/Relu6"]
    ),
    "v1_224_at192_pw13gap": dict(
        file=V1, size=192, tensors=["Conv2d_13_pointwise/Relu6"], note="shipped file at 192"
    ),
    "v1_224_at256_pw13gap": dict(
        file=V1, size=256, tensors=["Conv2d_13_pointwise/Relu6"], note="shipped file at 256"
    ),
    "v1_224_pw11+out": dict(
        file=V1,
        tensors=["Conv2d_11_pointwise/Relu6", "MobilenetV1/Logits/AvgPool_1a/AvgPool"],
        note="shipped file, two unit blocks concatenated",
    ),
}


def model_path(spec: dict) -> Path:
    """The shipped model from geosearch's package, the others from ``--models``."""
    return MODELS_DIR / V1 if spec["file"] == V1 else MODELS / spec["file"]


def opened(spec: dict, preserve: bool) -> Interpreter:
    """The spec's model, single-threaded, its input resized to ``spec['size']`` if given."""
    interpreter = Interpreter(
        model_path=str(model_path(spec)), num_threads=1, experimental_preserve_all_tensors=preserve
    )
    if "size" in spec:
        index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(index, [1, spec["size"], spec["size"], 3], strict=False)
    interpreter.allocate_tensors()
    return interpreter


def find_tensor(interpreter: Interpreter, needle: str) -> dict:
    """The activation tensor named ``needle`` (weights come first in these files)."""
    hits = [
        d
        for d in interpreter.get_tensor_details()
        if needle in d["name"] and len(d["shape"]) == 4 and d["shape"][0] == 1
    ]
    if not hits:
        raise KeyError(needle)
    return max(hits, key=lambda d: d["index"])


def dequantised(interpreter: Interpreter, detail: dict) -> np.ndarray:
    """A (1, h, w, c) tensor de-quantised and averaged over h and w."""
    raw = interpreter.get_tensor(detail["index"])
    scale, zero_point = detail["quantization"]
    values = raw.astype(np.float32)
    if scale:
        values = (values - zero_point) * scale
    return values.reshape(values.shape[1], values.shape[2], values.shape[3]).mean(axis=(0, 1))


def resized(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR))


def features(key: str, paths: list[Path]) -> np.ndarray:
    """The model's pooled features of ``paths`` (cached in WORK/features)."""
    spec = SPECS[key]
    cache = WORK / "features" / f"{key}_{PER_CLASS}.npy"
    if cache.is_file():
        return np.load(cache)
    interpreter = opened(spec, preserve=True)
    inp = interpreter.get_input_details()[0]
    size = int(inp["shape"][1])
    details = [find_tensor(interpreter, name) for name in spec["tensors"]]
    for d in details:
        print(f"   feature tensor {d['index']} {d['name'][:70]} {list(d['shape'])}", flush=True)
    blocks = [[] for _ in details]
    for path in paths:
        interpreter.set_tensor(inp["index"], resized(path, size)[None].astype(inp["dtype"]))
        interpreter.invoke()
        for block, detail in zip(blocks, details, strict=True):
            block.append(dequantised(interpreter, detail))
    arrays = [np.stack(b) for b in blocks]
    out = arrays[0] if len(arrays) == 1 else np.hstack([unit_rows(a) for a in arrays])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, out.astype(np.float32))
    return out


def timed_ms(spec: dict, paths: list[Path]) -> float:
    """Median ms a picture, single-threaded, batch 1: resize + invoke + read the output
    (a plain interpreter, XNNPACK on, as geosearch runs it; for a classifier the logits are
    computed too: a small extra the feature-only model would not pay)."""
    interpreter = opened(spec, preserve=False)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    size = int(inp["shape"][1])
    images = []
    for path in paths[: WARMUP + TIMED]:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    times = []
    for n, image in enumerate(images):
        started = time.perf_counter()
        pixels = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))
        interpreter.set_tensor(inp["index"], pixels[None].astype(inp["dtype"]))
        interpreter.invoke()
        interpreter.get_tensor(out["index"])
        if n >= WARMUP:
            times.append(time.perf_counter() - started)
    return 1000.0 * float(np.median(times))


def metrics(raw: np.ndarray, labels: np.ndarray) -> dict[str, dict]:
    """mAP@R and P@10 of the four ways of ranking (see the module's docstring)."""
    rows = range(len(raw))
    plain = unit_rows(raw)
    centred = unit_rows(raw - raw.mean(axis=0))
    result = {
        "a_cosine": kinds_metrics(cosine_rankings(plain, rows), labels, rows),
        "b_centred": kinds_metrics(cosine_rankings(centred, rows), labels, rows),
        "c_centred_qe10": kinds_metrics(expanded_rankings(centred, rows, EXPANSION), labels, rows),
    }
    if raw.shape[1] > PCA_DIMS:
        projection = Projection.fit(centred, PCA_DIMS, WHITENING)
        projected = projection.apply(centred)
        result["d_pca128w"] = kinds_metrics(cosine_rankings(projected, rows), labels, rows)
        result["d_pca128w_qe10"] = kinds_metrics(
            expanded_rankings(projected, rows, EXPANSION), labels, rows
        )
    return result


def survey(keys: list[str]) -> None:
    """Measure each model of ``keys``, then print the table of all measured so far."""
    RESULTS.mkdir(exist_ok=True, parents=True)
    sample = eurosat_sample(PER_CLASS)
    paths, labels = sample.paths, sample.labels
    rng = np.random.default_rng(7)
    timing_paths = [paths[i] for i in rng.permutation(len(paths))[: WARMUP + TIMED]]
    for key in keys:
        spec = SPECS[key]
        print(f"== {key}", flush=True)
        try:
            started = time.perf_counter()
            raw = features(key, paths)
            seconds = time.perf_counter() - started
            # the reference timed just before each model, so load swings hit both alike
            ref_ms = timed_ms(SPECS["v1_224_ref"], timing_paths)
            same = spec["file"] == V1 and "size" not in spec
            ms = ref_ms if same else timed_ms(spec, timing_paths)
        except Exception as error:  # noqa: BLE001 - a survey: note and move on
            print(f"   FAILED: {error!r}", flush=True)
            (RESULTS / f"{key}.json").write_text(json.dumps({"key": key, "error": repr(error)}))
            continue
        size = int(opened(spec, preserve=False).get_input_details()[0]["shape"][1])
        record = {
            "key": key,
            "file": spec["file"],
            "note": spec.get("note", ""),
            "input": size,
            "dim": int(raw.shape[1]),
            "mb": round(model_path(spec).stat().st_size / 1e6, 2),
            "ms": round(ms, 2),
            "v1_ms": round(ref_ms, 2),
            "ratio": round(ms / ref_ms, 2),
            "features_s": round(seconds, 1),
            **metrics(raw, labels),
        }
        (RESULTS / f"{key}.json").write_text(json.dumps(record, indent=1))
        print(json.dumps(record), flush=True)
    table()


def fmt(m: dict | None) -> str:
    return f"{m['map_at_r']:.3f} / {m['p_at_10']:.3f}" if m else "-"


def table() -> None:
    """The Markdown table of every model measured (RESULTS), also written to table.md."""
    lines = [
        "| model | test_data path | input | dim | MB | ms/pic (1 thr) | x v1 | a cosine | "
        "b centred | c centred+QE10 | d PCA128w | d+QE10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in SPECS:
        path = RESULTS / f"{key}.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        if "error" in r:
            lines.append(f"| {key} | {SPECS[key]['file']} | failed: {r['error']} |")
            continue
        lines.append(
            f"| {key} | {r['file']} | {r['input']} | {r['dim']} | {r['mb']} | {r['ms']:.1f} | "
            f"{r['ratio']:.2f} | {fmt(r['a_cosine'])} | {fmt(r['b_centred'])} | "
            f"{fmt(r['c_centred_qe10'])} | {fmt(r.get('d_pca128w'))} | "
            f"{fmt(r.get('d_pca128w_qe10'))} |"
        )
    (RESULTS / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    global MODELS, WORK, RESULTS, PER_CLASS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True, help="google-coral/test_data files")
    parser.add_argument("--work", type=Path, default=Path("backbones-work"))
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("keys", nargs="*", help=f"models (default: all): {', '.join(SPECS)}")
    args = parser.parse_args()
    unknown = sorted(set(args.keys) - set(SPECS))
    if unknown:
        parser.error(f"unknown models: {', '.join(unknown)}")
    MODELS, WORK, PER_CLASS = args.models, args.work, args.per_class
    RESULTS = WORK / f"results{PER_CLASS}"
    survey(args.keys or list(SPECS))


MODELS = Path("models")
WORK = Path("backbones-work")
PER_CLASS = 100
RESULTS = WORK / "results100"

if __name__ == "__main__":
    main()
