"""`python -m core.build`: build (or confirm cached) every model the service needs."""

from __future__ import annotations

import time

from tqdm import tqdm

from .artifacts import SERVED_VARIANT, build_embedder, build_llm, models_dir


def build_served_variant(progress) -> object:
    from ..quant.variants import ensure_variant

    progress(f"building {SERVED_VARIANT}")
    return ensure_variant(build_llm(progress=progress), SERVED_VARIANT, progress=False)


def main() -> None:
    steps = [("language model", build_llm), (f"served variant {SERVED_VARIANT}", build_served_variant),
             ("embedder", build_embedder)]
    with tqdm(total=len(steps), desc="model build", unit="model") as bar:
        for label, build in steps:
            start = time.perf_counter()
            path = build(progress=lambda msg: bar.set_postfix_str(msg))
            bar.write(f"{label}: {path} ({time.perf_counter() - start:.1f} s)")
            bar.update()
    print(f"models ready in {models_dir()}")


if __name__ == "__main__":
    main()
