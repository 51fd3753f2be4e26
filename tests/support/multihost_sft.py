"""The stages besides GRPO on a tiny model; results to a JSON and an .npz.

Packed SFT and its held-out loss, a sampled evaluation, rejection sampling into a dataset,
reward-model training on preference triples, and the reward model scoring a different
number of texts on each process.

Run by tests/test_multihost.py as 1 process x 4 fake devices and as 2 processes x 2, so that
every process first sets its fake device count and joins the others:

    python -m tests.support.multihost_sft --out DIR \
        [--coordinator_address=localhost:PORT --num_processes=2 --process_id=I]

Half the pairs are long and half are short, and the data is not shuffled: the first
process packs its long pairs into more rows than the second packs its short ones.
"""
from __future__ import annotations

import argparse
import json
import pathlib

from tests.support.tiny import tiny_config


def pairs():
    from r1jax.train.sft import PairFormatter

    formatter = PairFormatter("arithmetic", template="plain")
    long = [formatter.from_solution({"expression": f"{a} + {b}", "answer": str(a + b)},
                                    " ".join([f"{a} + {b} = {a + b}"] * 6), str(a + b)) for a, b in
            [(8, 6), (3, 4), (9, 1), (2, 7), (5, 5), (6, 3), (1, 8), (4, 9)]]
    short = [formatter.from_solution({"expression": f"{a} * {b}", "answer": str(a * b)}, "", str(a * b))
             for a, b in [(2, 3), (4, 2), (3, 3), (5, 1), (2, 2), (6, 1), (1, 7), (3, 2)]]
    return long + short  # global batch of 16: process 0 gets the long ones, process 1 the short ones


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--coordinator_address")
    parser.add_argument("--num_processes", type=int)
    parser.add_argument("--process_id", type=int)
    args = parser.parse_args()

    from r1jax import distributed

    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id, detect=False)
    import jax
    import numpy as np
    from flax import nnx

    from r1jax.data import PromptIterator
    from r1jax.data.rejection import load_sft_dataset
    from r1jax.evaluation.evaluate import evaluate_policy
    from r1jax.models import Transformer
    from r1jax.models.reward_model import RewardModel
    from r1jax.pipelines.stages.rejection import rejection_sample
    from r1jax.rollout import PromptRenderer
    from r1jax.sharding import make_mesh
    from r1jax.tasks import get_task
    from r1jax.tokenizers import train_sentencepiece
    from r1jax.train.loop import LoopSettings, run_training
    from r1jax.train.reward_model import RewardModelSettings, RewardModelTraining, score_texts
    from r1jax.train.sft import SFT, SFTSettings, pack_pairs
    from r1jax.train.state import make_optimizer

    out = pathlib.Path(args.out)
    data = pairs()
    tokenizer = distributed.primary_first(lambda: train_sentencepiece(
        [p + c for p, c in data] * 4, out / "t.model", vocab_size=160, byte_fallback=False, hard_vocab_limit=False))
    mesh = make_mesh({"fsdp": -1})
    config = tiny_config(vocab_size=tokenizer.vocab_size, max_position_embeddings=256, bos_token_id=tokenizer.bos_id,
                         eos_token_id=tokenizer.eos_id)
    sft = SFT(SFTSettings(max_length=128, packing=True), tokenizer=tokenizer, mesh=mesh)
    # the rows each process packs its share into, before they are evened out
    rows = distributed.allgather_objects(len(pack_pairs(tokenizer, data[distributed.process_share(len(data))],
                                                        max_length=128)["tokens"]))
    result = run_training(
        LoopSettings(steps=3, save_every=10), progress=False, workdir=out / "sft",
        model=Transformer(config, rngs=nnx.Rngs(0)), optimizer=make_optimizer(1e-2, 1, 3), loss_fn=sft.objective(),
        data=PromptIterator(data, batch_size=len(data), seed=0, shuffle=False), make_batches=sft.make_batches,
        mesh=mesh, evaluate=lambda state, step: sft.evaluate(state, data[:5]))
    examples = [{"expression": f"{a} + {b}", "answer": str(a + b)} for a, b in [(1, 2), (3, 3), (2, 5)]]
    sampled = evaluate_policy(result.state.graphdef, result.state.params, PromptRenderer(tokenizer, "plain"),
                              examples, task=get_task("arithmetic"),
                              rng=jax.random.key(1), num_samples=4, max_prompt_length=64, max_new_tokens=12,
                              temperature=1.0, top_p=1.0, mesh=mesh)
    params = {"/".join(map(str, path)): np.asarray(v) for path, v in
              nnx.to_flat_state(distributed.host_copy(result.state.params))}

    renderer = PromptRenderer(tokenizer, "plain")
    stats = rejection_sample(result.state.graphdef, result.state.params, renderer, examples * 2,
                             output_dir=out / "rejection", task=get_task("arithmetic"),
                             correct_fn=lambda completion, **example: 1.0, num_samples=4, max_new_tokens=12,
                             max_prompt_length=64, temperature=1.0, top_p=1.0, provenance={}, chunk_size=4,
                             mesh=mesh, seed=0)  # 6 prompts: a full chunk and a short one
    records = [(r["prompt"], r["completion"]) for r in load_sft_dataset(out / "rejection")]

    triples = [(p, c, "?") for p, c in data]  # prefer each pair's completion to "?"
    rm_stage = RewardModelTraining(RewardModelSettings(max_length=128), tokenizer=tokenizer, mesh=mesh)
    rm = run_training(
        LoopSettings(steps=2, save_every=10), progress=False, workdir=out / "reward_model",
        model=RewardModel.from_transformer(result.state.model()), optimizer=make_optimizer(1e-2, 1, 2),
        loss_fn=rm_stage.objective(), data=PromptIterator(triples, batch_size=len(triples), seed=0, shuffle=False),
        make_batches=rm_stage.make_batches, mesh=mesh)
    texts = [c for _, c in data[:7]]
    share = slice(0, 5) if jax.process_index() == 0 else slice(5, 7)  # 5 texts here, 2 there (all 7 on 1)
    mine = texts if jax.process_count() == 1 else texts[share]
    scores = np.concatenate(distributed.allgather_objects(score_texts(
        rm.state.graphdef, rm.state.params, tokenizer, ["Q:"] * len(mine), mine, mesh=mesh, batch_size=4)))
    if distributed.is_primary():
        np.savez(out / "params.npz", **params)
        (out / "result.json").write_text(json.dumps({
            "rows_per_process": rows, "eval": result.eval_metrics, "sampled": sampled,
            "rejection": {"kept": stats.kept, "dropped": stats.dropped, "records": records},
            "scores": scores.tolist()}, indent=2))


if __name__ == "__main__":
    main()
