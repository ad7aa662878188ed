#!/usr/bin/env python3
"""Presidio, pattern recognizers only, as a peer for custos redaction.

Run it with the venv that bench/redact/setup.sh makes
(~/.cache/custos-bench/venv/bin/python). Offline by construction:

  * the NLP engine is Presidio's SpacyNlpEngine on ``spacy.blank("en")``
    (a tokenizer, no model, no download), so context words still work as
    far as a tokenizer without lemmas allows, and the SpacyRecognizer (NER:
    PERSON, LOCATION, ...) is not registered;
  * tldextract (used by the e-mail recognizer to validate the domain) is
    given ``suffix_list_urls=()``, so it uses the public suffix list bundled
    in the package and never fetches one.

Recognizers (``--recognizers``):

  default  the predefined pattern recognizers for the entity types custos
           detects too: EmailRecognizer (EMAIL_ADDRESS), IpRecognizer
           (IP_ADDRESS, v4 and v6), CreditCardRecognizer (CREDIT_CARD, Luhn),
           PhoneRecognizer (PHONE_NUMBER, Google's libphonenumber matcher,
           regions US, UK, DE, FR, IL, IN, CA, BR), IbanRecognizer
           (IBAN_CODE, mod 97), UsSsnRecognizer (US_SSN), UrlRecognizer (URL;
           also matches bare domain names: Presidio has no DOMAIN_NAME
           recognizer any more) and MacAddressRecognizer (MAC_ADDRESS).
  all      every predefined recognizer that needs no NLP model (about 90,
           most of them country-specific ids); for reference only.
  A,B,...  a comma-separated list of recognizer class names.

Modes:

  --spans [FILE]       For each input line (FILE or stdin), one JSON object
                       {"line": N, "spans": [{"start": S, "end": E,
                       "entity": "EMAIL_ADDRESS", "score": 1.0}, ...]},
                       N 1-based, S/E byte offsets (UTF-8) into the line
                       without its line ending, like `custos redact --spans`.
  --throughput FILE    Analyze and anonymize (default operator: replace with
                       <ENTITY_TYPE>) every line of FILE (or its first
                       --max-lines lines), write the result to --out (default
                       /dev/null), and print lines/s, MB/s and the CPU
                       seconds of the loop (engine start-up excluded, shown
                       apart); with --json, one JSON object instead.

--threshold sets the analyzer's score threshold (default 0, Presidio's own
default: every pattern match counts, including the low-score "weak" ones).
"""

import argparse
import json
import logging
import os
import resource
import sys
import time
import warnings


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


DEFAULT_RECOGNIZERS = [
    "EmailRecognizer",
    "IpRecognizer",
    "CreditCardRecognizer",
    "PhoneRecognizer",
    "IbanRecognizer",
    "UsSsnRecognizer",
    "UrlRecognizer",
    "MacAddressRecognizer",
]

# Recognizers that need an NLP model or a remote service; never loaded here.
NEEDS_MODEL = {
    "SpacyRecognizer",
    "StanzaRecognizer",
    "TransformersRecognizer",
    "GLiNERRecognizer",
    "HuggingFaceNerRecognizer",
    "MedicalNERRecognizer",
    "AzureAILanguageRecognizer",
    "AzureHealthDeidRecognizer",
    "AzureOpenAILangExtractRecognizer",
    "BasicLangExtractRecognizer",
    "LangExtractRecognizer",
}


def build_engines(recognizers, threshold):
    """Returns (analyzer, anonymizer, [recognizer names])."""
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    import spacy
    import tldextract

    offline = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    tldextract.extract = offline  # the e-mail recognizer calls tldextract.extract

    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import SpacyNlpEngine
    import presidio_analyzer.predefined_recognizers as predefined
    from presidio_anonymizer import AnonymizerEngine

    class BlankSpacyNlpEngine(SpacyNlpEngine):
        """A spaCy NLP engine on a blank English pipeline: no model to load."""

        def __init__(self):
            super().__init__(models=[{"lang_code": "en", "model_name": "blank:en"}])

        def load(self):
            self.nlp = {"en": spacy.blank("en")}

    nlp = BlankSpacyNlpEngine()
    nlp.load()

    if recognizers == "default":
        names = list(DEFAULT_RECOGNIZERS)
    elif recognizers == "all":
        names = sorted(
            n
            for n in dir(predefined)
            if n.endswith("Recognizer") and n not in NEEDS_MODEL
        )
    else:
        names = [n.strip() for n in recognizers.split(",") if n.strip()]

    registry = RecognizerRegistry(supported_languages=["en"])
    used = []
    for name in names:
        cls = getattr(predefined, name, None)
        if cls is None:
            sys.exit(f"presidio_run.py: no predefined recognizer {name}")
        try:
            rec = cls()
        except Exception as e:  # some need arguments or extra packages
            if recognizers != "all":
                sys.exit(f"presidio_run.py: cannot create {name}: {e}")
            continue
        if rec.supported_language != "en":
            # country recognizers for other languages: register for "en" too
            try:
                rec = cls(supported_language="en")
            except Exception:
                continue
        registry.add_recognizer(rec)
        used.append(name)

    analyzer = AnalyzerEngine(
        registry=registry,
        nlp_engine=nlp,
        supported_languages=["en"],
        default_score_threshold=threshold,
    )
    return analyzer, AnonymizerEngine(), used


