"""Choosing the LSH band scheme: candidate recall on the labelled set, copies cut to 20-30 %,
and false candidates, for several schemes, each over 10 permutation seeds (one seed is luck:
the labelled set is small). Quality only, no database; the chosen scheme is newsmon.dedup's
and ``tests/test_dedup.py`` checks its precision and recall.

    .venv/bin/python -m benchmarks.lsh_schemes
"""

from __future__ import annotations

import itertools
import re
import statistics
from pathlib import Path

import yaml
from datasketch import MinHash
from newsmon.normalize import normalize_text

EVAL = Path(__file__).resolve().parent.parent / "tests" / "dedup_eval"
_WORD = re.compile(r"\w+")
INTRO = "مراسلنا في المنطقة أفاد بالتالي نقلا عن وكالات الأنباء المحلية "
# (key shingle words, rows per band, bands over the whole body, bands over the lead)
SCHEMES = [(3, 3, 38, 4), (4, 2, 16, 6), (4, 2, 14, 6), (4, 2, 12, 4), (5, 2, 16, 6), (3, 2, 10, 4)]
LEAD = 40


def _eval_set() -> tuple[dict[str, str], set[frozenset[str]]]:
    labels = yaml.safe_load((EVAL / "labels.yml").read_text(encoding="utf-8"))
    groups = labels.get("groups", labels)
    docs: dict[str, str] = {}
    dups: set[frozenset[str]] = set()
    for group, spec in groups.items():
        for f in sorted((EVAL / "stories" / group).glob("*.txt")):
            docs[f"{group}/{f.name}"] = normalize_text(f.read_text(encoding="utf-8"))
        family = [f"{group}/original.txt"] + [f"{group}/{c}" for c in spec.get("copies") or []]
        dups |= {frozenset(p) for p in itertools.combinations(family, 2)}
    return docs, dups


def _keys(text: str, w: int, r: int, full: int, lead: int, seed: int) -> set[tuple]:
    words = _WORD.findall(text)
    sh = [" ".join(words[i : i + w]).encode() for i in range(max(1, len(words) - w + 1))]
    m, m_lead = MinHash(num_perm=r * full, seed=seed), MinHash(num_perm=r * lead, seed=seed)
    m.update_batch(sh)
    m_lead.update_batch(sh[:LEAD])
    return {(0, b, tuple(m.hashvalues[b * r : (b + 1) * r])) for b in range(full)} | {
        (1, b, tuple(m_lead.hashvalues[b * r : (b + 1) * r])) for b in range(lead)
    }


def main() -> None:
    docs, dups = _eval_set()
    deep = []  # each original cut to its first 20 % and 30 % of words, with and without a local intro
    for k, v in docs.items():
        if k.endswith("original.txt"):
            words = v.split()
            for frac in (0.2, 0.3):
                cut = " ".join(words[: int(len(words) * frac)])
                deep += [(k, cut), (k, normalize_text(INTRO) + " " + cut)]
    pairs = list(itertools.combinations(sorted(docs), 2))
    print("| key shingles | rows | bands (body + lead) | keys | candidate recall mean (min) | cut to 20-30 % found, mean (min) of 56 | false candidate pairs, mean (max) |")
    print("|---|---|---|---|---|---|---|")
    for w, r, full, lead in SCHEMES:
        recall, found, false = [], [], []
        for seed in range(1, 11):
            keys = {k: _keys(v, w, r, full, lead, seed) for k, v in docs.items()}
            recall.append(sum(bool(keys[a] & keys[b]) for a, b in (sorted(p) for p in dups)) / len(dups))
            found.append(sum(bool(_keys(t, w, r, full, lead, seed) & keys[k]) for k, t in deep))
            false.append(sum(1 for a, b in pairs if frozenset((a, b)) not in dups and keys[a] & keys[b]))
        print(f"| word {w}-grams | {r} | {full} + {lead} | {full + lead} | {statistics.mean(recall):.3f} ({min(recall):.3f}) | "
              f"{statistics.mean(found):.1f} ({min(found)}) | {statistics.mean(false):.1f} ({max(false)}) |")  # fmt: skip


if __name__ == "__main__":
    main()
