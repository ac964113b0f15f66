import re
import subprocess
import sys

import numpy as np
import pytest

from ied.expressions import FormulaError, compile_formula

S = np.array([0.5, 1.0, 2.0])


def test_arithmetic_functions_and_params():
    f = compile_formula("k * exp(-sigma**2 / 2) + sqrt(sigma) - log1p(sigma) / pi", {"k": 2.0})
    expected = 2.0 * np.exp(-S**2 / 2) + np.sqrt(S) - np.log1p(S) / np.pi
    np.testing.assert_allclose(f(S), expected, rtol=1e-15)
    np.testing.assert_array_equal(compile_formula("maximum(sigma, 1)")(S), np.maximum(S, 1.0))
    np.testing.assert_allclose(compile_formula("sech(sigma) - sigmoid(-sigma)")(S),
                               1 / np.cosh(S) - 1 / (1 + np.exp(S)), rtol=1e-15)
    np.testing.assert_array_equal(compile_formula("2")(S), np.full(3, 2.0))  # constants broadcast to σ's shape
    assert np.isnan(compile_formula("log(sigma - 1)")(S)[0])  # NaN is the caller's to refuse, not a crash


@pytest.mark.parametrize("text, fragment", [
    ("__import__('os').system('echo pwned')", "call"),
    ("sigma.__class__", "Attribute"),
    ("(lambda: 1)()", "call"),
    ("[x for x in (1, 2)][0]", "Subscript"),
    ("9**9**9", "exponent"),
    ("sigma ** 1000", "exponent"),
    ("sigma ** (sigma ** 2)", "power inside an exponent"),
    ("x + 1", "unknown name 'x'"),
    ("exp(sigma, 2)", "takes 1"),
    ("exp(x=sigma)", "keyword"),
    ("'a' * 3", "literal"),
    ("sigma if sigma > 1 else 0", "IfExp"),
    ("open('/etc/passwd')", "call"),
    ("exit(sigma)", "the call exit(...)"),
    ("eval(sigma)", "the call eval(...)"),
    ("getattr(sigma, 1)", "the call getattr(...)"),
    ("1 +", "not valid arithmetic"),
    ("sigma" + " + sigma" * 400, "characters long"),
    ("True + sigma", "literal"),
])
def test_rejects_untrusted_input_without_evaluating(text, fragment):
    with pytest.raises(FormulaError, match=re.escape(fragment)):
        compile_formula(text)


def test_untrusted_input_is_never_executed(tmp_path):
    # A child process, so that evaluating 9**9**9 would show as a hang (killed) instead of hanging pytest.
    script = (f"from ied.expressions import compile_formula, FormulaError\n"
              f"for text in [\"__import__('os').system('touch {tmp_path}/pwned')\", '9**9**9', '2**2**2**2**2**2']:\n"
              f"    try: compile_formula(text)\n"
              f"    except FormulaError: pass\n"
              f"    else: raise SystemExit('accepted: ' + text)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "pwned").exists()


def test_rejects_bad_params():
    with pytest.raises(FormulaError, match="parameter 'k'"):
        compile_formula("k * sigma", {"k": "1"})
    with pytest.raises(FormulaError, match="parameter name 'exp'"):
        compile_formula("sigma", {"exp": 1.0})
