"""Whether a stored prompt answers a new one: more than one cosine threshold.

Plain cosine maps near-misses together ("flights from Boston to Denver" and "from Denver to
Boston" score about 0.98 with MiniLM). The decision has two parts:

- **vetoes**, checks of the two prompts' words that no similarity overrides: the numbers
  differ ("10 mg" / "100 mg", "World War I" / "II"), one is negated and the other is not, one
  uses a word and the other its opposite ("increase" / "decrease", "before" / "after"), a
  direction is reversed ("Celsius to Fahrenheit" / "Fahrenheit to Celsius"), or two words
  trade roles around the same words ("the dog chases the cat" / "the cat chases the dog");
- a **verifier**: a logistic regression over the cosine and cheap word features (content
  word overlap, one-word substitutions, names present on one side only, word order, length),
  with the two embeddings' element-wise product and difference, fitted on the QQP train half
  by ``bench/fit_cache_verifier.py``; its weights and the shipped threshold are
  ``verifier.json`` beside this file (a logistic regression; the file may instead hold one
  hidden layer, ``Hidden``, which that script fits with ``--model mlp``).

``score`` is the verifier's probability that the stored answer fits, multiplied by
``VETO_FACTOR`` when a veto fires, so a vetoed pair stays far below any useful threshold."""

from __future__ import annotations

import json
import math
import os
import re
import threading
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from plugins.cache import cross as cross_encoder
from plugins.cache.cross import CrossEncoder

VETO_FACTOR = 0.25
VERIFIER_FILE = Path(__file__).with_name("verifier.json")

_TOKEN = re.compile(r"\d+(?:[.,:]\d+)*|[A-Za-z]+(?:['’][A-Za-z]+)*")

def _words(text: str) -> list[str]:
    return text.split()


STOPWORDS = frozenset(_words("""
a an the and or but if of at by for with about as into through to from in on off out up
is are was were be been being am do does did doing have has had having can could will would
shall should may might must i me my mine we us our you your yours he him his she her it its
they them their what which who whom whose this that these those there here when where why
how all any both each few some such only own same so too very just than then also s t
please tell give get know want need let make does doing go going way ways best good
st nd rd th
"""))  # ``best``, ``good``, ``get``: question filler in both QQP and chat prompts

NEGATIONS = frozenset(_words("""not no never none nothing nobody neither nor cannot cant dont doesnt
didnt isnt arent wasnt werent wont wouldnt shouldnt couldnt havent hasnt hadnt aint"""))

_SMALL = _words("zero one two three four five six seven eight nine ten eleven twelve thirteen "
          "fourteen fifteen sixteen seventeen eighteen nineteen")
_TENS = _words("twenty thirty forty fifty sixty seventy eighty ninety")
# "first" is left out: as often an adverb ("eat first") as an ordinal; "first"/"last" and a
# number on one side only still differ
_ORDINALS = _words("second third fourth fifth sixth seventh eighth ninth tenth eleventh "
             "twelfth")
NUMBER_WORDS: dict[str, float] = {w: float(i) for i, w in enumerate(_SMALL) if w != "one"}
NUMBER_WORDS.update({w: float(20 + 10 * i) for i, w in enumerate(_TENS)})
NUMBER_WORDS.update({w: float(i + 2) for i, w in enumerate(_ORDINALS)})
NUMBER_WORDS.update({"hundred": 100.0, "thousand": 1e3, "million": 1e6, "billion": 1e9,
                     "dozen": 12.0})
# a number only after "a", "one" or a number ("a thousand", "5 million")
SCALES = frozenset({"hundred", "thousand", "million", "billion", "dozen"})
# upper-case Roman numerals of two letters or more ("World War II", "Rocky IV")
ROMAN = {"II": 2.0, "III": 3.0, "IV": 4.0, "VI": 6.0, "VII": 7.0, "VIII": 8.0, "IX": 9.0,
         "XI": 11.0, "XII": 12.0}

