"""`calculate_output` of a multi grader: a small recursive-descent parser, never `eval`.

Grammar (lowest to highest precedence; `^` is right-associative and binds tighter than unary minus, so
`-2^2 = -4` and `2^3^2 = 512`, as in mathematics):
  expr   := term (('+' | '-') term)*
  term   := unary (('*' | '/') unary)*
  unary  := ('-' | '+') unary | power
  power  := atom ('^' unary)?
  atom   := NUMBER | NAME | FUNC '(' expr (',' expr)* ')' | '(' expr ')'
FUNC is one of min max abs floor ceil exp sqrt log (min/max take 2+ arguments, the others exactly 1; log is the
natural logarithm). NAME is a sub-grader name.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

from rftjax.graders import core

_FUNCS = {
  'min': (min, 2),
  'max': (max, 2),
  'abs': (abs, 1),
  'floor': (math.floor, 1),
  'ceil': (math.ceil, 1),
  'exp': (math.exp, 1),
  'sqrt': (math.sqrt, 1),
  'log': (math.log, 1),
}
_TOKEN = re.compile(r'\s*(?:(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)|([^\W\d]\w*)|(.))')


class FormulaError(core.GraderConfigError):
  pass


def _tokenize(text: str, where: str) -> list[tuple[str, str, int]]:
  tokens, pos = [], 0
  text = text.rstrip()
  while pos < len(text):
    m = _TOKEN.match(text, pos)
    if m.group(1):
      tokens.append(('num', m.group(1), m.start(1)))
    elif m.group(2):  # a name goes on through combining marks, which \w lacks (Devanagari's 'उत्तर' is one name)
      end = m.end(2)
      while end < len(text) and (text[end].isalnum() or text[end] == '_' or unicodedata.category(text[end])[0] == 'M'):
        end += 1
      tokens.append(('name', text[m.start(2) : end], m.start(2)))
      pos = end
      continue
    elif m.group(3) in '+-*/^(),':
      tokens.append(('op', m.group(3), m.start(3)))
    else:
      raise FormulaError(
        f'{where}: unexpected character {m.group(3)!r} at position {m.start(3)} in '
        f'{text!r}; expected numbers, grader names, + - * / ^ ( ) , and {sorted(_FUNCS)}'
      )
    pos = m.end()
  return tokens


class Formula:
  """Parsed once at build time; `evaluate(values)` maps sub-grader names to floats."""

  def __init__(self, text: str, names: set[str], where: str = 'calculate_output'):
    self.where = where  # the formula's place in the grader spec, which errors name
    if not isinstance(text, str) or not text.strip():
      raise FormulaError(f'{where}: expected a non-empty formula string, found {text!r}')
    self.text, self.names = text, names
    self._toks = _tokenize(text, where)
    self._i = 0
    self.tree = self._expr()
    if self._i < len(self._toks):
      kind, val, pos = self._toks[self._i]
      raise FormulaError(f'{where}: unexpected {val!r} at position {pos} in {text!r}')
    del self._toks

  # Parser --------------------------------------------------------------------------------------------------
  def _peek(self) -> tuple[str, str, int] | None:
    return self._toks[self._i] if self._i < len(self._toks) else None

  def _take(self, value: str) -> bool:
    tok = self._peek()
    if tok and tok[0] == 'op' and tok[1] == value:
      self._i += 1
      return True
    return False

  def _fail(self, expected: str):
    tok = self._peek()
    found = f'{tok[1]!r} at position {tok[2]}' if tok else 'end of formula'
    raise FormulaError(f'{self.where}: expected {expected}, found {found} in {self.text!r}')

  def _expr(self):
    node = self._term()
    while True:
      if self._take('+'):
        node = ('+', node, self._term())
      elif self._take('-'):
        node = ('-', node, self._term())
      else:
        return node

  def _term(self):
    node = self._unary()
    while True:
      if self._take('*'):
        node = ('*', node, self._unary())
      elif self._take('/'):
        node = ('/', node, self._unary())
      else:
        return node

  def _unary(self):
    if self._take('-'):
      return ('neg', self._unary())
    if self._take('+'):
      return self._unary()
    return self._power()

  def _power(self):
    base = self._atom()
    if self._take('^'):
      return ('^', base, self._unary())
    return base

  def _atom(self):
    tok = self._peek()
    if tok is None:
      self._fail("a number, a grader name, a function or '('")
    kind, val, pos = tok
    if kind == 'num':
      self._i += 1
      return ('num', float(val))
    if kind == 'name':
      self._i += 1
      if val in _FUNCS and self._take('('):
        args = [self._expr()]
        while self._take(','):
          args.append(self._expr())
        if not self._take(')'):
          self._fail("',' or ')'")
        arity = _FUNCS[val][1]
        if (arity == 1 and len(args) != 1) or (arity == 2 and len(args) < 2):
          raise FormulaError(
            f'{self.where}: {val}() takes {"exactly 1" if arity == 1 else "at least 2"} '
            f'argument(s), found {len(args)} in {self.text!r}'
          )
        return ('call', val, args)
      if val not in self.names:
        raise FormulaError(
          f'{self.where}: unknown name {val!r} at position {pos} in {self.text!r}; expected '
          f"one of the graders {sorted(self.names)} or a function {sorted(_FUNCS)} with '('"
        )
      return ('var', val)
    if self._take('('):
      node = self._expr()
      if not self._take(')'):
        self._fail("')'")
      return node
    self._fail("a number, a grader name, a function or '('")

  def bends(self) -> bool:
    """Whether a function or a power takes a grader's value (`max(b, 5)`, `a ^ 2`): such a formula can be linear
    on some values and not on others, so a few points cannot tell a weighted sum."""

    def children(node) -> list:
      return node[2] if node[0] == 'call' else [c for c in node[1:] if isinstance(c, tuple)]

    def has_var(node) -> bool:
      return node[0] == 'var' or any(has_var(c) for c in children(node))

    def walk(node) -> bool:
      return (node[0] in ('call', '^') and has_var(node)) or any(walk(c) for c in children(node))

    return walk(self.tree)

  # Evaluation ----------------------------------------------------------------------------------------------
  def evaluate(self, values: dict[str, float]) -> float:
    """Raises core.GradingException(formula_parse) on a math error (division by zero, log of 0, overflow)."""
    try:
      result = float(self._eval(self.tree, values))
    except (ZeroDivisionError, ValueError, OverflowError) as e:
      raise core.GradingException(core.FORMULA_PARSE, f'calculate_output {self.text!r}: {e}') from None
    if not math.isfinite(result):
      raise core.GradingException(core.FORMULA_PARSE, f'calculate_output {self.text!r} gave {result}')
    return result

  def _eval(self, node: Any, v: dict[str, float]) -> float:
    op = node[0]
    if op == 'num':
      return node[1]
    if op == 'var':
      return v[node[1]]
    if op == 'neg':
      return -self._eval(node[1], v)
    if op == 'call':
      fn, _ = _FUNCS[node[1]]
      return fn(*(self._eval(a, v) for a in node[2]))
    a, b = self._eval(node[1], v), self._eval(node[2], v)
    if op == '+':
      return a + b
    if op == '-':
      return a - b
    if op == '*':
      return a * b
    if op == '/':
      return a / b
    result = a**b
    if isinstance(result, complex):
      raise ValueError(f'{a} ^ {b} is not a real number')
    return result
