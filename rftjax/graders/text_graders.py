"""In-process graders: `string_check` and `text_similarity` (OpenAI field names and semantics).

Both are cheap and run no user code, so the pool calls them in the calling process. The similarity metrics come
from maintained libraries: rapidfuzz (fuzzy_match), sacrebleu (bleu), nltk (gleu, meteor), rouge-score (rouge).
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from typing import Any

from rftjax.graders import core
from rftjax.graders import mathgrade
from rftjax.graders import templating

log = logging.getLogger(__name__)

STRING_OPERATIONS = ('eq', 'ne', 'like', 'ilike')
SIMILARITY_METRICS = (
  'fuzzy_match',
  'bleu',
  'gleu',
  'meteor',
  'rouge_1',
  'rouge_2',
  'rouge_3',
  'rouge_4',
  'rouge_5',
  'rouge_l',
)


def _batch(grader, samples: list[str], items: list[dict], score_one) -> list[core.GradeResult]:
  make_sample = functools.partial(core.sample_dict, parse_json=grader.needs_json)
  out = []
  for text, item in zip(samples, items):
    sample = make_sample(text)
    try:
      out.append(score_one(sample, item))
    except core.GradingException as e:
      out.append(core.failed(e.category, str(e)))
    except Exception as e:  # noqa: BLE001  (a grading must never crash the run)
      out.append(core.failed(core.OTHER, f'{type(e).__name__}: {e}'))
  return out


class StringCheck(core.Grader):
  """1.0 if `operation(input, reference)` holds else 0.0.

  eq / ne: exact (case-sensitive) equality / inequality; like: `reference in input` (case-sensitive substring);
  ilike: the same, case-insensitive.
  """

  type = 'string_check'

  def __init__(self, spec: dict[str, Any], name: str, where: str | None = None):
    self.spec, self.name = spec, name
    where = where or name  # errors name the field's place in the spec
    self.operation = spec['operation']
    self.render_input = templating.compile_template(spec['input'], f'{where}.input')
    self.render_reference = templating.compile_template(spec['reference'], f'{where}.reference')
    self.needs_json = templating.uses_json(spec['input']) or templating.uses_json(spec['reference'])

  def grade_batch(self, samples, items):
    ri, rr = self.render_input, self.render_reference
    op = self.operation
    one, zero = core.GradeResult(1.0), core.GradeResult(0.0)  # immutable, safe to share

    if op == 'eq':
      check = lambda s, i: one if ri(s, i) == rr(s, i) else zero
    elif op == 'ne':
      check = lambda s, i: one if ri(s, i) != rr(s, i) else zero
    elif op == 'like':
      check = lambda s, i: one if rr(s, i) in ri(s, i) else zero
    else:
      check = lambda s, i: one if rr(s, i).lower() in ri(s, i).lower() else zero
    return _batch(self, samples, items, check)


class TextSimilarity(core.Grader):
  """A similarity score in [0, 1]; `metadata["passed"]` says whether it reached `pass_threshold`."""

  type = 'text_similarity'

  def __init__(self, spec: dict[str, Any], name: str, where: str | None = None):
    self.spec, self.name = spec, name
    where = where or name  # errors name the field's place in the spec
    self.metric = spec['evaluation_metric']
    self.pass_threshold = spec.get('pass_threshold')
    self.render_input = templating.compile_template(spec['input'], f'{where}.input')
    self.render_reference = templating.compile_template(spec['reference'], f'{where}.reference')
    self.needs_json = templating.uses_json(spec['input']) or templating.uses_json(spec['reference'])
    self.score_fn = metric_fn(self.metric)

  def grade_batch(self, samples, items):
    def one(sample, item):
      score = float(self.score_fn(self.render_input(sample, item), self.render_reference(sample, item)))
      score = min(max(score, 0.0), 1.0)  # BLEU gives 1.0000000000000004 on an exact match
      meta = {} if self.pass_threshold is None else {'passed': score >= self.pass_threshold}
      return core.GradeResult(score, {}, (), meta)

    return _batch(self, samples, items, one)


def metric_fn(metric: str):
  """Returns score(hypothesis, reference) -> float in [0, 1]."""
  if metric == 'fuzzy_match':
    from rapidfuzz import fuzz

    return lambda hyp, ref: fuzz.ratio(hyp, ref) / 100.0  # normalised Indel similarity
  if metric == 'bleu':
    import sacrebleu

    # CJK text has no spaces, and 13a took a whole sentence for one word (an answer one character off scored 0):
    # there sacrebleu's 'zh', each Chinese character a word. Elsewhere 13a, whose escapes and padding 'zh' lacks
    def bleu(hyp: str, ref: str) -> float:
      cjk = _CJK.search(hyp) or _CJK.search(ref)
      return sacrebleu.sentence_bleu(hyp, [ref], tokenize='zh' if cjk else '13a').score / 100.0

    return bleu
  if metric == 'gleu':
    from nltk.translate import gleu_score

    return lambda hyp, ref: gleu_score.sentence_gleu([_tokens(ref)], _tokens(hyp))
  if metric == 'meteor':
    _wordnet()  # said when the grader is built (rftjax.grade --validate too), not at the first grading
    return _meteor
  if metric.startswith('rouge_'):
    key = 'rougeL' if metric == 'rouge_l' else 'rouge' + metric[-1]
    scorer = _rouge_scorer(key)
    return lambda hyp, ref: scorer.score(ref, hyp)[key].fmeasure
  raise core.GraderConfigError(f'evaluation_metric: found {metric!r}, expected one of {SIMILARITY_METRICS}')


# Scripts written without spaces between words: each of their characters is a token (as sacrebleu's 'zh' splits)
_CJK = re.compile(f'([{mathgrade.IDEOGRAPHS}])')


def _tokens(text: str) -> list[str]:
  """nltk's word and punctuation tokens, each ideograph or kana its own."""
  import nltk

  return [t for w in nltk.tokenize.wordpunct_tokenize(text.lower()) for t in _CJK.split(w) if t]


