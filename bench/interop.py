"""Hugging Face `transformers` reads the zoo's `zoo export --format hf` directories.

For each run given, exports it with `zoo export --format hf` (trainers.export_commands.export_run),
computes the zoo's token ids and outputs on fixed texts, then, in a torch + transformers
virtual environment (not a project dependency; created on first use as bench/torch_peer.py does,
by default the same bench/.venv-torch), loads the export and compares:

- token ids: `AutoTokenizer.from_pretrained(export)(text)` against the zoo's preprocessor
  (gpt-clm: `[SEP]` + tokens; encoders: `[CLS]` tokens `[SEP]`); must be equal;
- logits on the zoo's ids: `GPT2LMHeadModel`, `BertForMaskedLM` (every position), and for a
  classifier `BertModel` + the export's sentence-transformers head (`1_Pooling`, `2_Dense`,
  applied by hand; also through `SentenceTransformer` when that package is installed);
  the largest absolute difference must be at most 1e-4;
- gpt-clm: greedy generation (`generate(do_sample=False)`, stopping at `[SEP]`) against
  `CausalLM.generate(temperature=0)`, token for token;
- the loading report: no missing or unexpected weights.

    python bench/interop.py --gpt-clm runs/gpt-clm-tiny --bert-mlm runs/bert-mlm-tiny --classifier runs/classifier-tiny

Writes bench/results/interop.json and interop.md (replacing the previous ones); exit status 1
when a check fails.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
TOLERANCE = 1e-4
MAX_NEW_TOKENS = 24
PROMPTS = [
    "def fibonacci(n):",
    "import os\nimport sys\n\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
    "for index, value in enumerate(values):\n",
    "The quick brown fox",
    "SEPARATOR = '[SEP]'  # a literal special token is text to the zoo",
]
ENCODER_TEXTS = [
    "a domesticated carnivorous mammal that hunts mice",
    "any of various edible fruits with a hard seed",
    "a hand tool with a heavy rigid head and a handle",
    "def parse(self, text):\n    return text.split()",
    "Café naïve résumé, Ångström — 日本語 🙂",
    "a literal [MASK] or [CLS] in raw text is text",
]


# -- the zoo side (the project's environment) ----------------------------------------------------


def zoo_side(kind, run, work):
    """Exports `run` as `kind` and returns the request for the peer: texts, zoo ids and outputs."""
    import numpy as np

    from recipes.base import load_checkpoint
    from trainers.export_commands import export_run
    from zoo.data.preprocessing import load_preprocessor

    directory = export_run(run, out=os.path.join(work, kind), format="hf")
    model, tokenizer, _ = load_checkpoint(run)
    preprocessor = load_preprocessor(run, tokenizer=tokenizer)
    item = {"kind": kind, "run": run, "directory": os.path.abspath(directory), "ids": [], "outputs": []}
    if kind == "gpt-clm":
        item["texts"] = PROMPTS
        for text in PROMPTS:
            ids = preprocessor.prompt_ids([text]).to_list()[0]
            item["ids"].append(ids)
            item["outputs"].append(np.asarray(model.decoder(np.array([ids], "int32")))[0])
        item["generated"] = [model.generate([ids], max_new_tokens=MAX_NEW_TOKENS, end_token_id=preprocessor.sep_id)[0]
                             for ids in item["ids"]]
        item.update(end_token_id=preprocessor.sep_id, pad_token_id=preprocessor.pad_id, max_new_tokens=MAX_NEW_TOKENS)
    else:
        item["texts"] = ENCODER_TEXTS
        for text in ENCODER_TEXTS:
            token_ids, padding_mask = preprocessor.pack(preprocessor.tokenize([text]), pad_to_longest=True)
            ids = np.asarray(token_ids)[0][np.asarray(padding_mask)[0]]
            item["ids"].append(ids.tolist())
            inputs = {"token_ids": ids[None].astype("int32"), "padding_mask": np.ones((1, len(ids)), bool)}
            if kind == "bert-mlm":
                inputs["mask_positions"] = np.arange(len(ids), dtype="int32")[None]
            item["outputs"].append(np.asarray(model(inputs, training=False))[0])
    outputs_path = os.path.join(work, f"{kind}-zoo.npz")
    np.savez(outputs_path, *item.pop("outputs"))
    item["outputs_file"] = outputs_path
    return item


# -- the transformers side (the torch environment) -----------------------------------------------


def peer(request_path, reply_path):
    """Runs inside the torch environment: loads each export with transformers and compares."""
    import numpy as np
    import torch
    import transformers

    torch.manual_seed(0)
    with open(request_path) as file:
        request = json.load(file)
    results = []
    for item in request["exports"]:
        directory, kind = item["directory"], item["kind"]
        zoo_outputs = np.load(item["outputs_file"])
        zoo_outputs = [zoo_outputs[f"arr_{index}"] for index in range(len(item["texts"]))]
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
        hf_ids = [tokenizer(text)["input_ids"] for text in item["texts"]]
        result = {
            "kind": kind, "run": item["run"], "texts": len(item["texts"]),
            "tokenizer_class": type(tokenizer).__name__,
            "ids_equal": sum(a == b for a, b in zip(hf_ids, item["ids"])),
            "ids_mismatches": [{"text": t, "hf": a, "zoo": b} for t, a, b in zip(item["texts"], hf_ids, item["ids"]) if a != b],
        }
        if kind == "gpt-clm":
            model_class = transformers.GPT2LMHeadModel
        elif kind == "bert-mlm":
            model_class = transformers.BertForMaskedLM
        else:
            model_class = transformers.BertModel
        model, info = model_class.from_pretrained(directory, output_loading_info=True)
        model.eval()
        result["model_class"] = model_class.__name__
        loading = {key: sorted(map(str, value)) for key, value in info.items() if value}
        # BertModel has BERT's [CLS] pooler, which the zoo's encoder lacks (the classifier's head
        # is in 1_Pooling and 2_Dense): its weights are missing by design and unused here.
        pooler = [key for key in loading.get("missing_keys", []) if key.startswith("pooler.")]
        if pooler:
            result["missing_by_design"] = pooler
            loading["missing_keys"] = [key for key in loading["missing_keys"] if key not in pooler]
        result["loading"] = {key: value for key, value in loading.items() if value}
        head = _sentence_transformers_head(directory, torch) if kind == "classifier" else None
        differences = []
        with torch.no_grad():
            for ids, expected in zip(item["ids"], zoo_outputs):
                input_ids = torch.tensor([ids])
                outputs = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
                if kind == "classifier":
                    logits = head(outputs.last_hidden_state, torch.ones_like(input_ids))
                else:
                    logits = outputs.logits
                differences.append(float(np.abs(logits[0].numpy() - expected).max()))
            if kind == "gpt-clm":
                generated = []
                for ids in item["ids"]:
                    input_ids = torch.tensor([ids])
                    output = model.generate(
                        input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=item["max_new_tokens"],
                        do_sample=False, eos_token_id=item["end_token_id"], pad_token_id=item["pad_token_id"],
                    )
                    generated.append(output[0, len(ids):].tolist())
                result["generation_equal"] = sum(a == b for a, b in zip(generated, item["generated"]))
                result["generated_tokens"] = sum(len(tokens) for tokens in item["generated"])
                result["generation_mismatches"] = [
                    {"prompt": t, "hf": a, "zoo": b} for t, a, b in zip(item["texts"], generated, item["generated"]) if a != b
                ]
        result["max_abs_logit_difference"] = max(differences)
        if kind == "classifier":
            result["sentence_transformers"] = _through_sentence_transformers(directory, item, zoo_outputs)
        results.append(result)
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    for name in ("tokenizers", "sentence_transformers"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    with open(reply_path, "w") as file:
        json.dump({"results": results, "versions": versions}, file, indent=1)


def _sentence_transformers_head(directory, torch):
    """The classifier head the export describes (1_Pooling, 2_Dense), as a torch function."""
    from safetensors.torch import load_file

    with open(os.path.join(directory, "1_Pooling", "config.json")) as file:
        pooling = json.load(file)
    dense = load_file(os.path.join(directory, "2_Dense", "model.safetensors"))

    def head(hidden, mask):
        if pooling["pooling_mode_cls_token"]:
            pooled = hidden[:, 0]
        else:
            weights = mask[..., None].to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return pooled @ dense["linear.weight"].T + dense["linear.bias"]

    return head


def _through_sentence_transformers(directory, item, zoo_outputs):
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return "not installed"
    import numpy as np

    model = SentenceTransformer(directory, device="cpu")
    encoded = model.encode(item["texts"], convert_to_numpy=True)
    return {"max_abs_logit_difference": float(max(np.abs(e - z).max() for e, z in zip(encoded, zoo_outputs)))}


# -- driver ------------------------------------------------------------------------------------------


def check(result):
    """The failed checks of one result (an empty list when it passes)."""
    failures = []
    if result["ids_equal"] != result["texts"]:
        failures.append("token ids")
    if result["max_abs_logit_difference"] > TOLERANCE:
        failures.append("logits")
    if result.get("loading"):
        failures.append("loading")
    if "generation_equal" in result and result["generation_equal"] != result["texts"]:
        failures.append("generation")
    st = result.get("sentence_transformers")
    if isinstance(st, dict) and st["max_abs_logit_difference"] > TOLERANCE:
        failures.append("sentence-transformers")
    return failures


def markdown(record):
    sys.path.insert(0, BENCH_DIR)
    import common

    rows = []
    for result in record["results"]:
        generation = (f"{result['generation_equal']}/{result['texts']} prompts ({result['generated_tokens']} tokens)"
                      if "generation_equal" in result else "-")
        st = result.get("sentence_transformers")
        st = f"{st['max_abs_logit_difference']:.1e}" if isinstance(st, dict) else (st or "-")
        rows.append([
            result["kind"], result["model_class"], f"{result['ids_equal']}/{result['texts']}",
            f"{result['max_abs_logit_difference']:.1e}", generation, st,
            ", ".join(check(result)) or "pass",
        ])
    table = common.markdown_table(
        ["recipe", "loaded as", "token ids equal", "max abs logit diff", "greedy generation equal", "sentence-transformers", "result"],
        rows,
    )
    versions = ", ".join(f"{name} {version}" for name, version in record["peer_versions"].items())
    runs = "; ".join(f"{result['kind']} `{result['run']}`" for result in record["results"])
    notes = ""
    if any(result.get("missing_by_design") for result in record["results"]):
        notes = ("BertModel's [CLS] pooler (`pooler.dense`) is not part of the zoo's encoder: transformers reports it "
                 "missing and initialises it; the classifier's head is the export's 1_Pooling + 2_Dense.\n\n")
    return (f"# Interoperability: zoo export --format hf read by transformers\n\n`{record['command']}`\n\n{table}\n\n"
            f"{notes}Runs: {runs}. Tolerance {TOLERANCE:g} on logits (float32 on both sides). Peer: {versions}. "
            f"{common.machine_line(record['environment'])}\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpt-clm", help="a gpt-clm run (or checkpoint) directory")
    parser.add_argument("--bert-mlm", help="a bert-mlm run directory")
    parser.add_argument("--classifier", help="a classifier (or distill) run directory")
    parser.add_argument("--venv", help="the torch + transformers virtual environment (default: bench/.venv-torch, created on first use)")
    parser.add_argument("--work-dir", help="where the exports go (default: a new temporary directory)")
    parser.add_argument("--results-dir", default=os.path.join(BENCH_DIR, "results"))
    parser.add_argument("--peer", nargs=2, metavar=("REQUEST", "REPLY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer:
        peer(*args.peer)
        return 0
    runs = [(kind, run) for kind, run in (("gpt-clm", args.gpt_clm), ("bert-mlm", args.bert_mlm),
                                          ("classifier", args.classifier)) if run]
    if not runs:
        parser.error("give at least one of --gpt-clm, --bert-mlm, --classifier")
    sys.path.insert(0, REPO_ROOT)
    sys.path.insert(0, BENCH_DIR)
    import common
    import torch_peer

    environment = common.environment(("tensorflow", "keras", "keras_hub", "tokenizers", "numpy"))
    python = torch_peer.ensure_venv(args.venv or torch_peer.DEFAULT_VENV)
    work = args.work_dir or tempfile.mkdtemp(prefix="zoo-interop-")
    request = {"exports": [zoo_side(kind, run, work) for kind, run in runs]}
    request_path, reply_path = os.path.join(work, "request.json"), os.path.join(work, "reply.json")
    with open(request_path, "w") as file:
        json.dump(request, file)
    subprocess.run([python, os.path.abspath(__file__), "--peer", request_path, reply_path], check=True)
    with open(reply_path) as file:
        reply = json.load(file)
    record = {
        "command": " ".join([os.path.relpath(sys.argv[0], REPO_ROOT)] + sys.argv[1:]),
        "tolerance": TOLERANCE,
        "results": reply["results"],
        "peer_versions": reply["versions"],
        "environment": {**environment, "load_average_at_end": common.load_average()},
    }
    text = markdown(record)
    print(text)
    os.makedirs(args.results_dir, exist_ok=True)
    with open(os.path.join(args.results_dir, "interop.json"), "w") as file:
        json.dump(record, file, indent=1)
        file.write("\n")
    with open(os.path.join(args.results_dir, "interop.md"), "w") as file:
        file.write(text)
    failed = [result["kind"] for result in record["results"] if check(result)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
