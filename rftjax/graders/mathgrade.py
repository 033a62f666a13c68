"""Final-answer extraction and sympy equivalence for the `math` grader.

Runs inside the sandbox worker (sympy can take unbounded time on hostile input; the pool's per-call deadline
bounds it), so this module imports only the standard library and sympy, never rftjax.

Equality is exact: decimals are parsed as exact rationals, so 0.5 == 1/2 but 0.33 != 1/3 and 3.14 != pi.
What is stripped before comparing: `$`, `\\(`/`\\)`, `\\left`/`\\right`, spacing commands, `\\text{...}` wrappers,
degree signs, one or two trailing unit words after a space ("5 cm", "12 \\text{dollars}"; a single letter only as an
SI symbol: "3 m", not "3 x"), thousands separators ("1,000"), and a leading "x =". A percentage "50%" matches both 50
and 0.5 (and 50%, not 0.5%). Intervals compare endpoints and
bracket types; tuples compare in order; `\\{...\\}` sets and bare comma lists compare as unordered multisets.
Plain-text math ("√2", "3 × 4", "1½", "x²") is read as its LaTeX/ASCII form first.
"""

from __future__ import annotations

import fractions
import re
import unicodedata

_NUMBER = re.compile(r'-?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+)?(?:[eE][-+]?\d+)?\s*\\?%?|-?\.\d+')
_ANSWER_IS = re.compile(r'(?:final answer|the answer|answer)\s*(?:is|:|=)\s*:?\s*(.+)', re.IGNORECASE)
_ALLOWED_NAMES = {'sqrt', 'root', 'pi', 'oo', 'log', 'ln', 'exp', 'sin', 'cos', 'tan', 'Abs', 'binomial'}
_MAX_LEN = 400
_SUPERSCRIPTS = str.maketrans('⁰¹²³⁴⁵⁶⁷⁸⁹⁻', '0123456789-')
# "√2", "2√3", "∛8": the radical's argument is a brace or parenthesis group, or one number or letter
_RADICALS = {'√': '\\sqrt', '∛': '\\sqrt[3]', '∜': '\\sqrt[4]'}
# A number followed, after a space, by one or two unit words ("5 cm", "3 m^2", "12 dollars", "6 sq ft"). A single
# letter counts only as an SI unit's symbol: "3 x", "2 i" or "5 n" keep their variable. Words are separated by
# whitespace, so the pattern has one way to match (a `[A-Za-z]+\s*` repeat took exponential time on prose).
# A letter of any script, but not the ones math writes in answers: Greek (pi, theta), super- and subscripts, vulgar
# fractions ("x²", "πr²" are not words)
_LETTER = r'[^\W\d_\u00b2\u00b3\u00b9\u00bc-\u00be\u0370-\u03ff\u2070-\u209f\u2150-\u218f]'
_UNIT_WORD = rf'(?:{_LETTER}{{2,}}\.?|[mgsLKVAJNWh])(?:\s*\^\s*\(?\d\)?)?'  # words of any script: "12 яблок"
_UNIT = re.compile(rf'^(-?[\d.,/*^()]*\d\)?)\s+({_UNIT_WORD}(?:\s+{_UNIT_WORD})?)$')
# Words after a number that are not a unit: "5 or more", "3 at least" keep them (and so do not equal 5 or 3).
_NOT_UNITS = {'pi', 'oo', 'sqrt', 'root', 'or', 'and', 'more', 'less', 'than', 'at', 'least', 'most', 'not', 'no'}
# Where "the answer is X" ends when no sentence end comes first: "12 since ...", "12, because ..."
_CLAUSE_END = re.compile(r'\s*(?:[,;]\s+|\s)(?:since|because|as|which|so|when|where|given|for|from)\b.*$', re.DOTALL)


# Scripts written without spaces between words (CJK ideographs, kana): text_graders splits them per character too
IDEOGRAPHS = '\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff'
_IDEOGRAPH = re.compile(f'[{IDEOGRAPHS}]')