class _RougeWords:
  """rouge-score's tokenizer for any script: its own kept only [a-z0-9] runs, so an exact answer in Chinese,
  Russian or Arabic scored 0 and 'Москва, 2024' matched 'Киев, 2024' on the digits. A word is a run of letters,
  digits and combining marks (Devanagari's and Thai's vowel signs: 'मैं' is not 'में'); each ideograph or kana is a
  word of its own. On ASCII text the tokens are rouge-score's (lowercased letter and digit runs)."""

  def tokenize(self, text: str) -> list[str]:
    words, run = [], []
    for c in text.lower():
      if _CJK.match(c) or unicodedata.category(c)[0] not in 'LNM':
        words += [''.join(run)] if run else []
        run = []
        words += [c] if _CJK.match(c) else []
      else:
        run.append(c)
    return words + ([''.join(run)] if run else [])


@functools.lru_cache(maxsize=None)
def _rouge_scorer(key: str):
  from rouge_score import rouge_scorer

  return rouge_scorer.RougeScorer([key], use_stemmer=False, tokenizer=_RougeWords())


class _NoSynonyms:
  """Stands in for nltk's WordNet when its corpus is not on disk: METEOR then matches exact words and Porter
  stems only (no synonym stage). The corpus cannot be downloaded at run time (no network)."""

  @staticmethod
  def synsets(word):
    del word
    return []


@functools.lru_cache(maxsize=None)
def _wordnet():
  try:
    import nltk

    nltk.data.find('corpora/wordnet')
    from nltk.corpus import wordnet

    wordnet.synsets('test')
    return wordnet
  except Exception:  # noqa: BLE001  (LookupError when the corpus is absent; anything else: same fallback)
    log.warning(
      "text_similarity 'meteor': nltk's WordNet corpus is not installed, so METEOR matches exact words and stems "
      "only, no synonyms (OpenAI's scores may be higher); install it with python -m nltk.downloader wordnet omw-1.4"
    )
    return _NoSynonyms()


def _meteor(hyp: str, ref: str) -> float:
  from nltk.translate import meteor_score

  return meteor_score.meteor_score([_tokens(ref)], _tokens(hyp), wordnet=_wordnet())
