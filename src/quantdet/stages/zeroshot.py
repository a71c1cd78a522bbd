"""zeroshot-data: a calibration set generated from the FP32 student alone, by a registered
data generator (quantdet.methods, family `generate`)."""
from __future__ import annotations

import time
from pathlib import Path

from quantdet import study
from quantdet.errors import QuantdetError
from quantdet.io_utils import atomic_directory, write_json
from quantdet.stages.common import image_batches, log_job, require, set_threads


def zeroshot_data(params: dict, generator: str, out: str | None = None) -> dict:
    """Generate a calibration set from the FP32 student (ZeroQ's setting: the model is
    calibrated on data made from itself); the real training images are never read. Real
    validation images are read only to draw them beside the generated ones in grid.png."""
    from quantdet.methods import get_method, names
    from quantdet.models.io import load_model
    from quantdet.train.device import numerics, numerics_tags, set_tf32, training_device
    from quantdet.zeroshot.synthetic import image_grid, to_uint8, write_generated_split

    try:
        method = get_method("generate", generator)
    except KeyError:
        raise QuantdetError(f"unknown generator {generator!r}; known: {', '.join(names('generate'))}") from None
    out = Path(out or study.synthetic_dir(generator))
    seed, size = params["study"]["seed"], params["models"]["input_size"]
    set_threads(params["train"]["threads"])
    set_tf32(params["train"]["tf32"])
    source = study.model_file("student-fp32")
    model, payload = load_model(require(source))
    start = time.perf_counter()
    made = method.generate(model, payload, params, seed)
    images, metrics = made["images"], made["metrics"]
    seconds = time.perf_counter() - start
    from quantdet.detectors import letterbox_of

    real = next(iter(image_batches(f"{study.PREPARED}/val", size, 8, letterbox_of(payload["detector"]))))
    summary = {"generator": generator, "source": source, "images": int(images.shape[0]),
               "seconds": round(seconds, 1), "settings": params["quant"]["zeroshot"][generator],
               "numerics": numerics(training_device(), None), **metrics}
    with atomic_directory(out) as tmp:
        write_generated_split(tmp, images, payload["classes"], made["labels"], info=summary)
        if made["trained"] is not None:
            from quantdet.zeroshot.generator import save_generator
            save_generator(tmp / "generator.pt", made["trained"], source=source, history=made["history"])
        image_grid([("real (val)", to_uint8(real)), (generator, to_uint8(images[:8])),
                    ("", to_uint8(images[8:16]))], size).save(tmp / "grid.png")
        write_json(tmp / "summary.json", summary)
    log_job(params, "zeroshot_data", model=None, generator=generator,
            metrics={"seconds": seconds, **metrics},
            tags={"generator": generator, **numerics_tags(summary["numerics"])},
            artifacts=[out / "grid.png", out / "summary.json"])
    return summary
