"""Plain text (labels such as 'EDM (ρ=7)', 'λ-VE' or 'N(0,5²)') as LaTeX, for the tables' .tex files.

Torch- and pandas-free: the config check typesets every label before any job, so a label the tables could not
write is refused on the login node, not after hours of sampling.
"""
from __future__ import annotations

import unicodedata

SPECIAL = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$", "{": r"\{",
           "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}
SYMBOLS = {"±": r"$\pm$", "↓": r"$\downarrow$", "↑": r"$\uparrow$", "→": r"$\to$", "←": r"$\leftarrow$",
           "×": r"$\times$", "·": r"$\cdot$", "≤": r"$\leq$", "≥": r"$\geq$", "≈": r"$\approx$", "≠": r"$\neq$",
           "∞": r"$\infty$", "√": r"$\surd$", "−": "-", "–": "--", "—": "---", "∝": r"$\propto$", "°": r"$^\circ$",
           "µ": r"$\mu$", "ℓ": r"$\ell$", "…": r"\ldots{}", "‘": "`", "’": "'", "“": "``", "”": "''", "\u00a0": "~"}
# Greek capitals that LaTeX has as commands; the others are Latin letters (Alpha is A)
GREEK_CAPITALS = {"Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Upsilon", "Phi", "Psi", "Omega"}
GREEK_LATIN_CAPITALS = {"Alpha": "A", "Beta": "B", "Epsilon": "E", "Zeta": "Z", "Eta": "H", "Iota": "I",
                        "Kappa": "K", "Mu": "M", "Nu": "N", "Omicron": "O", "Rho": "P", "Tau": "T", "Chi": "X"}
ACCENTS = {"\u0300": "`", "\u0301": "'", "\u0302": "^", "\u0303": "~", "\u0308": '"', "\u0304": "=", "\u0327": "c",
           "\u030c": "v", "\u0306": "u", "\u030a": "r"}
SUPERSCRIPTS = dict(zip("⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻", "0123456789+-"))
SUBSCRIPTS = dict(zip("₀₁₂₃₄₅₆₇₈₉₊₋", "0123456789+-"))


def _greek(ch: str) -> str | None:
    name = unicodedata.name(ch, "")
    for case, prefix in (("small", "GREEK SMALL LETTER "), ("capital", "GREEK CAPITAL LETTER ")):
        if name.startswith(prefix):
            word = name[len(prefix):].capitalize().replace("Lamda", "Lambda").replace("Final sigma", "Varsigma")
            if " " in word:
                return None
            if case == "small":
                return rf"$\{word.lower()}$" if word != "Omicron" else "o"
            return rf"$\{word}$" if word in GREEK_CAPITALS else GREEK_LATIN_CAPITALS.get(word)
    return None


def _character(ch: str) -> str | None:
    """One character as LaTeX, or None if it has no form here."""
    if ch.isascii():
        return SPECIAL.get(ch, ch)
    if ch in SYMBOLS:
        return SYMBOLS[ch]
    if ch in SUPERSCRIPTS:
        return f"$^{SUPERSCRIPTS[ch]}$"
    if ch in SUBSCRIPTS:
        return f"$_{SUBSCRIPTS[ch]}$"
    greek = _greek(ch)
    if greek is not None:
        return greek
    base, *marks = unicodedata.normalize("NFD", ch)
    if base.isascii() and base.isalpha() and len(marks) == 1 and marks[0] in ACCENTS:
        return rf"\{ACCENTS[marks[0]]}{{{base}}}"
    return None


def escape(text: str) -> str:
    """`text` as LaTeX; ValueError naming the characters that have no LaTeX form here."""
    parts = [(ch, _character(ch)) for ch in str(text)]
    missing = sorted({ch for ch, tex in parts if tex is None})
    if missing:
        raise ValueError(f"no LaTeX form for {missing} in {text!r}")
    return "".join(tex for _, tex in parts)