# A word and its opposite: a prompt using one and its stored twin the other asks the reverse.
_OPPOSITES = """increase:decrease increase:reduce raise:lower high:low higher:lower
highest:lowest maximum:minimum max:min most:least more:less more:fewer better:worse
best:worst good:bad safe:unsafe safe:dangerous legal:illegal possible:impossible hot:cold
warm:cold cheap:expensive fast:slow faster:slower long:short longer:shorter big:small
large:small bigger:smaller heavy:light early:late earlier:later first:last day:night
morning:night morning:evening summer:winter north:south east:west left:right up:down
inside:outside internal:external public:private positive:negative true:false odd:even
vertical:horizontal input:output client:server frontend:backend sync:async
synchronous:asynchronous ascending:descending lowercase:uppercase lower:upper plus:minus
add:subtract add:remove multiply:divide rich:poor pros:cons advantage:disadvantage
love:hate like:dislike agree:disagree pass:fail success:failure valid:invalid open:close
open:closed start:stop start:end begin:end before:after above:below over:under with:without
for:against wet:dry full:empty hard:soft hard:easy difficult:easy strong:weak thick:thin
wide:narrow deep:shallow young:old new:old newer:older buy:sell import:export
upload:download push:pull encrypt:decrypt encode:decode compress:decompress
install:uninstall enable:disable connect:disconnect lock:unlock show:hide accept:reject
allow:block allow:deny include:exclude win:lose gain:lose arrive:depart arrival:departure
send:receive borrow:lend debit:credit deposit:withdraw profit:loss sleep:wake male:female
man:woman men:women boy:girl husband:wife mother:father son:daughter brother:sister
increasing:decreasing rise:fall"""


def _forms(word: str) -> set[str]:
    stem = word.removesuffix("e")
    return {word, word + "s", word + "d", word + "ed", stem + "ing", word + "es"}


def _opposites() -> dict[str, frozenset[str]]:
    table: dict[str, set[str]] = {}
    for pair in _OPPOSITES.split():
        x, y = pair.split(":")
        for fx in _forms(x):
            table.setdefault(fx, set()).update(_forms(y))
        for fy in _forms(y):
            table.setdefault(fy, set()).update(_forms(x))
    for form in list(table):
        table[form] -= {form}
    return {k: frozenset(v) for k, v in table.items() if v}


OPPOSITES = _opposites()
# markers of direction: "X to Y", "X into Y", "X than Y" ("from X to Y" through its "to";
# "from" alone is no marker: "stop myself from watching" has no direction)
_FORWARD = frozenset({"to", "into", "than", "onto", "towards", "toward"})
_WINDOW = 3


def _norm(word: str) -> str:
    w = word.lower().replace("’", "'")
    if w.endswith("n't"):
        return w[:-3] + "nt"
    w = w.split("'", 1)[0]
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def _number(tok: str, norm: str) -> str | None:
    if tok[0].isdigit():
        plain = tok.replace(",", "") if re.fullmatch(r"\d{1,3}(,\d{3})+", tok) else tok
        try:
            return f"{float(plain):g}"
        except ValueError:
            return plain  # a version, a time: compared as written ("3.11", "2.10.0")
    if tok in ROMAN:
        return f"{ROMAN[tok]:g}"
    low = tok.lower()  # as written: "seconds" is a unit, not "second"
    if low in NUMBER_WORDS:
        return f"{NUMBER_WORDS[low]:g}"
    return None


@dataclass(frozen=True, slots=True)
class Parsed:
    """What the checks need from one prompt (computed once per stored entry)."""

    norms: tuple[str, ...]           # every token, normalised
    content: tuple[str, ...]         # content words in order (no stopwords, no numbers)
    numbers: frozenset[str]
    negated: bool
    entities: frozenset[str]         # capitalised inside the sentence, acronyms, alphanumerics
    directions: tuple[Direction, ...]  # (from words, to words, nearest from, nearest to)
    text: str = ""                   # the prompt as written (the cross-encoder reads it)


