"""Write worked chain-sum solutions as an SFT dataset: the warm-up of the verifiable-math recipe.

Each line is {"prompt": ..., "response": ...}: a train-split chain_sum problem as the task asks it
(MATH_PROMPT) and its solution one operation a line, left to right, ending on "#### <answer>"
(`rung.llm.tasks.chain_sum_solution`). Test-split problems never appear, so the held-out
accuracy that `rung train sft` and `rung train grpo` report stays held out.

    python recipes/llm/worked_sums.py -o runs/llm/worked_sums.jsonl
    rung train sft --model smollm2-135m --dataset runs/llm/worked_sums.jsonl --task chain_sum ...

(`rung train sft --task chain_sum` with no --dataset streams the same kind of solution for fresh
train-split problems; the file is a fixed, inspectable set.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rung.llm.config import parse_options
from rung.llm.tasks import get_task

DEFAULT_OPTIONS = "min_terms=2,max_terms=3,min_digits=1,max_digits=2,scorer=math"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--out", required=True, help="JSONL file to write")
    p.add_argument("--examples", type=int, default=3000, help="train-split problems (repeats allowed: the space is small)")
    p.add_argument("--task-options", default=DEFAULT_OPTIONS, help="chain_sum options, as rung train's --task-options")
    p.add_argument("--seed", type=int, default=12345, help="seed of the problem generator")
    a = p.parse_args(argv)
    task = get_task("chain_sum", **parse_options(a.task_options))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    examples = task.prompts("train", a.examples, a.seed)
    with open(out, "w") as f:
        for e in examples:
            f.write(json.dumps({"prompt": e.prompt, "response": e.meta["solution"]}) + "\n")
    print(f"{len(examples)} worked solutions ({len({e.prompt for e in examples})} distinct problems) -> {out}")


if __name__ == "__main__":
    main()