def _ascii_digits(text: str) -> str:
  """Digits of any script as ASCII ('１２', '١٢', '१२' -> '12'), the full-width forms of ASCII ('（３）' -> '(3)')
  as ASCII, and the minus sign U+2212 (or an en dash before a number) as '-': a number is a number however it is
  written."""
  if text.isascii():
    return text
  text = re.sub(r'(?<![\w)])\u2013(?=\d)', '-', text)  # an en dash before a number is its minus, not a range's
  out = []
  for c in text:
    if '\uff01' <= c <= '\uff5e':
      c = chr(ord(c) - 0xFEE0)
    elif c == '\u2212':
      c = '-'
    elif not c.isascii() and c.isdecimal():
      c = str(unicodedata.decimal(c))
    out.append(c)
  return ''.join(out)


def _braced(text: str, start: int) -> tuple[str, int] | None:
  """Content of the group opening at text[start] ('{' or '(') and the index after it."""
  opening = text[start]
  closing = '}' if opening == '{' else ')'
  depth = 0
  for i in range(start, len(text)):
    if text[i] == opening:
      depth += 1
    elif text[i] == closing:
      depth -= 1
      if depth == 0:
        return text[start + 1 : i], i + 1
  return None


def last_boxed(text: str) -> str | None:
  idx = max(text.rfind('\\boxed'), text.rfind('\\fbox'))
  if idx < 0:
    return None
  rest = idx + (6 if text.startswith('\\boxed', idx) else 5)
  while rest < len(text) and text[rest] == ' ':
    rest += 1
  if rest < len(text) and text[rest] == '{':
    group = _braced(text, rest)
    return group[0] if group else None
  m = re.match(r'\S+', text[rest:].lstrip())  # "\boxed 5"
  return m.group(0).rstrip('$.') if m else None


def _is_bare(text: str) -> bool:
  """True for a short one-line text that is an answer, not prose or a worked equation: no '=', and no plain word
  (two or more letters, LaTeX commands and pi/sqrt/... aside) except one trailing unit ("5 cm")."""
  plain = re.sub(r'[{}]', ' ', re.sub(r'\\[A-Za-z]+', ' ', text)).strip()
  if len(text) > 120 or '\n' in plain or '=' in plain:
    return False
  if _IDEOGRAPH.search(plain):  # a script without spaces: prose, or a unit glued to its number ("12个")
    return False
  words = [w for w in re.findall(f'{_LETTER}{{2,}}', plain) if w not in _ALLOWED_NAMES]  # any script's
  return not words or (
    len(words) == 1 and re.search(re.escape(words[0]) + r'\s*(?:\^\s*\d+)?[\s.]*$', plain) is not None
  )


def _after_equals(text: str) -> str | None:
  """ "2 * 4 = 8" -> "8": a short one-line equation answers with its last right-hand side."""
  line = text.strip()
  if '\n' in line or len(line) > 120 or '=' not in line:
    return None
  rhs = line.rsplit('=', 1)[1].strip().rstrip('.').strip()
  return rhs if rhs and _is_bare(rhs) else None


def extract_answer(text: str) -> str | None:
  """The final answer of a completion, first match of: the last \\boxed{} (or \\fbox{}); "the answer is X" (the
  last one); the whole text when it is short and not prose; the last $...$ math span; the last number."""
  boxed = last_boxed(text)
  if boxed is not None:
    return boxed
  matches = list(_ANSWER_IS.finditer(text))
  if matches:
    ans = matches[-1].group(1)
    for _ in range(3):  # "Final Answer: The final answer is $12$. I hope it is correct." (Minerva's format)
      ans = ans.strip().split('\n')[0].strip()
      ans = re.sub(r'\.\s.*$', '', ans)  # cut at a sentence end, keep decimal points
      ans = _CLAUSE_END.sub('', ans)
      inner = _ANSWER_IS.match(ans) or _ANSWER_IS.match(re.sub(r'^the\s+', '', ans, flags=re.IGNORECASE))
      if inner is None:
        break
      ans = inner.group(1)
    ans = ans.strip().rstrip('.').strip().strip('*').strip()
    if ans:
      return ans
  spans = re.findall(r'\$([^$]+)\$|\\\((.+?)\\\)', text.replace('\\$', '\\dollar '))
  if spans:
    return (spans[-1][0] or spans[-1][1]).replace('\\dollar ', '').strip()
  if text.strip() and _is_bare(text.strip()):
    return text.strip().strip('*').strip()
  line = text.strip()
  if '\n' not in line and len(line) <= 120 and '=' in line:  # "x = 2 or x = 3": every root, not the last one
    plain = normalize(line)[0]  # normalize lists the roots (_roots): no '=' left, several values
    if '=' not in plain and len(_split_top(plain)) > 1:
      return line
  rhs = _after_equals(text)
  if rhs is not None:
    return rhs
  numbers = _NUMBER.findall(text)
  return numbers[-1].strip() if numbers else None