def _side(norms: list[str], start: int, step: int, window: int) -> frozenset[str]:
    words: list[str] = []
    i = start
    while 0 <= i < len(norms) and len(words) < window:
        w = norms[i]
        if w in _FORWARD:
            break
        if w not in STOPWORDS:
            words.append(w)
        i += step
    return frozenset(words)


Direction = tuple[frozenset[str], frozenset[str], str, str]


def _directions(norms: list[str]) -> tuple[Direction, ...]:
    """Per marker: the content words before and after it (up to ``_WINDOW``), and the
    nearest one on each side."""
    out = []
    for i, w in enumerate(norms):
        if w in _FORWARD:
            left, right = _side(norms, i - 1, -1, _WINDOW), _side(norms, i + 1, 1, _WINDOW)
            if left and right:
                nl = next(iter(_side(norms, i - 1, -1, 1)))
                nr = next(iter(_side(norms, i + 1, 1, 1)))
                out.append((left, right, nl, nr))
    return tuple(out)


def parse(text: str) -> Parsed:
    toks = _TOKEN.findall(text)
    norms = [_norm(t) for t in toks]
    numbers = set()
    content = []
    entities = set()
    first = True
    prev: str | None = None
    for tok, norm in zip(toks, norms, strict=True):
        num = _number(tok, norm)
        if num is not None and tok.lower() in SCALES and not (
                prev is not None and (prev in ("a", "one") or _number(prev, prev) is not None)):
            num = None  # "several thousand", "many million": as vague as "thousands"
        prev = tok.lower()
        if num is not None:
            numbers.add(num)
        elif norm not in STOPWORDS and norm not in NEGATIONS:
            content.append(norm)
            if (not first and tok[0].isupper()) or (len(tok) > 1 and tok.isupper()):
                entities.add(norm)
        first = False
    return Parsed(
        norms=tuple(norms),
        content=tuple(content),
        numbers=frozenset(numbers),
        negated=any(n in NEGATIONS for n in norms),
        entities=frozenset(entities),
        directions=_directions(norms),
        text=text,
    )


def _opposite(a: Parsed, b: Parsed) -> bool:
    sa, sb = set(a.norms), set(b.norms)
    for w in sa - sb:
        opp = OPPOSITES.get(w)
        if opp and any(o in sb and o not in sa for o in opp):
            return True
    return False


def _swapped(a: Parsed, b: Parsed) -> bool:
    """"X to Y" in one, "Y to X" in the other: the nearest words on each side of a marker
    trade places, or words cross it both ways ("convert ethanol to ethanoic acid" /
    "convert ethanoic acid to ethanol": "convert" stays, the rest cross)."""
    for la, ra, nla, nra in a.directions:
        for lb, rb, nlb, nrb in b.directions:
            if nla == nrb and nra == nlb and nla != nra:
                return True
            if (la - lb) & rb and (ra - rb) & lb:
                return True
    return False


# Relations that read the same both ways: "X vs Y" / "Y vs X" asks one thing.
_SYMMETRIC = frozenset(_words("""vs versus compared compare comparison difference different
similar similarity same related relation relationship relate between equal equivalent"""))
_ROLES_MAX_DIFF = 2  # content words on one side only, at most, for the roles check


