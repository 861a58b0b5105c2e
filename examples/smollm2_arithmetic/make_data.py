"""Write the example's train and test sets: 1-3 digit additions and subtractions asked in words.

    python examples/smollm2_arithmetic/make_data.py OUT_DIR [--train 700 --test 200 --seed 0]
        [--train-digits 1,2]

Deterministic (random.Random(seed)); the test problems never appear in the train set. Each JSON line:
{"id", "question", "answer", "op", "digits"} - `digits` (1-3, the larger operand's) is the subset
reported per pass@k. The test set mixes 1-3 digits evenly; the train set draws from --train-digits
(default 1 and 2, about half each: there are only 361 distinct 1-digit problems). SmolLM2-135M never
solves a 3-digit problem at temperature 1, so such a group is all zeros and gives GRPO no gradient,
only rollout cost; the 3-digit test subset then measures transfer.
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


def problem(rng: random.Random, choices: tuple[int, ...] = (1, 2, 3)) -> dict:
    digits = rng.choice(choices)
    a = rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)
    b = rng.randint(0, a)  # b <= a: subtraction stays non-negative
    op = rng.choice("+-")
    if op == "+" and rng.random() < 0.5:
        a, b = b, a
    question = rng.choice(WORDS[op]).format(a=a, b=b)
    return {"question": question, "answer": a + b if op == "+" else a - b, "op": op, "digits": f"{digits}-digit"}


def draw(rng: random.Random, count: int, choices: tuple[int, ...], seen: set[str]) -> list[dict]:
    rows: list[dict] = []
    while len(rows) < count:
        row = problem(rng, choices)
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    return rows


def generate(train: int, test: int, seed: int, train_digits: tuple[int, ...] = (1, 2)) -> tuple[list[dict], list[dict]]:
    rng, seen = random.Random(seed), set()
    test_rows = [{"id": f"test/{i}", **r} for i, r in enumerate(draw(rng, test, (1, 2, 3), seen))]
    train_rows = [{"id": f"train/{i}", **r} for i, r in enumerate(draw(rng, train, train_digits, seen))]
    return train_rows, test_rows


def digit_set(text: str) -> tuple[int, ...]:
    digits = tuple(sorted({int(d) for d in text.split(",")}))
    if not digits or not set(digits) <= {1, 2, 3}:
        raise argparse.ArgumentTypeError(f"--train-digits {text!r}: a comma list drawn from 1, 2, 3")
    return digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=700)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-digits", type=digit_set, default=(1, 2), help="e.g. 1,2 or 1,2,3")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in zip(("train", "test"), generate(args.train, args.test, args.seed, args.train_digits)):
        (args.out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {len(rows)} rows to {args.out / f'{name}.jsonl'}")


if __name__ == "__main__":
    main()