def _replace_two(s: str, command: str, template: str) -> str:
  """\\frac{a}{b}, \\frac12, \\binom{n}{k} -> `template` with the two arguments, innermost last so nesting works."""
  while True:
    idx = s.find(command)
    if idx < 0:
      return s
    pos = idx + len(command)
    args = []
    for _ in range(2):
      while pos < len(s) and s[pos] == ' ':
        pos += 1
      if pos < len(s) and s[pos] == '{':
        group = _braced(s, pos)
        if group is None:
          raise ValueError('unbalanced braces')
        args.append(group[0])
        pos = group[1]
      elif pos < len(s):
        args.append(s[pos])
        pos += 1
      else:
        raise ValueError(f'{command} needs two arguments')
    s = s[:idx] + template.format(*args) + s[pos:]


def _replace_sqrt(s: str) -> str:
  while True:
    idx = s.find('\\sqrt')
    if idx < 0:
      return s
    pos = idx + 5
    index = None
    if pos < len(s) and s[pos] == '[':
      end = s.index(']', pos)
      index, pos = s[pos + 1 : end], end + 1
    if pos < len(s) and s[pos] in '{(':  # \sqrt{2}, "√(2)"
      group = _braced(s, pos)
      if group is None:
        raise ValueError('unbalanced brackets')
      arg, pos = group
    else:
      m = re.match(r'\s*(\d+|[A-Za-z])', s[pos:])
      if not m:
        raise ValueError('\\sqrt without argument')
      arg, pos = m.group(1), pos + m.end()
    s = s[:idx] + (f'root({arg},{index})' if index else f'sqrt({arg})') + s[pos:]


def _unicode_math(s: str) -> str:
  """Plain-text math as models write it: "3 × 4", "√2", "1½", "x²", "3⁄4" -> LaTeX/ASCII the parser reads."""
  for old, new in (('×', '*'), ('·', '*'), ('⋅', '*'), ('÷', '/'), ('⁄', '/'), ('≤', '<='), ('≥', '>=')):
    s = s.replace(old, new)
  s = re.sub('[⁰¹²³⁴⁵⁶⁷⁸⁹⁻]+', lambda m: '^{' + m.group(0).translate(_SUPERSCRIPTS) + '}', s)

  def vulgar(m: re.Match) -> str:  # "1½" -> "(1+1/2)", "½" -> "(1/2)"
    f = fractions.Fraction(unicodedata.numeric(m.group(2))).limit_denominator(10)
    return f'({m.group(1)}+{f})' if m.group(1) else f'({f})'

  s = re.sub(r'(?<![\d.])(\d*)\s*([½⅓⅔¼¾⅕⅖⅗⅘⅙⅚⅛⅜⅝⅞])', vulgar, s)
  for sign, command in _RADICALS.items():
    s = re.sub(re.escape(sign) + r'\s*(\d+(?:\.\d+)?|[A-Za-z])', lambda m: command + '{' + m.group(1) + '}', s)
    s = s.replace(sign, command)  # before a brace or parenthesis group (_replace_sqrt reads both)
  return s


