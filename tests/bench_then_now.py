"""Benchmark script (not a test; pytest does not collect it): training recipes/s of one model with the code at
CODE_DIR, so that a checkout of an older commit and this one can be timed in turn under the same conditions.

    git worktree add /tmp/then e772145      # the code issue 12 measured
    for c in /tmp/then .; do OMP_WAIT_POLICY=PASSIVE python tests/bench_then_now.py $c decoder-shuffle 10 150; done

Times the whole training loop (data pipeline, forward, backward, optimizer) of WARMUP + STEPS steps on flavornet
($RECIPESET_FLAVORNET_DIR or ../shared/data/flavornet), batch 64, d_model 128, 2 threads, by patching the
Trainer's step (``train_step``, or ``_step`` in older code); prints one JSON line. Variants: decoder-shuffle,
decoder-frequency, set-transformer-mlm.
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock


def main(code: str, variant: str, warm: int, steps: int) -> dict:
    sys.path.insert(0, str(Path(code).resolve()))
    import torch

    torch.set_num_threads(2)
    from recipeset.config import RunConfig
    from recipeset.pipeline import run_training
    from recipeset.training import Trainer

    if not Path(sys.modules["recipeset"].__file__).resolve().is_relative_to(Path(code).resolve()):
        raise SystemExit(f"imported {sys.modules['recipeset'].__file__}, not the code at {code}")
    data = os.environ.get("RECIPESET_FLAVORNET_DIR", str(Path(__file__).resolve().parents[2] / "shared/data/flavornet"))
    models = {"decoder-shuffle": ({"name": "decoder", "d_model": 128}, {"order": "shuffle"}, {"clm": 1.0}),
              "decoder-frequency": ({"name": "decoder", "d_model": 128}, {"order": "frequency"}, {"clm": 1.0}),
              "set-transformer-mlm": ({"name": "set-transformer", "d_model": 128}, {}, {"mlm": 1.0})}
    model, data_keys, weights = models[variant]
    cfg = {"data": {"dataset": "flavornet", "path": data, **data_keys}, "model": model,
           "objectives": {"weights": weights},
           "train": {"batch_size": 64, "max_steps": warm + steps + 10, "eval_every": 10**6,
                     "checkpoint_every": 10**6, "device": "cpu"}}
    name = "train_step" if hasattr(Trainer, "train_step") else "_step"
    original, stamps = getattr(Trainer, name), []

    class Done(Exception):
        pass

    def step(self, batch, *args, **kwargs):
        out = original(self, batch, *args, **kwargs)
        stamps.append(time.perf_counter())
        if len(stamps) == warm + steps + 1:
            raise Done
        return out

    with tempfile.TemporaryDirectory() as out, mock.patch.object(Trainer, name, step):
        try:
            run_training(RunConfig.from_dict(cfg), out_dir=out, track=False, progress=False, evaluate=False)
        except Done:
            pass
    seconds = stamps[-1] - stamps[warm]
    return {"code": code, "variant": variant, "steps": steps, "seconds": round(seconds, 3),
            "recipes_per_s": round(64 * steps / seconds, 1), "threads": torch.get_num_threads(),
            "load": round(os.getloadavg()[0], 2)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
