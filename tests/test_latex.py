"""ied.latex: labels typeset for the tables' .tex files, and refused (before any job) where no form exists."""
import pytest

from ied.latex import escape


@pytest.mark.parametrize("text, tex", [
    ("EDM (ρ=7)", r"EDM ($\rho$=7)"), ("N(0,5²)", r"N(0,5$^2$)"), ("a_b & 50%", r"a\_b \& 50\%"),
    ("λ-VE", r"$\lambda$-VE"), ("Σ, Α, ς", r"$\Sigma$, A, $\varsigma$"), ("naïve café", r"na\"{i}ve caf\'{e}"),
    ("x₁ ≤ 10³", r"x$_1$ $\leq$ 10$^3$"), ("{~^\\$#}", r"\{\textasciitilde{}\^{}\textbackslash{}\$\#\}"),
])
def test_labels_as_latex(text, tex):
    assert escape(text) == tex and escape(text).isascii()


def test_characters_without_a_form_are_named():
    with pytest.raises(ValueError, match=r"no LaTeX form for \['🙂'\] in 'VE 🙂'"):
        escape("VE 🙂")