def _roles_swapped(a: Parsed, b: Parsed) -> bool:
    """The same words with two of them trading places around the same words between them,
    no marker needed ("Does the dog chase the cat" / "the cat chase the dog", "Why do Poles
    dislike Russians" / "Russians dislike Poles"): only where the two prompts differ in at
    most ``_ROLES_MAX_DIFF`` content words, and never for a symmetric relation."""
    ca, cb = list(dict.fromkeys(a.content)), list(dict.fromkeys(b.content))
    if len(set(ca) ^ set(cb)) > _ROLES_MAX_DIFF or _SYMMETRIC & (set(a.norms) | set(b.norms)):
        return False
    pos_b = {w: i for i, w in enumerate(cb)}
    for i, x in enumerate(ca):
        if x not in pos_b:
            continue
        for j in range(i + 2, len(ca)):
            y = ca[j]
            if y in pos_b and pos_b[y] < pos_b[x] and ca[i + 1:j] == cb[pos_b[y] + 1:pos_b[x]]:
                return True
    return False


# The direction check reads prompts that are otherwise the same words: in two rewordings of
# one sentence that differ in more content words than this, words cross an infinitive "to"
# by chance ("The report can be saved to disk using export()" / "export() can be used to
# store the report on disk"). 3 by the QQP train half (README); None: every pair.
DIRECTION_MAX_DIFF: int | None = 3


def _differ(a: Parsed, b: Parsed) -> int:
    return len(set(a.content) ^ set(b.content))


def _name_swapped(a: Parsed, b: Parsed) -> bool:
    """One name put for another, the rest the same content words ("How do I sort a list in
    Python" / "in JavaScript", "the capital of Austria" / "of Australia", "GATE exam CE" /
    "EE"): each prompt has exactly one content word the other lacks, both are names
    (capitalised inside the sentence, acronyms, alphanumerics), and neither extends the
    other (two spellings of one name: "Arjun" / "Arjuna", "Bernoullis" / "Bernoulli's")."""
    oa, ob = set(a.content) - set(b.content), set(b.content) - set(a.content)
    if not (len(oa) == 1 and len(ob) == 1 and oa <= a.entities and ob <= b.entities):
        return False
    (x,), (y,) = oa, ob
    return not (x.startswith(y) or y.startswith(x))


def vetoes(a: Parsed, b: Parsed) -> list[str]:
    """The checks that say the two prompts ask different things, by name."""
    out = []
    if a.numbers != b.numbers:
        out.append("numbers")
    if a.negated != b.negated:
        out.append("negation")
    if _opposite(a, b):
        out.append("opposite")
    if (DIRECTION_MAX_DIFF is None or _differ(a, b) <= DIRECTION_MAX_DIFF) and _swapped(a, b):
        out.append("direction")
    if _roles_swapped(a, b):
        out.append("roles")
    if _name_swapped(a, b):
        out.append("names")
    return out


def _inversions(a: tuple[str, ...], b: tuple[str, ...]) -> float:
    """The share of pairs of shared content words whose order differs (0: same order)."""
    pos_b = {w: i for i, w in enumerate(b)}
    seq = [pos_b[w] for w in dict.fromkeys(a) if w in pos_b]
    n = len(seq)
    if n < 2:
        return 0.0
    inv = sum(1 for i in range(n) for j in range(i + 1, n) if seq[i] > seq[j])
    return inv / (n * (n - 1) / 2)


BASE_FEATURES = ("cosine", "cosine_sq", "jaccard", "only_one_side", "substitution",
                 "entity_mismatch", "inversions", "length_ratio", "question_word")
# soft word alignment (``alignment``): how well the words on one side only find a word of
# like meaning on the other, under MiniLM's distilled static word vectors
ALIGN_FEATURES = ("align_min", "align_mean", "align_low", "align_high", "coverage",
                  "entity_unaligned")
FEATURES = BASE_FEATURES + ALIGN_FEATURES + ("bias",)
_QUESTION_WORDS = ("what", "why", "how", "when", "where", "who", "which", "whose")


def _question_word(norms: tuple[str, ...]) -> str | None:
    return next((w for w in norms if w in _QUESTION_WORDS), None)


def overlap(a: Parsed, b: Parsed) -> float:
    """The Jaccard overlap of the two prompts' content words (1 when neither has any)."""
    ca, cb = set(a.content), set(b.content)
    union = ca | cb
    return len(ca & cb) / len(union) if union else 1.0


