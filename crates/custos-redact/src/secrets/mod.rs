//! Secret detection: gitleaks-format rules and built-in detectors.
