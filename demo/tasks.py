"""The demo's synthetic skills, generated from a seed: each example is a prompt, a worked response,
and the answer an exact-match evaluation extracts ("The answer is X.")."""
import random

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def arithmetic(rng: random.Random):
    """Multistep arithmetic with worked steps (InfiGFusion's headline task, in small)."""
    a, b, c = rng.randint(1, 15), rng.randint(1, 15), rng.randint(2, 7)
    op = rng.choice(["+", "-"])
    first = a + b if op == "+" else a - b
    total = first * c
    prompt = f"Compute ({a} {op} {b}) * {c}.\n"
    response = f"{a} {op} {b} = {first}. {first} * {c} = {total}. The answer is {total}."
    return prompt, response, str(total)


def reverse(rng: random.Random):
    """Reverse a short list of letters: a skill with nothing in common with arithmetic."""
    n = rng.randint(3, 5)
    letters = [rng.choice(LETTERS) for _ in range(n)]
    prompt = f"Reverse the letters {' '.join(letters)}.\n"
    answer = " ".join(reversed(letters))
    response = f"Reversed: {answer}. The answer is {answer}."
    return prompt, response, answer


SKILLS = {"arithmetic": arithmetic, "reverse": reverse}


def make_split(skill: str, count: int, seed: int, exclude=frozenset()):
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