def byte_offsets(text):
    """Returns a list mapping character index -> byte offset (len+1 entries)."""
    out = [0] * (len(text) + 1)
    b = 0
    for i, ch in enumerate(text):
        out[i] = b
        b += len(ch.encode("utf-8", "surrogatepass"))
    out[len(text)] = b
    return out


def strip_eol(line):
    if line.endswith("\n"):
        line = line[:-1]
        if line.endswith("\r"):
            line = line[:-1]
    return line


def run_spans(args, analyzer):
    src = open(args.spans, encoding="utf-8", errors="surrogateescape") if args.spans != "-" else sys.stdin
    out = sys.stdout
    for n, line in enumerate(src, 1):
        text = strip_eol(line)
        results = analyzer.analyze(text=text, language="en") if text else []
        bo = byte_offsets(text) if not text.isascii() else None
        spans = []
        for r in sorted(results, key=lambda r: (r.start, r.end, r.entity_type)):
            s, e = (bo[r.start], bo[r.end]) if bo else (r.start, r.end)
            spans.append({"start": s, "end": e, "entity": r.entity_type, "score": round(r.score, 3)})
        out.write(json.dumps({"line": n, "spans": spans}) + "\n")


def run_throughput(args, analyzer, anonymizer, used, setup_cpu, setup_wall):
    lines = 0
    nbytes = 0
    found = {}
    sink = open(args.out, "w", encoding="utf-8", errors="surrogateescape")
    with open(args.throughput, "rb") as f:
        raw = [l for _, l in zip(range(args.max_lines), f)] if args.max_lines else f.readlines()
    c0, t0 = cpu_seconds(), time.perf_counter()
    for bline in raw:
        nbytes += len(bline)
        lines += 1
        text = strip_eol(bline.decode("utf-8", "surrogateescape"))
        results = analyzer.analyze(text=text, language="en") if text else []
        if results:
            for r in results:
                found[r.entity_type] = found.get(r.entity_type, 0) + 1
            text = anonymizer.anonymize(text=text, analyzer_results=results).text
        sink.write(text + "\n")
    sink.flush()
    c1, t1 = cpu_seconds(), time.perf_counter()
    cpu, wall = c1 - c0, t1 - t0
    res = {
        "tool": "presidio",
        "recognizers": used,
        "threshold": args.threshold,
        "lines": lines,
        "bytes": nbytes,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "lines_per_s": round(lines / wall, 1) if wall else 0,
        "lines_per_cpu_s": round(lines / cpu, 1) if cpu else 0,
        "mb_per_s": round(nbytes / 1e6 / wall, 4) if wall else 0,
        "mb_per_cpu_s": round(nbytes / 1e6 / cpu, 4) if cpu else 0,
        "mib_per_cpu_s": round(nbytes / 1048576 / cpu, 4) if cpu else 0,
        "setup_cpu_s": round(setup_cpu, 3),
        "setup_wall_s": round(setup_wall, 3),
        "found": dict(sorted(found.items())),
    }
    if args.json:
        print(json.dumps(res))
    else:
        print(f"presidio ({len(used)} pattern recognizers: {', '.join(used)})")
        print(f"  {lines} lines, {nbytes} bytes in {wall:.2f} s wall, {cpu:.2f} CPU-s "
              f"(+ start-up {setup_wall:.2f} s wall, {setup_cpu:.2f} CPU-s)")
        print(f"  {res['lines_per_s']} lines/s wall ({res['lines_per_cpu_s']} per CPU-second), {res['mb_per_s']} MB/s wall, "
              f"{res['mb_per_cpu_s']} MB/s per core (per CPU-second)")
        print(f"  found: {res['found']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--spans", nargs="?", const="-", metavar="FILE")
    mode.add_argument("--throughput", metavar="FILE")
    mode.add_argument("--list", action="store_true", help="print the recognizers used and exit")
    ap.add_argument("--recognizers", default="default")
    ap.add_argument("--threshold", type=float, default=0.0)
    ap.add_argument("--max-lines", type=int, default=0)
    ap.add_argument("--out", default=os.devnull)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    c0, t0 = cpu_seconds(), time.perf_counter()
    analyzer, anonymizer, used = build_engines(args.recognizers, args.threshold)
    # warm up (first call compiles regexes, loads phone metadata)
    analyzer.analyze(text="warm up a@b.com 10.0.0.1 +1 212 555 0100", language="en")
    setup_cpu, setup_wall = cpu_seconds() - c0, time.perf_counter() - t0

    if args.list:
        ents = sorted({e for r in analyzer.registry.recognizers for e in r.supported_entities})
        print(json.dumps({"recognizers": used, "entities": ents}))
    elif args.spans:
        run_spans(args, analyzer)
    else:
        run_throughput(args, analyzer, anonymizer, used, setup_cpu, setup_wall)


if __name__ == "__main__":
    main()
