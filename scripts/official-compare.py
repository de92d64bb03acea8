#!/usr/bin/env python3
"""The official PyTorch LLaDA2.0 reference against `unmask generate --backend cpu`, same prompt.

Runs the official `generate()` of `modeling_llada2_moe.py` (inclusionAI's code as vendored in
github.com/ZHZisZZ/dllm, `dllm/pipelines/llada2/models/`; not part of this repository: pass
the folder holding it and `configuration_llada2_moe.py` with --official) in f32 on the CPU, then
unmask on the same prompt ids and parameters, and prints both times and whether the generated
tokens are the same. The prompt is the model's golden chat prompt repeated to --prompt-len ids.

Needs torch and transformers 4.57 (the version the fixtures were made with):
    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch transformers==4.57.1
    /tmp/torchenv/bin/python scripts/official-compare.py --official /path/to/dllm/pipelines/llada2/models \\
        --model tests/fixtures/tiny-llada2 --prompt-len 1024 --gen-length 256 --repeat 3
With --repeat N the two sides run N times each, alternating, and the times are the medians.
"""

import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def official_module(folder):
    """Imports the official files as a package (the modeling file imports its config relatively)."""
    pkg_root = tempfile.mkdtemp(prefix="llada2_official_")
    pkg = os.path.join(pkg_root, "llada2_official")
    os.mkdir(pkg)
    for name in ("modeling_llada2_moe.py", "configuration_llada2_moe.py"):
        shutil.copy(os.path.join(folder, name), pkg)
    open(os.path.join(pkg, "__init__.py"), "w").close()
    sys.path.insert(0, pkg_root)
    return importlib.import_module("llada2_official.modeling_llada2_moe")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", required=True, help="folder with the official modeling files")
    ap.add_argument("--model", default="tests/fixtures/tiny-llada2")
    ap.add_argument("--unmask", default="target/release/unmask")
    ap.add_argument("--prompt-len", type=int, default=1024)
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each side; times are the medians (the VM's speed drifts)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    golden = json.load(open(os.path.join(args.model, "golden", "generate.json")))
    case = golden["cases"][0]
    base = case["prompt_ids"]
    prompt = (base * (args.prompt_len // len(base) + 1))[: args.prompt_len]
    mask_id, eos_id = case["mask_id"], case["eos_id"]

    m = official_module(args.official)
    model = m.LLaDA2MoeModelLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    # The official generate() builds its block mask (0 / -inf) in bf16, which SDPA refuses beside
    # f32 queries: the same values are handed to the official forward in f32.
    forward = model.forward

    def forward_f32(*a, attention_mask=None, **k):
        if attention_mask is not None:
            attention_mask = attention_mask.to(torch.float32)
        return forward(*a, attention_mask=attention_mask, **k)

    model.forward = forward_f32

    def official_run():
        t0 = time.monotonic()
        out = model.generate(
            inputs=torch.tensor([prompt]),
            temperature=0.0,
            block_length=args.block_length,
            steps=args.steps,
            gen_length=args.gen_length,
            threshold=args.threshold,
            eos_id=eos_id,
            mask_id=mask_id,
        )
        return time.monotonic() - t0, out[0].tolist()

    cmd = [
        args.unmask, "generate", "--model", args.model, "--backend", "cpu",
        "--prompt-ids", ",".join(map(str, prompt)),
        "--gen-length", str(args.gen_length), "--block-length", str(args.block_length),
        "--steps", str(args.steps), "--threshold", str(args.threshold), "--json",
    ]

    def unmask_run():
        t0 = time.monotonic()
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return time.monotonic() - t0, json.loads(r.stdout)

    official_times, unmask_times, unmask_walls, same = [], [], [], []
    # Alternating, so that a drift of the machine's speed weighs on both sides alike.
    for _ in range(max(1, args.repeat)):
        t, official_tokens = official_run()
        official_times.append(t)
        wall, u = unmask_run()
        unmask_walls.append(wall)
        unmask_times.append(u["elapsed_ms"] / 1e3)
        same.append(u["tokens"] == official_tokens)
    official_s = statistics.median(official_times)
    unmask_s = statistics.median(unmask_times)
    unmask_wall_s = statistics.median(unmask_walls)
    result = {
        "prompt_tokens": len(prompt),
        "gen_length": args.gen_length,
        "threads": args.threads,
        "torch": torch.__version__,
        "runs": max(1, args.repeat),
        "official_seconds": official_s,
        "official_seconds_each": official_times,
        "official_tokens": len(official_tokens),
        "unmask_generate_seconds": unmask_s,
        "unmask_generate_seconds_each": unmask_times,
        "unmask_process_seconds": unmask_wall_s,
        "unmask_tokens": len(u["tokens"]),
        "unmask_forwards": u["forwards"],
        "same_tokens": all(same),
        "speedup": official_s / unmask_s,
        "speedup_process": official_s / unmask_wall_s,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            if isinstance(v, list):
                v = " ".join(f"{x:.3f}" for x in v)
            print(f"{k:>28}  {v:.3f}" if isinstance(v, float) else f"{k:>28}  {v}")
    if not result["same_tokens"]:
        print("official:", official_tokens, file=sys.stderr)
        print("unmask:  ", u["tokens"], file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
