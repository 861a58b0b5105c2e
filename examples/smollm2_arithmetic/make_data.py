"""Write the example's train and test sets: 1-3 digit additions and subtractions asked in words.

    python examples/smollm2_arithmetic/make_data.py OUT_DIR [--train 2000 --test 200 --seed 0]

Deterministic (random.Random(seed)); the test problems never appear in the train set. Each JSON line:
{"id", "question", "answer", "op", "digits"} - `digits` (1-3, the larger operand's) is the subset
reported per pass@k.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

WORDS = {
    "+": ["What is {a} plus {b}?", "Add {a} and {b}.", "What is the sum of {a} and {b}?"],
    "-": ["What is {a} minus {b}?", "Subtract {b} from {a}.", "What is {a} take away {b}?"],
}


def problem(rng: random.Random) -> dict:
    digits = rng.choice((1, 2, 3))
    a = rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)
    b = rng.randint(0, a)  # b <= a: subtraction stays non-negative
    op = rng.choice("+-")
    if op == "+" and rng.random() < 0.5:
        a, b = b, a
    question = rng.choice(WORDS[op]).format(a=a, b=b)
    return {"question": question, "answer": a + b if op == "+" else a - b, "op": op, "digits": f"{digits}-digit"}


def generate(train: int, test: int, seed: int) -> tuple[list[dict], list[dict]]:
    rng, seen, rows = random.Random(seed), set(), []
    while len(rows) < train + test:
        row = problem(rng)
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    test_rows = [{"id": f"test/{i}", **r} for i, r in enumerate(rows[:test])]
    train_rows = [{"id": f"train/{i}", **r} for i, r in enumerate(rows[test:])]
    return train_rows, test_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in zip(("train", "test"), generate(args.train, args.test, args.seed)):
        (args.out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {len(rows)} rows to {args.out / f'{name}.jsonl'}")


if __name__ == "__main__":
    main()
