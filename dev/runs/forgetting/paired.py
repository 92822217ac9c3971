"""Paired comparison of two adapters' answer loss on the same samples.

    python3 dev/runs/forgetting/paired.py FIRST/eval.json SECOND/eval.json

Reads two ./evaluate reports of the same --data (per_sample[i].fine_tuned: loss
per answer token, answer_tokens) and prints, per language and for all samples,
each adapter's answer loss per answer token (weighted by the samples' answer
tokens, as ./evaluate's summary)
and the change SECOND - FIRST with a 95% paired percentile bootstrap interval
(the same resampled samples for both, 2000 resamples, seed 1234), as
./evaluate does for fine-tuned - base. Used for the forgetting measure: the
English loss of A against that of A then B.
"""
import json
import random
import sys


def losses(path):
    report = json.load(open(path))
    return [(s["language"], s["fine_tuned"]["loss"], s["fine_tuned"]["answer_tokens"]) for s in report["per_sample"]]


# loss per answer token over the samples picks: sum(loss x tokens) / sum(tokens)
def token_mean(samples, picks):
    return sum(samples[i][1] * samples[i][2] for i in picks) / sum(samples[i][2] for i in picks)


def paired_interval(first, second, resamples=2000, seed=1234):
    rng = random.Random(seed)
    n = len(first)
    changes = []
    for _ in range(resamples):
        picks = [rng.randrange(n) for _ in range(n)]
        changes.append(token_mean(second, picks) - token_mean(first, picks))
    changes.sort()
    return changes[int(0.025 * resamples)], changes[int(0.975 * resamples) - 1]


def main():
    a, b = losses(sys.argv[1]), losses(sys.argv[2])
    if [s[0] for s in a] != [s[0] for s in b]:
        sys.exit("the two reports are not of the same samples")
    print(f"{'language':10} {'n':>3} {'first':>7} {'second':>7} {'change [95% paired interval]':>30}")
    for name, keep in (("English", "en"), ("Korean", "ko"), ("all", None)):
        first = [s for s in a if keep is None or s[0] == keep]
        second = [s for s in b if keep is None or s[0] == keep]
        low, high = paired_interval(first, second)
        every = range(len(first))
        mean_first, mean_second = token_mean(first, every), token_mean(second, every)
        print(f"{name:10} {len(first):3d} {mean_first:7.3f} {mean_second:7.3f} "
              f"{mean_second - mean_first:+8.3f} [{low:+.3f}, {high:+.3f}]")


if __name__ == "__main__":
    main()