def normalize(ans: str) -> tuple[str, bool]:
  """LaTeX/plain answer -> (plain text for sympy or string compare, had_percent)."""
  s = _unicode_math(ans.strip())
  for wrapper in ('\\text', '\\textbf', '\\mathrm', '\\mbox', '\\mathbf', '\\operatorname'):
    while wrapper + '{' in s:
      i = s.index(wrapper + '{')
      group = _braced(s, i + len(wrapper))
      if group is None:
        break
      s = s[:i] + ' ' + group[0] + ' ' + s[group[1] :]
  for old, new in (
    ('\\$', ''),
    ('$', ''),
    ('€', ''),
    ('£', ''),
    ('\\left', ''),
    ('\\right', ''),
    ('\\leq', '<='),
    ('\\geq', '>='),
    ('\\le', '<='),
    ('\\ge', '>='),
    ('\\(', ''),  # inline math delimiters: "The answer is \\( 12 \\)"
    ('\\)', ''),
    ('\\[', ''),
    ('\\]', ''),
    ('\\!', ''),
    ('\\,', ' '),
    ('\\;', ' '),
    ('\\:', ' '),
    ('\\ ', ' '),
    ('~', ' '),
    ('\\displaystyle', ''),
    ('\\dfrac', '\\frac'),
    ('\\tfrac', '\\frac'),
    ('\\dbinom', '\\binom'),
    ('\\tbinom', '\\binom'),
    ('^\\circ', ''),
    ('^{\\circ}', ''),
    ('°', ''),
    ('\\degree', ''),
    ('\\circ', ''),
    ('\\cdot', '*'),
    ('\\times', '*'),
    ('\\div', '/'),
    ('\\pi', ' pi '),
    ('π', ' pi '),
    ('\\infty', ' oo '),
    ('∞', ' oo '),
    ('\\cup', ' U '),
    ('∪', ' U '),
    ('\\ln', ' ln '),
    ('\\log', ' log '),
    ('\\sin', ' sin '),
    ('\\cos', ' cos '),
    ('\\tan', ' tan '),
    ('\\exp', ' exp '),
    ('\\{', '{'),
    ('\\}', '}'),
    ('\u2212', '-'),
  ):
    s = s.replace(old, new)
  percent = '%' in s
  s = s.replace('\\%', '').replace('%', '')
  s = re.sub(r'\\(?:quad|qquad)', ' ', s)
  s = s.strip().rstrip('.').strip()
  s = re.sub(r'^\(?\s*([A-Za-z])\s*\)$', r'\1', s) if re.fullmatch(r'\(\s*[A-Z]\s*\)', s) else s
  s = _roots(s)  # "x = 2 or x = 3" -> "2, 3"
  s = re.sub(r'^[A-Za-z]\s*=\s*(?=\S)', '', s)  # "x = 5" -> "5"
  s = re.sub(r'^[A-Za-z]\s*(?:\\in|∈)\s*(?=\S)', '', s)  # "x \in (1, 2)" -> "(1, 2)"
  s = _interval(s)  # "1 < x <= 2" -> "(1, 2]"
  unit = _UNIT.match(s)
  if unit and not _NOT_UNITS & {w.lower() for w in re.findall(r'[A-Za-z]+', unit.group(2))}:
    s = unit.group(1)  # "5 cm^2" -> "5"
  if re.fullmatch(r'-?\d{1,3}(?: \d{3})+(?:\.\d+)?', s):  # "3\,000"
    s = s.replace(' ', '')
  if re.fullmatch(r'-?\d{1,3}(?:,\d{3})+(?:\.\d+)?', s):
    s = s.replace(',', '')
  s = re.sub(r'(?<![\d.])0+(?=\d)', '', s)  # 007 -> 7 (Python rejects leading zeros)
  return s.strip(), percent


_ROOT = re.compile(r'([A-Za-z])\s*=\s*([^=<>,]+?)')
_ROOT_SEP = re.compile(r'\s*(?:,|\bor\b|\band\b)\s*(?:,|\bor\b|\band\b)?\s*')


def _roots(s: str) -> str:
  """The values of one variable listed as equations ("x = 2 or x = 3", "x=2, x=3") as a list, "2, 3"; anything else
  (two variables: a solution of a system) unchanged."""
  pieces = _ROOT_SEP.split(s.strip())
  matches = [_ROOT.fullmatch(p) for p in pieces]
  if len(pieces) < 2 or not all(matches) or len({m.group(1) for m in matches}) != 1:
    return s
  return ', '.join(m.group(2).strip() for m in matches)


_BOUND = r'(-?\s*(?:oo|[\w.\\{}()/*+^-]+?))'