class WordVectors:
    """MiniLM's distilled static table (``plugins.minilm_onnx.distilled``: each vocabulary
    token run alone through the model), read per word: the mean of its word pieces' rows,
    L2-normalised, kept once computed. Loading it the first time on a machine computes the
    table (about 15 s of CPU, then cached on disk): ``SemanticIndex`` loads it off the event
    loop before its first decision."""

    def __init__(self, table: np.ndarray, tokenizer: Any) -> None:
        self.table = table
        self.tokenizer = tokenizer
        self.dim = int(table.shape[1])
        self._known: dict[str, np.ndarray] = {}

    def vector(self, word: str) -> np.ndarray:
        v = self._known.get(word)
        if v is None:
            ids = self.tokenizer.encode(word, add_special_tokens=False).ids
            v = self.table[ids].mean(axis=0) if ids else np.zeros(self.dim, dtype=np.float32)
            v = (v / max(float(np.linalg.norm(v)), 1e-9)).astype(np.float32)
            if len(self._known) < 500_000:
                self._known[word] = v
        return v

    def matrix(self, words: list[str]) -> np.ndarray:
        return np.stack([self.vector(w) for w in words]) if words else np.zeros((0, self.dim))


_words_lock = threading.Lock()
_word_vectors: WordVectors | None = None


def word_vectors() -> WordVectors:
    """The process's static word vectors (loaded, or computed and cached, on first use)."""
    global _word_vectors
    with _words_lock:
        if _word_vectors is None:
            from tokenizers import Tokenizer

            from plugins.embeddings import minilm_path
            from plugins.minilm_onnx import distilled

            path = minilm_path()
            tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
            tokenizer.no_padding()  # the file pads every input to 128 pieces
            tokenizer.no_truncation()
            _word_vectors = WordVectors(distilled(path), tokenizer)
        return _word_vectors


def alignment(a: Parsed, b: Parsed, words: WordVectors | None = None) -> list[float]:
    """``ALIGN_FEATURES``: for each content word on one side only, its best cosine to the
    other side's content words (a word with no counterpart scores 0); then the worst of
    them, their mean, how many align below 0.5 and at 0.7 or more (a swapped synonym, "fast"
    / "quickly", against a swapped subject, "Python" / "Java"), the share of all content
    words covered (a shared word counts 1), and the names on one side only left below 0.5."""
    ca, cb = list(dict.fromkeys(a.content)), list(dict.fromkeys(b.content))
    sa, sb = set(ca), set(cb)
    only_a, only_b = [w for w in ca if w not in sb], [w for w in cb if w not in sa]
    if not only_a and not only_b:
        return list(_NO_ALIGNMENT)
    wv = words or word_vectors()
    ma, mb = wv.matrix(ca), wv.matrix(cb)
    sims = ma @ mb.T if len(ca) and len(cb) else np.zeros((len(ca), len(cb)))
    best_a = sims.max(axis=1) if len(cb) else np.zeros(len(ca))
    best_b = sims.max(axis=0) if len(ca) else np.zeros(len(cb))
    s = [float(best_a[i]) for i, w in enumerate(ca) if w not in sb]
    s += [float(best_b[j]) for j, w in enumerate(cb) if w not in sa]
    names = a.entities | b.entities
    low_names = sum(1 for w, v in zip(only_a + only_b, s, strict=True) if w in names and v < 0.5)
    covered = 2 * len(sa & sb) + sum(s)
    return [min(s), sum(s) / len(s), min(sum(1 for v in s if v < 0.5), 4) / 4,
            min(sum(1 for v in s if v >= 0.7), 4) / 4, covered / (len(ca) + len(cb)),
            min(low_names, 2) / 2]


_NO_ALIGNMENT = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]


