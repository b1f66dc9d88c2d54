"""Hugging Face transformers on torch (CPU): the training-step peers of train_throughput.py.

Runs in its own virtual environment (torch and transformers are not project dependencies;
`train_throughput.py --peers torch` creates it with `ensure_venv`). It imports neither
TensorFlow nor Keras, and prints JSON.

Contenders, all at the shape given on the command line (by default the shared "tiny" one):
  hf-bert-mlm-gathered  BertForMaskedLM: encoder, then the MLM head only at the masked positions
  hf-bert-mlm-full      BertForMaskedLM as shipped: logits at every position, loss on the masked ones
  hf-gpt2-clm           GPT2LMHeadModel: logits at every position, next-token loss
  hf-bert-classifier    BertForSequenceClassification
Each step: zero_grad, forward, cross-entropy, backward, global-norm clipping at 1.0, AdamW
(the zoo recipes' optimiser), so the work matches a Keras `train_on_batch`.

Two modes:
  one-shot:  torch_peer.py --contenders hf-gpt2-clm --warmup 3 --steps 15   -> one JSON object
  serve:     torch_peer.py --serve   then JSON lines on stdin:
             {"cmd": "setup", "contender": NAME} -> {"first_step_s": ...}
             {"cmd": "run", "contender": NAME, "steps": N} -> {"times": [[wall s, CPU s], ...]}
             {"cmd": "quit"}
  The serve mode lets train_throughput.py interleave torch steps with Keras steps (A B A B)
  while only one of the two processes computes at a time.
"""

import argparse
import json
import os
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_VENV = os.path.join(BENCH_DIR, ".venv-torch")
DEFAULT_REQUIREMENTS = ("torch==2.13.0", "transformers")
CONTENDERS = ("hf-bert-mlm-gathered", "hf-bert-mlm-full", "hf-gpt2-clm", "hf-bert-classifier")


def ensure_venv(venv=DEFAULT_VENV, requirements=DEFAULT_REQUIREMENTS, log=print):
    """The python of a virtual environment holding torch and transformers, created on first use.

    A `.gitignore` holding `*` is written inside the environment so git never sees it.
    """
    python = os.path.join(venv, "bin", "python")
    check = [python, "-c", "import torch, transformers"]
    if os.path.exists(python) and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    log(f"Creating {venv} with {' '.join(requirements)} (a few minutes, once)...")
    # From inside a virtual environment, `-m venv` bases the new one on the same interpreter.
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    with open(os.path.join(venv, ".gitignore"), "w") as f:
        f.write("# created by bench/torch_peer.py\n*\n")
    subprocess.run([python, "-m", "pip", "install", "-q", *requirements], check=True)
    subprocess.run(check, check=True)
    return python


# -- everything below runs inside the torch environment ---------------------------------------


def _batches(kind, args):
    sys.path.insert(0, BENCH_DIR)
    import common  # noqa: E402 - numpy only
    import torch

    arrays = common.synthetic_batches(
        kind, args.batch_size, args.sequence_length, args.vocabulary_size, masked_positions=args.masked_positions
    )
    tensors = {}
    for key, value in arrays.items():
        tensor = torch.from_numpy(value)
        tensors[key] = tensor.long() if value.dtype.kind == "i" else tensor
    return tensors