def _interval(s: str) -> str:
  """An inequality on one variable as the interval it describes: "1 < x <= 2" -> "(1, 2]", "x > 2" -> "(2, oo)",
  "x <= -1" -> "(-oo, -1]", "2 < x" -> "(2, oo)"."""
  m = re.fullmatch(rf'{_BOUND}\s*(<=|<)\s*[A-Za-z]\s*(<=|<)\s*{_BOUND}', s)
  if m:
    return f'{"[" if m.group(2) == "<=" else "("}{m.group(1)}, {m.group(4)}{"]" if m.group(3) == "<=" else ")"}'
  m = re.fullmatch(rf'[A-Za-z]\s*(<=|<|>=|>)\s*{_BOUND}', s)
  if m:
    op, bound = m.groups()
  else:
    m = re.fullmatch(rf'{_BOUND}\s*(<=|<|>=|>)\s*[A-Za-z]', s)
    if not m:
      return s
    bound, op = m.groups()
    op = {'<': '>', '<=': '>=', '>': '<', '>=': '<='}[op]  # "2 < x" is "x > 2"
  closed = op in ('<=', '>=')
  if op in ('>', '>='):
    return f'{"[" if closed else "("}{bound}, oo)'
  return f'(-oo, {bound}{"]" if closed else ")"}'


def _to_sympy(s: str):
  import sympy
  from sympy.parsing import sympy_parser as sp

  if len(s) > _MAX_LEN:
    raise ValueError('answer too long to parse')
  s = re.sub(r'(?<![\d.^])(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}', r'(\1+\\frac{\2}{\3})', s)  # mixed number 2\frac{1}{2}
  s = re.sub(r'\{([^{}]*)\\choose([^{}]*)\}', r'\\binom{\1}{\2}', s)  # {n \choose k}
  s = _replace_two(s, '\\binom', 'binomial(({0}),({1}))')
  s = _replace_sqrt(_replace_two(s, '\\frac', '(({0})/({1}))'))
  if re.search(r'\d{5}', s) and re.search(r'!|binomial', s):  # sympy evaluates n! and binomials while parsing
    raise ValueError('factorial too large')
  s = re.sub(r'\b(sin|cos|tan)\s*\^\s*\(?(\d)\)?\s*\(?([A-Za-z])\)?', r'(\1(\3))**\2', s)  # sin^2 x
  s = re.sub(r'\|([^|]+)\|', r'Abs(\1)', s)
  s = s.replace('{', '(').replace('}', ')')
  s = re.sub(r'(\d+(?:\.\d+)?)[eE]([-+]?\d+)', r'(\1*10**(\2))', s)  # 1.5e3, exact
  if re.search(r'[^0-9A-Za-z+\-*/^().,_ !]', s) or '__' in s or '!=' in s:
    raise ValueError(f'unsupported characters in {s!r}')
  names = set(re.findall(r'[A-Za-z_][A-Za-z0-9_]*', s))
  if re.fullmatch(r'[A-Za-z ]+', s) and any(len(n) > 1 and n not in _ALLOWED_NAMES for n in names):
    raise ValueError('a word, not math')  # "yes", "even": compared as text
  for name in sorted(names, key=len, reverse=True):
    if len(name) > 1 and name not in _ALLOWED_NAMES:
      if not (name.isalpha() and len(name) <= 3):
        raise ValueError(f'unknown name {name!r}')
      s = re.sub(rf'\b{name}\b', '*'.join(name), s)  # xy -> x*y
  names = set(re.findall(r'[A-Za-z_][A-Za-z0-9_]*', s))
  local = {n: sympy.Symbol(n) for n in names if len(n) == 1}
  local.update(ln=sympy.log, root=sympy.root, oo=sympy.oo, pi=sympy.pi, binomial=sympy.binomial)
  transformations = sp.standard_transformations + (
    sp.implicit_multiplication_application,
    sp.convert_xor,
    sp.rationalize,
  )
  expr = sp.parse_expr(s, local_dict=local, transformations=transformations, evaluate=False)
  for node in sympy.preorder_traversal(expr):
    if isinstance(node, sympy.Pow) and node.exp.is_number and abs(node.exp) > 10_000:
      raise ValueError('exponent too large')
  return sympy.sympify(expr)


def _scalar_equal(a: str, b: str, a_pct: bool, b_pct: bool) -> bool:
  import sympy

  ea, eb = _to_sympy(a), _to_sympy(b)
  both = a_pct and b_pct  # two percentages compare as written: 0.5% is not 50%
  cands_a = [ea, ea / 100] if a_pct and not both else [ea]
  cands_b = [eb, eb / 100] if b_pct and not both else [eb]
  for x in cands_a:
    for y in cands_b:
      if x == y:
        return True
      if any(isinstance(t, sympy.Float) for t in (x, y)):
        continue
      try:
        diff = sympy.simplify(x - y)
      except Exception:  # noqa: BLE001  (sympy raises many types on odd input)
        continue
      if diff == 0:
        return True
  return False