def features(a: Parsed, b: Parsed, cosine: float, words: WordVectors | None = None,
             align: bool = True) -> np.ndarray:
    """The verifier's inputs, in the order of ``FEATURES`` (a verifier reads those it was
    fitted on; ``align=False`` leaves the alignment out, for a verifier that reads none)."""
    ca, cb = set(a.content), set(b.content)
    jac = overlap(a, b)
    only_a, only_b = len(ca - cb), len(cb - ca)
    ent = len((a.entities - set(b.norms)) | (b.entities - set(a.norms)))
    length = abs(math.log((len(a.norms) + 1) / (len(b.norms) + 1)))
    qa, qb = _question_word(a.norms), _question_word(b.norms)
    return np.array([cosine, cosine * cosine, jac, min(only_a + only_b, 8) / 8,
                     float(only_a == 1 and only_b == 1), min(ent, 3) / 3,
                     _inversions(a.content, b.content), min(length, 2.0),
                     float(qa is not None and qb is not None and qa != qb),
                     *(alignment(a, b, words) if align else _NO_ALIGNMENT), 1.0],
                    dtype=np.float64)


def pair_features(va: np.ndarray, vb: np.ndarray) -> np.ndarray:
    """The two embeddings' element-wise product and absolute difference (Sentence-BERT's
    pair classifier reads the same)."""
    return np.concatenate([va * vb, np.abs(va - vb)]).astype(np.float64)


@dataclass(frozen=True, slots=True)
class Hidden:
    """One hidden layer (ReLU) over the standardised features and pair features."""

    mean: np.ndarray
    scale: np.ndarray
    w1: np.ndarray  # inputs x hidden
    b1: np.ndarray
    w2: np.ndarray  # hidden
    b2: float

    def logit(self, inputs: np.ndarray) -> float:
        h = np.maximum((inputs - self.mean) / self.scale @ self.w1 + self.b1, 0.0)
        return float(h @ self.w2) + self.b2


@dataclass(frozen=True, slots=True)
class Trees:
    """Gradient-boosted trees over the features (no pair features), as
    ``bench/fit_cache_verifier.py --model trees`` exports scikit-learn's
    ``HistGradientBoostingClassifier``: per tree and node (padded to the largest tree) the
    feature read, the threshold (``x <= t`` goes left), the children and the leaf value; a
    node that is its own left child is a leaf. All trees step down one level at a time."""

    baseline: float
    feature: np.ndarray  # trees x nodes, int
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    depth: int

    def logit(self, x: np.ndarray) -> float:
        rows = np.arange(len(self.feature))
        node = np.zeros(len(self.feature), dtype=np.intp)
        for _ in range(self.depth):
            f = self.feature[rows, node]
            go_left = x[f] <= self.threshold[rows, node]
            node = np.where(go_left, self.left[rows, node], self.right[rows, node])
        return self.baseline + float(self.value[rows, node].sum())


@dataclass(frozen=True, slots=True)
class Verifier:
    weights: np.ndarray  # over the features it reads (``columns``; all of FEATURES if None)
    threshold: float
    pair_weights: np.ndarray | None = None  # over pair_features, when fitted with them
    hidden: Hidden | None = None  # when fitted as a small network: it alone decides
    columns: np.ndarray | None = None  # the indices in FEATURES it reads, "bias" last
    trees: Trees | None = None  # when fitted as boosted trees: they alone decide
    cross: CrossEncoder | None = None  # when shipped: it judges pairs above its floor

    @property
    def reads_alignment(self) -> bool:
        first = len(BASE_FEATURES)
        cols = range(len(FEATURES)) if self.columns is None else self.columns
        return any(first <= int(c) < first + len(ALIGN_FEATURES) for c in cols)

    def probability(self, x: np.ndarray, va: np.ndarray | None = None,
                    vb: np.ndarray | None = None) -> float:
        if self.columns is not None:
            x = x[self.columns]
        if self.trees is not None:
            z = self.trees.logit(x)
        elif self.hidden is not None:
            if va is None or vb is None:
                raise ValueError("this verifier reads the two embeddings: pass va and vb")
            z = self.hidden.logit(np.concatenate([x[:-1], pair_features(va, vb)]))
        else:
            z = float(x @ self.weights)
            if self.pair_weights is not None and va is not None and vb is not None:
                z += float(pair_features(va, vb) @ self.pair_weights)
        return 1.0 / (1.0 + math.exp(-max(min(z, 40.0), -40.0)))