def build(name, args):
    """(step function, tokens per step) for one contender."""
    import torch
    import transformers

    torch.manual_seed(0)
    shape = dict(
        vocab_size=args.vocabulary_size, hidden_size=args.hidden_dim, num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads, intermediate_size=args.intermediate_dim,
        max_position_embeddings=args.sequence_length,
    )
    loss_function = torch.nn.CrossEntropyLoss()
    if name.startswith("hf-bert-mlm"):
        model = transformers.BertForMaskedLM(transformers.BertConfig(**shape))
        batch = _batches("mlm", args)
        positions = batch["mask_positions"]

        def loss_of():
            if name == "hf-bert-mlm-full":
                logits = model(input_ids=batch["token_ids"], attention_mask=batch["padding_mask"].long()).logits
                logits = torch.gather(logits, 1, positions[..., None].expand(-1, -1, logits.shape[-1]))
            else:
                sequence = model.bert(input_ids=batch["token_ids"], attention_mask=batch["padding_mask"].long())[0]
                gathered = torch.gather(sequence, 1, positions[..., None].expand(-1, -1, sequence.shape[-1]))
                logits = model.cls(gathered)
            return loss_function(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1))

    elif name == "hf-gpt2-clm":
        config = transformers.GPT2Config(
            vocab_size=args.vocabulary_size, n_embd=args.hidden_dim, n_layer=args.num_layers, n_head=args.num_heads,
            n_inner=args.intermediate_dim, n_positions=args.sequence_length,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,  # the zoo's gpt-clm trains without dropout
            bos_token_id=1, eos_token_id=2,  # GPT-2's 50256 is outside a small vocabulary
        )
        model = transformers.GPT2LMHeadModel(config)
        batch = _batches("clm", args)

        def loss_of():
            logits = model(input_ids=batch["token_ids"]).logits
            return loss_function(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1))

    elif name == "hf-bert-classifier":
        model = transformers.BertForSequenceClassification(transformers.BertConfig(num_labels=4, **shape))
        batch = _batches("classify", args)

        def loss_of():
            logits = model(input_ids=batch["token_ids"], attention_mask=batch["padding_mask"].long()).logits
            return loss_function(logits, batch["labels"])

    else:
        raise ValueError(f"Unknown torch contender {name!r}; expected one of {', '.join(CONTENDERS)}.")

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.detach().item()

    return step, args.batch_size * args.sequence_length


def timed(step, steps):
    """[(wall seconds, process CPU seconds)] of `steps` steps."""
    times = []
    for _ in range(steps):
        cpu_start = time.process_time()
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start, time.process_time() - cpu_start))
    return times


def serve(args):
    steps = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            if request["cmd"] == "quit":
                break
            name = request["contender"]
            if request["cmd"] == "setup":
                steps[name], tokens = build(name, args)
                first = timed(steps[name], 1)[0][0]
                reply = {"first_step_s": first, "tokens_per_step": tokens}
            elif request["cmd"] == "run":
                reply = {"times": timed(steps[name], int(request["steps"]))}
            else:
                reply = {"error": f"unknown command {request['cmd']!r}"}
        except Exception as error:  # reported to the parent, which stops the benchmark
            reply = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(reply), flush=True)


def one_shot(args):
    results = {}
    for name in args.contenders.split(","):
        step, tokens = build(name, args)
        first = timed(step, 1)[0][0]
        timed(step, args.warmup)
        times = [wall for wall, _ in timed(step, args.steps)]
        times_sorted = sorted(times)
        median = times_sorted[len(times) // 2] if len(times) % 2 else sum(times_sorted[len(times) // 2 - 1 : len(times) // 2 + 1]) / 2
        results[name] = {"first_step_s": first, "median_s": median, "tokens_per_s": tokens / median, "times": times}
    print(json.dumps(results))


def versions():
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "torch_threads": torch.get_num_threads()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", action="store_true", help="answer JSON-line requests on stdin (see above)")
    parser.add_argument("--versions", action="store_true", help="print torch/transformers versions as JSON and exit")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="one-shot mode: comma-separated names")
    parser.add_argument("--warmup", type=int, default=3, help="one-shot mode: untimed steps after the first")
    parser.add_argument("--steps", type=int, default=15, help="one-shot mode: timed steps")
    parser.add_argument("--vocabulary-size", type=int, default=8192)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--hidden-dim", type=int, default=128)
    parser.add_argument("--num-heads", type=int, default=2)
    parser.add_argument("--intermediate-dim", type=int, default=512)
    parser.add_argument("--masked-positions", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default 0: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.versions:
        print(json.dumps(versions()))
    elif args.serve:
        serve(args)
    else:
        one_shot(args)


if __name__ == "__main__":
    main()