def _split_top(s: str) -> list[str]:
  parts, depth, cur = [], 0, ''
  for ch in s:
    if ch in '([{':
      depth += 1
    elif ch in ')]}':
      depth -= 1
    if ch == ',' and depth == 0:
      parts.append(cur)
      cur = ''
    else:
      cur += ch
  parts.append(cur)
  return [p.strip() for p in parts]


def _group(s: str) -> tuple[str, str, list[str]] | None:
  """'(a, b]' -> ('(', ']', ['a', 'b']) when the brackets enclose the whole string and there is a comma."""
  if len(s) >= 2 and s[0] in '([{' and s[-1] in ')]}':
    depth = 0
    for i, ch in enumerate(s):
      depth += ch in '([{'
      depth -= ch in ')]}'
      if depth == 0 and i < len(s) - 1:
        return None
    inner = _split_top(s[1:-1])
    if len(inner) >= 2:
      return s[0], s[-1], inner
  return None


def _equal(a: str, b: str, a_pct: bool, b_pct: bool) -> bool:
  if a == b:
    return True
  a_union, b_union = [p.strip() for p in a.split(' U ')], [p.strip() for p in b.split(' U ')]
  if len(a_union) > 1 or len(b_union) > 1:
    return len(a_union) == len(b_union) and all(_equal(x, y, False, False) for x, y in zip(a_union, b_union))
  ga, gb = _group(a), _group(b)
  if ga or gb:
    if not (ga and gb) or len(ga[2]) != len(gb[2]):
      return False
    if ga[0] == '{' or gb[0] == '{':  # sets: unordered
      return ga[0] == gb[0] and _multiset_equal(ga[2], gb[2])
    return ga[:2] == gb[:2] and all(_equal(x, y, False, False) for x, y in zip(ga[2], gb[2]))
  la, lb = _split_top(a), _split_top(b)
  if len(la) > 1 or len(lb) > 1:
    return len(la) == len(lb) and _multiset_equal(la, lb)
  try:
    return _scalar_equal(a, b, a_pct, b_pct)
  except Exception:  # noqa: BLE001  (not parseable as math: fall back to a text comparison)
    return _text(a) == _text(b)


def _multiset_equal(xs: list[str], ys: list[str]) -> bool:
  ys = list(ys)
  for x in xs:
    for j, y in enumerate(ys):
      if _equal(x, y, False, False):
        del ys[j]
        break
    else:
      return False
  return not ys


def _text(s: str) -> str:
  return re.sub(r'\s+', ' ', s).strip().lower()


# A number as written: an integer or decimal (exponent allowed), a fraction of integers, a mixed number
_LITERAL = re.compile(
  r'[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|\d+\s*/\s*\d+|\\frac\{-?\d+\}\{\d+\}|\d+\s+\d+\s*/\s*\d+)'
)


def answers_equal(answer: str, reference: str, exact_number: bool = False) -> bool:
  """Whether the answer equals the reference. `exact_number`: a reference that is a number wants a number written
  out (an integer, a decimal, a fraction): on an arithmetic task '21 + 81' repeats the question, it does not answer
  102, though sympy evaluates it to 102 (a policy can learn to echo the question)."""
  a, a_pct = normalize(answer)
  b, b_pct = normalize(reference)
  if not a or not b:
    return False
  if exact_number and _LITERAL.fullmatch(b.strip()) and not _LITERAL.fullmatch(a.strip()):
    return False
  return _equal(a, b, a_pct, b_pct)


def grade(output_text: str, reference: str, exact_number: bool = False) -> tuple[float, dict]:
  """Score 1.0 when the completion's final answer equals the reference, plus metadata for debugging."""
  output_text, reference = _ascii_digits(output_text), _ascii_digits(reference)
  answer = extract_answer(output_text)
  ref = last_boxed(reference)
  ref = reference if ref is None else ref
  if answer is None:
    return 0.0, {'extracted': None}
  return float(answers_equal(answer, ref, exact_number)), {'extracted': answer[:200]}