def _array(v: Any) -> np.ndarray:
    return np.array(v, dtype=np.float64)


def load_verifier(path: Path | None = None, cross: Path | None = None) -> Verifier:
    """The shipped verifier, or the file named by ``SWITCHYARD_CACHE_VERIFIER`` (one fitted
    by ``bench/fit_cache_verifier.py --out``), or ``path``; each file is read once. With a
    cross-encoder only where one is asked for (``cross``, or the file that
    ``SWITCHYARD_CACHE_CROSS`` names, such as ``plugins/cache/cross_qqp.npz``): its
    threshold then applies. None is on by default (README: the one trained here loses the
    held-out set's paraphrases)."""
    v = _load(path or Path(os.environ.get("SWITCHYARD_CACHE_VERIFIER") or VERIFIER_FILE))
    named = os.environ.get("SWITCHYARD_CACHE_CROSS", "")
    file = cross or (Path(named) if named else None)
    ce = cross_encoder.shared(file) if file is not None else None
    return v if ce is None else replace(v, cross=ce, threshold=ce.threshold)


@cache
def _load(path: Path) -> Verifier:
    data = json.loads(path.read_text())
    names = list(data["features"])
    if not set(names) <= set(FEATURES) or names[-1:] != ["bias"]:
        raise ValueError(f"{path}: fitted for features {names}: not among {FEATURES} with "
                         f"'bias' last")
    pair, net = data.get("pair_weights"), data.get("hidden")
    hidden = None if net is None else Hidden(
        _array(net["mean"]), _array(net["scale"]), _array(net["w1"]), _array(net["b1"]),
        _array(net["w2"]), float(net["b2"]))
    forest = data.get("trees")
    trees = None if forest is None else Trees(
        float(forest["baseline"]), np.array(forest["feature"], dtype=np.intp),
        _array(forest["threshold"]), np.array(forest["left"], dtype=np.intp),
        np.array(forest["right"], dtype=np.intp), _array(forest["value"]),
        int(forest["depth"]))
    return Verifier(_array(data["weights"]), float(data["threshold"]),
                    None if pair is None else _array(pair), hidden,
                    np.array([FEATURES.index(n) for n in names], dtype=np.intp), trees)


def score(a: Parsed, b: Parsed, cosine: float, verifier: Verifier | None = None,
          va: np.ndarray | None = None, vb: np.ndarray | None = None) -> float:
    """The decision's score in [0, 1]: the vector verifier's probability, cut by any veto.
    ``va``, ``vb``: the two embeddings (a verifier fitted on them needs them). A verifier's
    cross-encoder is not run here (this runs on the event loop): ``SemanticIndex.lookup``
    runs it in a worker thread on the pair this chose, where ``cross_applies``."""
    v = verifier or load_verifier()
    p = v.probability(features(a, b, cosine, align=v.reads_alignment), va, vb)
    return p * VETO_FACTOR if vetoes(a, b) else p


def cross_applies(a: Parsed, b: Parsed, cosine: float, verifier: Verifier) -> bool:
    """Whether the verifier's cross-encoder judges this pair: it has one, no veto rejects
    the pair, and the cosine reaches the cross-encoder's floor."""
    ce = verifier.cross
    return (ce is not None and cosine >= ce.floor and bool(a.text) and bool(b.text)
            and not vetoes(a, b))
