//! Detectors of personal data.
