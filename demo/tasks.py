"""The demo's synthetic skills, generated from a seed: each example is a prompt, a worked response,
and the answer an exact-match evaluation extracts ("The answer is X."). Sized so that a student of
the demo's size learns each skill to high accuracy from ample data (docs/benchmark.md, v2)."""
import random

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _arithmetic_text(a, op, b, c, first):
    total = first * c
    prompt = f"Compute ({a} {op} {b}) * {c}.\n"
    response = f"{a} {op} {b} = {first}. {first} * {c} = {total}. The answer is {total}."
    return prompt, response, str(total)


def arithmetic(rng: random.Random):
    """Multistep arithmetic with worked steps (InfiGFusion's headline task, in small)."""
    a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(2, 9)
    op = rng.choice(["+", "-"])
    return _arithmetic_text(a, op, b, c, a + b if op == "+" else a - b)


def _reverse_text(letters, reversed_letters):
    prompt = f"Reverse the letters {' '.join(letters)}.\n"
    answer = " ".join(reversed_letters)
    return prompt, f"Reversed: {answer}. The answer is {answer}.", answer


def reverse(rng: random.Random):
    """Reverse three letters: a skill with nothing in common with arithmetic."""
    letters = [rng.choice(LETTERS) for _ in range(3)]
    return _reverse_text(letters, list(reversed(letters)))


SKILLS = {"arithmetic": arithmetic, "reverse": reverse}


def corrupt(example, rng: random.Random):
    """The same prompt answered the way a weaker source gets it wrong: one slip in the worked steps,
    carried through to a wrong final answer (the steps stay self-consistent, as a model's do)."""
    prompt = example["prompt"]
    if example["skill"] == "arithmetic":
        inner, c = prompt[len("Compute ("):-len(".\n")].split(") * ")
        a, op, b = inner.split(" ")
        a, b, c = int(a), int(b), int(c)
        first = a + b if op == "+" else a - b
        slip = rng.choice([-2, -1, 1, 2])  # the classic off-by-one-or-two in the first step
        _, response, answer = _arithmetic_text(a, op, b, c, first + slip)
    else:
        letters = prompt[len("Reverse the letters "):-len(".\n")].split(" ")
        out = list(reversed(letters))
        while out == list(reversed(letters)):  # swap two neighbours that differ
            i = rng.randrange(len(out) - 1)
            out[i], out[i + 1] = out[i + 1], out[i]
            if len(set(letters)) == 1:
                break
        _, response, answer = _reverse_text(letters, out)
    return {**example, "response": response, "answer": answer, "corrupted": True}


def make_split(skill: str, count: int, seed, exclude=frozenset()):
    """`count` distinct examples of a skill whose prompts are not in `exclude`."""
    rng = random.Random(f"{skill}-{seed}")
    seen, out = set(exclude), []
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 200 * count:
            raise RuntimeError(f"{skill}: cannot draw {count} distinct examples")
        prompt, response, answer = SKILLS[skill](rng)
        if prompt in seen:
            continue
        seen.add(prompt)
        out.append({"prompt": prompt, "response": response, "answer": answer, "skill": skill})
    return out
