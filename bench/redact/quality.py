#!/usr/bin/env python3
"""Redaction quality: precision and recall per entity type, custos vs peers.

Usage:
  python3 bench/redact/quality.py [--bin PATH | --no-custos] [--python PY]
        [--no-presidio] [--no-sos] [--examples N] [--json FILE]
        [--custos-arg ARG ...]

Runs on the system python3 (standard library only). Presidio runs through
presidio_run.py in the venv made by setup.sh (--python, default
~/.cache/custos-bench/venv/bin/python); sos clean is Debian's `sos`.

Tools
  custos    `custos redact --spans` (default policy, plus any --custos-arg),
            fed one line per record; byte offsets are mapped to characters.
            Its output is also checked: one object per input line, line
            numbers 1..N in order, 0 <= start < end <= line length, offsets on
            UTF-8 character boundaries, known entity names. Every violation
            is listed under "custos output problems".
  presidio  presidio_run.py --spans: the 8 predefined pattern recognizers
            (EMAIL_ADDRESS, IP_ADDRESS, CREDIT_CARD, PHONE_NUMBER, IBAN_CODE,
            US_SSN, URL, MAC_ADDRESS), no NLP model, score threshold 0
            (Presidio's default).
  sos clean `sos clean DIR --batch [--domains ...]` on the same lines. Its
            spans are recovered from its private map (ip_map, mac_map,
            hostname_map): an occurrence of a mapped value in an input line
            counts when that value occurs fewer times in the cleaned line.
            sos covers IPv4 (IP_ADDRESS), MAC_ADDRESS and, only under
            --domains, host and domain names (DOMAIN_NAME); it is scored on
            those types only. Tokens it changed without putting a mapped value
            in (sos 4.0 drops the '_' of "ib_sm.x") are counted as ALTERED,
            not scored. sos writes /etc/sos/cleaner/default_mapping:
            the file is backed up before and restored (or removed) after.

Scoring (both corpora)
  * Predictions of one tool on one line that lie wholly inside another of its
    predictions are dropped first (what Presidio's anonymizer does with
    overlaps), e.g. the URL inside an e-mail address.
  * Entity names are mapped to classes: URL and DOMAIN_NAME are one class
    (URL/DOMAIN); the others keep their names.
  * Lenient overlap matching, per class: a gold span is FOUND (TP) when a
    prediction of its class overlaps it; FN = gold spans not found. A
    prediction is CORRECT when it overlaps a gold span of its class, FP when
    it overlaps none (and no "ignore" span, below). precision = correct /
    (correct + FP), recall = TP / gold. "exact boundaries" counts the TPs
    with a prediction of identical boundaries (both sides trimmed of
    whitespace and .,;:!?'"()[]<>/). "caught as any type" is the share of
    gold spans overlapped by a prediction of any type (the value is redacted,
    possibly under another label: what matters for leaks).
  * Predictions of classes the corpus does not label (e.g. USER_NAME or
    SECRET on the Presidio set) are not scored; they are counted and shown.

Corpus 1: Presidio research synthetic dev set
  ../shared/corpus/pii/presidio-research/synth_dataset_v2.dev.json (1,195
  records, character offsets). Line breaks and other characters a reader
  may treat as line ends inside a record are replaced by a space (same
  character count, so the offsets hold) and each record is one input line.
  Gold labels in scope and their classes: EMAIL_ADDRESS, IP_ADDRESS,
  CREDIT_CARD, PHONE_NUMBER, IBAN_CODE, US_SSN, and DOMAIN_NAME (which in
  this set is always a whole URL such as https://www.ArtistMovie.se/) as
  URL/DOMAIN. The other labels (PERSON, STREET_ADDRESS, GPE, ORGANIZATION,
  DATE_TIME, TITLE, AGE, NRP, ZIP_CODE) are out of scope; a prediction over
  one of them is a FP. The set is not labelled exhaustively for our types
  outside its templates, so a FP here may occasionally be a real value.

Corpus 2: loghub OpenSSH, Thunderbird and Windows (2,000 lines each)
  Ground truth is derived by an independent reference written for this
  benchmark (regular expressions plus validation and log-specific context
  rules below), not by any tool under test; its distinct values are printed
  with --show-gold so that a person can audit them.
    IP_ADDRESS  dotted IPv4, every octet 0-255 without leading zeros, not
                preceded by a word character, '.', '~' or '-', not followed
                by a word character, '-' or '.'+word character (so the
                numbers inside 5.36.59.76.dynamic-dsl-ip.omantel.net.om are
                part of a host name, not an IP), and not preceded by the word
                "version" or "v". 0.0.0.0 and 255.255.255.255 are traps (not
                PII); 127.0.0.0/8 is ignored (neither TP nor FP). IPv6: none
                occurs in these logs other than the :: wildcard (a trap).
    MAC_ADDRESS six hex pairs with one consistent separator (: or -), not
                inside a longer hex/colon run.
    EMAIL_ADDRESS  local@domain with a dotted domain ending in a 2+ letter
                label. None occurs in these three logs; the e-mail-like
                tokens there are traps (see below).
    USER_NAME   the value in these log contexts: "Invalid user X from",
                "invalid user X [preauth]", "Failed password|none|publickey
                for [invalid user] X from", "Accepted password|publickey for
                X from", "user=X" (not ruser=, not empty), "session
                opened|closed for user X", "authentication failures for X
                [preauth]", crond's "(X) CMD", sendmail's "from=X,", "to=X,"
                and "ctladdr=X (". Every occurrence is a span (root
                included: it is an account name like any other). C:\\Users\\X
                paths hold only the built-in "default" profile here: ignored.
                loghub's own placeholders (#29#) are ignored.
    DOMAIN_NAME fully qualified host names: dot-separated labels ending in
                a known TLD (com, net, org, edu, gov, mil, int, info, biz or
                any two-letter country code), with at least one label that
                has a letter before the TLD (the reverse-DNS names in the
                OpenSSH log, e.g. customer-187-141-143-180-sta.uninet-ide.com.mx).
                Bare host names (LabSZ, dn228, tbird-admin1, the syslog host
                field) are ignored for DOMAIN_NAME: flagging them is not an
                error, missing them is not scored. An IP_ADDRESS prediction
                inside a gold host name is ignored too (it is redacted with
                it).
    CREDIT_CARD, PHONE_NUMBER, IBAN_CODE, US_SSN, SECRET: none occurs in
                these system logs (checked by hand: the long digit runs are
                timestamps, pids, block and package ids); every hit is a FP.
  Known traps (must not be flagged): Windows package versions "~~6.1.1.1"
  and "wcp.dll version 0.0.0.6", Windows build numbers 6.1.7601.23505,
  the 0.0.0.0 and :: wildcards, syslog "facility@host" tokens
  (local@tbird-admin1, src@eadmin1), sendmail msgid=<...@eadmin1> and
  relay=#7#@localhost, Windows "00000001@2016/9/27" sequence stamps, the
  Java class com.jcraft.jsch.JSchException, "user unknown", the empty
  "ruser= rhost=" and "logname= uid=" fields, and file names such as
  wcp.dll / ntuser.dat. A trap hit is any prediction (of any scored class)
  overlapping a trap; trap hits are FPs as well.
  sos clean runs with --domains uninet-ide.com,amazonaws.com,omantel.net,
  vivozap.com,marryaldkfaczcz.com,poneytelecom.eu: the registered domains of the host names
  in the OpenSSH log, i.e. sos is told in advance which domains to hide (an
  oracle configuration that favours it). Presidio's URL recognizer and
  custos' DOMAIN_NAME/URL detectors get no such hint.

Output: Markdown tables (one per corpus) ready for docs/REDACTION.md, the
trap table, unscored predictions, examples of custos' false positives and
misses, and, last, one line `RESULT {json}`.
"""

import argparse
import bisect
import difflib
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SHARED = os.path.join(os.path.dirname(REPO), "shared", "corpus")
DEVSET = os.path.join(SHARED, "pii", "presidio-research", "synth_dataset_v2.dev.json")
LOGHUB = os.path.join(SHARED, "loghub")
LOGS = ["OpenSSH", "Thunderbird", "Windows"]
SOS_DOMAINS = "uninet-ide.com,amazonaws.com,omantel.net,vivozap.com,marryaldkfaczcz.com,poneytelecom.eu"
SOS_MAP = "/etc/sos/cleaner/default_mapping"
SOS_ARCHIVE = "sosreport-custosbench"

KNOWN_ENTITIES = {
    "EMAIL_ADDRESS", "IP_ADDRESS", "CREDIT_CARD", "PHONE_NUMBER", "IBAN_CODE",
    "US_SSN", "URL", "DOMAIN_NAME", "MAC_ADDRESS", "USER_NAME", "SECRET", "CUSTOM",
}
CLASS_OF = {"URL": "URL/DOMAIN", "DOMAIN_NAME": "URL/DOMAIN"}
DEV_CLASSES = ["EMAIL_ADDRESS", "IP_ADDRESS", "CREDIT_CARD", "PHONE_NUMBER", "IBAN_CODE", "US_SSN", "URL/DOMAIN"]
LOG_CLASSES = ["IP_ADDRESS", "MAC_ADDRESS", "EMAIL_ADDRESS", "USER_NAME", "URL/DOMAIN",
               "CREDIT_CARD", "PHONE_NUMBER", "IBAN_CODE", "US_SSN", "SECRET"]
TOOL_CLASSES = {
    "custos": None,  # every class
    "presidio": {"EMAIL_ADDRESS", "IP_ADDRESS", "CREDIT_CARD", "PHONE_NUMBER", "IBAN_CODE", "US_SSN", "URL/DOMAIN", "MAC_ADDRESS"},
    "sos clean": {"IP_ADDRESS", "MAC_ADDRESS", "URL/DOMAIN"},
}
SOS_TOKEN_RE = re.compile(r"[^\s\[\](){}<>,;=\"'/|\\]+")
# custos with a policy, scored on URL/DOMAIN only: the same hint sos gets
# (its domains, written as custos expects them: these and every sub-domain),
# and every name under a public TLD (no hint, like Presidio's URL recognizer).
CUSTOS_DOMAINS = ["uninet-ide.com.mx", "amazonaws.com.cn", "omantel.net.om", "vivozap.com.br",
                  "marryaldkfaczcz.com", "poneytelecom.eu"]
CUSTOS_VARIANTS = {
    "custos [domains]": ("version = 1\n[detect]\ndomains = [" + ", ".join(f'"{d}"' for d in CUSTOS_DOMAINS) + "]\n",
                         {"loghub"}),
    "custos [any_fqdn]": ("version = 1\n[detect]\nany_fqdn = true\n", {"devset", "loghub"}),
}
for _v in CUSTOS_VARIANTS:
    TOOL_CLASSES[_v] = {"URL/DOMAIN"}
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
TRIM = " \t.,;:!?'\"()[]<>/"


def cls(entity):
    return CLASS_OF.get(entity, entity)


def log(msg):
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# spans: (start, end, entity) in characters of the line


def drop_contained(spans):
    """Drop spans wholly inside another (longer, or equal and earlier) span."""
    spans = sorted(set(spans), key=lambda s: (s[0], -(s[1] - s[0]), s[2]))
    out = []
    for s in spans:
        if any(o[0] <= s[0] and s[1] <= o[1] for o in out):
            continue
        out.append(s)
    return out


def byte_to_char_map(line):
    """Returns (sorted byte offsets of char starts incl. the end, total bytes)."""
    offs = []
    b = 0
    for ch in line:
        offs.append(b)
        b += len(ch.encode("utf-8", "surrogatepass"))
    offs.append(b)
    return offs, b


# --------------------------------------------------------------------------
# tools


def run_custos(bin_path, lines, extra_args, problems):
    data = "".join(l + "\n" for l in lines).encode("utf-8", "surrogatepass")
    t0 = time.perf_counter()
    p = subprocess.run([bin_path, "redact", "--spans", *extra_args], input=data,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        problems.append(f"custos redact --spans exited with status {p.returncode}: "
                        f"{p.stderr.decode(errors='replace')[-500:]}")
    out = [[] for _ in lines]
    seen = 0
    for i, raw in enumerate(p.stdout.decode("utf-8", "replace").splitlines()):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            problems.append(f"output line {i + 1} is not JSON ({e}): {raw[:200]}")
            continue
        seen += 1
        n = obj.get("line")
        if n != seen:
            problems.append(f"output object {seen} has line={n!r}, expected {seen}")
        if not isinstance(n, int) or not 1 <= n <= len(lines):
            problems.append(f"line number out of range: {raw[:200]}")
            continue
        text = lines[n - 1]
        offs, nbytes = byte_to_char_map(text)
        for sp in obj.get("spans", []):
            s, e, ent = sp.get("start"), sp.get("end"), sp.get("entity")
            if ent not in KNOWN_ENTITIES:
                problems.append(f"line {n}: unknown entity {ent!r} in {sp}")
            if not (isinstance(s, int) and isinstance(e, int) and 0 <= s < e <= nbytes):
                problems.append(f"line {n}: span out of range {sp} (line has {nbytes} bytes): {text[:160]!r}")
                continue
            cs, ce = bisect.bisect_left(offs, s), bisect.bisect_left(offs, e)
            if offs[cs] != s or offs[ce] != e:
                problems.append(f"line {n}: span {sp} not on a UTF-8 character boundary: {text[:160]!r}")
                cs, ce = bisect.bisect_right(offs, s) - 1, bisect.bisect_left(offs, e)
            out[n - 1].append((cs, ce, ent))
    if seen != len(lines):
        problems.append(f"custos printed {seen} objects for {len(lines)} input lines")
    return out, wall, p.returncode


def run_presidio(py, lines):
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", delete=False) as f:
        for l in lines:
            f.write(l + "\n")
        path = f.name
    try:
        t0 = time.perf_counter()
        p = subprocess.run([py, os.path.join(HERE, "presidio_run.py"), "--spans", path],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        wall = time.perf_counter() - t0
    finally:
        os.unlink(path)
    if p.returncode != 0:
        sys.exit(f"presidio_run.py failed: {p.stderr.decode(errors='replace')[-2000:]}")
    out = [[] for _ in lines]
    for raw in p.stdout.decode("utf-8").splitlines():
        obj = json.loads(raw)
        n = obj["line"]
        offs, _ = byte_to_char_map(lines[n - 1])
        for sp in obj["spans"]:
            out[n - 1].append((bisect.bisect_left(offs, sp["start"]), bisect.bisect_left(offs, sp["end"]), sp["entity"]))
    return out, wall


def run_sos(lines, domains):
    """sos clean over the lines; returns per-line spans recovered from its map."""
    if not shutil.which("sos"):
        sys.exit("sos not found: run bench/redact/setup.sh")
    work = tempfile.mkdtemp(prefix="custos-quality-sos.")
    saved = None
    try:
        # sos finds a file's name inside the archive by splitting its path on
        # the archive's name: that name must occur nowhere else in the path.
        arc = os.path.join(work, SOS_ARCHIVE)
        os.makedirs(os.path.join(arc, "sos_logs"))
        os.makedirs(os.path.join(work, "tmp"))
        with open(os.path.join(arc, "lines.log"), "w", encoding="utf-8") as f:
            for l in lines:
                f.write(l + "\n")
        if os.path.exists(SOS_MAP):
            saved = os.path.join(work, "default_mapping.saved")
            shutil.copy2(SOS_MAP, saved)
            os.unlink(SOS_MAP)
        cmd = ["sos", "clean", arc, "--batch", "--tmp-dir", os.path.join(work, "tmp")]
        if domains:
            cmd += ["--domains", domains]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            sys.exit(f"sos clean failed: {p.stdout.decode(errors='replace')[-2000:]}")
        cleaned_path = glob.glob(os.path.join(work, "tmp", "**", "lines.log"), recursive=True)
        maps = glob.glob(os.path.join(work, "tmp", "*private_map"))
        if not cleaned_path or not maps:
            sys.exit(f"sos clean left no output/map under {work}/tmp")
        with open(cleaned_path[0], encoding="utf-8", errors="surrogateescape") as f:
            cleaned = f.read().split("\n")
        with open(maps[0]) as f:
            smap = json.load(f)
        if len(cleaned) < len(lines):
            sys.exit(f"sos clean wrote {len(cleaned)} lines for {len(lines)}")
    finally:
        if saved:
            shutil.copy2(saved, SOS_MAP)
        elif os.path.exists(SOS_MAP):
            os.unlink(SOS_MAP)
        shutil.rmtree(work, ignore_errors=True)
    keys = []
    for mk, ent in (("ip_map", "IP_ADDRESS"), ("mac_map", "MAC_ADDRESS"), ("hostname_map", "DOMAIN_NAME"), ("keyword_map", "KEYWORD")):
        for k in smap.get(mk, {}):
            if k:
                keys.append((k.lower(), ent))
    keys.sort(key=lambda k: -len(k[0]))
    out = [[] for _ in lines]
    for i, orig in enumerate(lines):
        new = cleaned[i] if i < len(cleaned) else ""
        if orig == new:
            continue
        # sos replaces values in place, keeping the surrounding text: the
        # tokens of the input line that differ from the cleaned line are what
        # it replaced. Within such a token, the values of its map (longest
        # first) give the exact span and type; otherwise the token's shape.
        ot = [(m.start(), m.end(), m.group(0)) for m in SOS_TOKEN_RE.finditer(orig)]
        nt = [m.group(0) for m in SOS_TOKEN_RE.finditer(new)]
        sm = difflib.SequenceMatcher(None, [t[2] for t in ot], nt, autojunk=False)
        for op, a0, a1, _, _ in sm.get_opcodes():
            if op == "equal":
                continue
            for ts, te, tok in ot[a0:a1]:
                low = tok.lower()
                taken = []
                for k, ent in keys:
                    j = low.find(k)
                    while j >= 0:
                        if not any(j < e and s < j + len(k) for s, e in taken):
                            taken.append((j, j + len(k)))
                            out[i].append((ts + j, ts + j + len(k), ent))
                        j = low.find(k, j + 1)
                if not taken:
                    if IPV4_RE.search(tok):
                        ent = "IP_ADDRESS"
                    elif MAC_RE.search(tok):
                        ent = "MAC_ADDRESS"
                    else:
                        # changed, but no mapped value in it: sos 4.0 drops
                        # '_' before a dotted word (ib_sm.x -> ibsm.x)
                        ent = "ALTERED"
                    out[i].append((ts, te, ent))
    return out, wall, {k: len(v) for k, v in smap.items()}


# --------------------------------------------------------------------------
# corpora


def load_devset():
    with open(DEVSET, encoding="utf-8") as f:
        recs = json.load(f)
    tr = {ord(c): " " for c in LINE_BREAKS}
    lines, gold, other = [], [], []
    for r in recs:
        text = r["full_text"].translate(tr)
        lines.append(text)
        g, o = [], []
        for s in r["spans"]:
            c = cls(s["entity_type"])
            span = (s["start_position"], s["end_position"], c)
            (g if c in DEV_CLASSES else o).append(span)
        gold.append(g)
        other.append(o)
    return lines, gold, other


OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4_RE = re.compile(rf"(?<![\w.~-]){OCTET}(?:\.{OCTET}){{3}}(?![\w-]|\.\w)")
MAC_RE = re.compile(r"(?<![\w:-])[0-9A-Fa-f]{2}([:-])(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}(?![\w:-])")
EMAIL_RE = re.compile(r"(?<![\w.+%-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![\w.-])")
FQDN_RE = re.compile(
    r"(?<![\w.-])((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"(?:com|net|org|edu|gov|mil|int|info|biz|[a-z]{2}))(?![\w.-]|\.\w)", re.I)
USER_RES = [
    re.compile(r"[Ii]nvalid user +(?!from\b)(\S+) from "),
    re.compile(r"[Ii]nvalid user +(\S+) \[preauth\]"),
    re.compile(r"Failed (?:password|none|publickey) for (?:invalid user +)?(?!from\b)(\S+) from "),
    re.compile(r"Accepted (?:password|publickey) for (\S+) from "),
    re.compile(r"(?<![\w])user=([^\s=]+)"),
    re.compile(r"session (?:opened|closed) for user (\S+)"),
    re.compile(r"authentication failures? for (\S+) \[preauth\]"),
    re.compile(r"crond\[\d+\]: \(([^)\s]+)\) CMD"),
    re.compile(r"sendmail\[\d+\]: \w+: (?:.*?, )?(?:from|to)=([\w.-]+),"),
    re.compile(r"ctladdr=([\w.-]+) \("),
]
IP, EM, US, DO = {"IP_ADDRESS"}, {"EMAIL_ADDRESS"}, {"USER_NAME"}, {"URL/DOMAIN"}
# (pattern, description, classes whose predictions over it are trap hits)
TRAPS = [
    (re.compile(r"~~(\d+(?:\.\d+){3})"), "Windows package version ~~6.1.x.y", IP),
    (re.compile(r"version (\d+(?:\.\d+){3})"), "'wcp.dll version 0.0.0.6'", IP),
    (re.compile(r"\b\d+\.\d+\.7601\.\d+\b"), "Windows build 6.1.7601.x", IP),
    (re.compile(r"(?<![\w.])0\.0\.0\.0(?![\w.])"), "0.0.0.0 wildcard", IP),
    (re.compile(r"(?<![\w.])255\.255\.255\.255(?![\w.])"), "255.255.255.255", IP),
    (re.compile(r"(?<![\w:])::(?![\w:])"), ":: wildcard", IP),
    (re.compile(r"\b(?:local|src)@[\w-]+"), "syslog facility@host", EM | DO),
    (re.compile(r"msgid=<[^>]*>"), "sendmail msgid=<...@host>", EM | DO),
    (re.compile(r"#\d+#@localhost"), "relay=#7#@localhost", EM | DO),
    (re.compile(r"\b[0-9a-f]{8}@\d{4}/[\d/:.]+"), "Windows CSI 00000001@2016/9/27:...", EM | IP | DO),
    (re.compile(r"com\.jcraft\.jsch\.JSchException"), "Java class com.jcraft.jsch.JSchException", DO),
    (re.compile(r"(?<=user )unknown\b"), "'check pass; user unknown'", US),
    (re.compile(r"(?<=ruser= )rhost\b"), "empty 'ruser= rhost='", US),
    (re.compile(r"(?<=logname= )uid\b"), "empty 'logname= uid='", US),
    (re.compile(r"\b[\w-]+\.(?:dll|dat|exe|mum|cat|manifest|sys)\b", re.I), "file name (wcp.dll, ntuser.dat, ...)", DO),
]


def loghub_lines():
    lines, src = [], []
    for name in LOGS:
        path = os.path.join(LOGHUB, name, f"{name}_2k.log")
        with open(path, "rb") as f:
            for raw in f.read().split(b"\n"):
                raw = raw.rstrip(b"\r").replace(b"\r", b"")
                if raw:
                    lines.append(raw.decode("utf-8", "surrogateescape"))
                    src.append(name)
    return lines, src


def loghub_gold(lines, src):
    gold, ignore, traps = [], [], []
    for text, name in zip(lines, src):
        g, ig, tp = set(), [], []
        for m in IPV4_RE.finditer(text):
            v = m.group(0)
            before = text[:m.start()].rstrip().lower()
            if before.endswith(("version", " v")) or re.search(r"\bv$", text[:m.start()].lower()):
                continue
            if v in ("0.0.0.0", "255.255.255.255"):
                continue  # traps, below
            if v.startswith("127."):
                ig.append((m.start(), m.end(), None))
                continue
            g.add((m.start(), m.end(), "IP_ADDRESS"))
        for m in MAC_RE.finditer(text):
            g.add((m.start(), m.end(), "MAC_ADDRESS"))
        for m in EMAIL_RE.finditer(text):
            g.add((m.start(), m.end(), "EMAIL_ADDRESS"))
        for m in FQDN_RE.finditer(text):
            labels = m.group(1).split(".")
            if not any(re.search(r"[A-Za-z]", l) for l in labels[:-1]):
                continue
            if TRAPS_FILE_RE.fullmatch(m.group(1)):
                continue
            g.add((m.start(1), m.end(1), "URL/DOMAIN"))
            ig.append((m.start(1), m.end(1), {"IP_ADDRESS"}))
        for r in USER_RES:
            for m in r.finditer(text):
                v = m.group(1)
                if re.fullmatch(r"#\d+#", v):
                    ig.append((m.start(1), m.end(1), None))
                    continue
                g.add((m.start(1), m.end(1), "USER_NAME"))
        for m in re.finditer(r"(?i)users[\\/]+([^\\/\s]+)", text):
            ig.append((m.start(1), m.end(1), None))  # only the built-in 'default' profile here
        for m in re.finditer(r"#\d+#", text):
            ig.append((m.start(), m.end(), None))  # loghub's own placeholders
        # syslog host names (not FQDNs): not gold, not an error
        hm = re.match(r"(?:- \d+ \S+ (\S+) \w{3} +\d+ [\d:]+ (\S+?)(?:/(\S+))? )|(?:\w{3} +\d+ [\d:]+ (\S+) )", text)
        if hm:
            for gi in range(1, 5):
                if hm.group(gi):
                    ig.append((hm.start(gi), hm.end(gi), {"URL/DOMAIN"}))
        for r, desc, tcls in TRAPS:
            for m in r.finditer(text):
                s, e = (m.start(1), m.end(1)) if m.groups() else (m.start(), m.end())
                tp.append((s, e, desc, tcls))
        gold.append(sorted(g))
        ignore.append(ig)
        traps.append(tp)
    return gold, ignore, traps


TRAPS_FILE_RE = re.compile(r"[\w-]+\.(?:dll|dat|exe|mum|cat|manifest|sys)", re.I)


# --------------------------------------------------------------------------
# scoring


def overlaps(a, b):
    return a[0] < b[1] and b[0] < a[1]


def norm(text, s, e):
    while s < e and text[s] in TRIM:
        s += 1
    while e > s and text[e - 1] in TRIM:
        e -= 1
    return s, e


def score(lines, gold, preds, classes, ignore=None, other_gold=None, covered=None):
    """Returns {class: counts}, fp examples, fn examples, unscored Counter."""
    res = {c: Counter() for c in classes}
    fp_ex, fn_ex = defaultdict(list), defaultdict(list)
    unscored = Counter()
    unscored_ex = defaultdict(list)
    for i, text in enumerate(lines):
        p = [(s, e, cls(ent)) for s, e, ent in drop_contained(preds[i])]
        g = gold[i]
        ig = ignore[i] if ignore else []
        for c in classes:
            if covered is not None and c not in covered:
                continue
            gc = [x for x in g if x[2] == c]
            pc = [x for x in p if x[2] == c]
            res[c]["gold"] += len(gc)
            for x in gc:
                if any(overlaps(x, y) for y in p):
                    res[c]["any"] += 1
                hit = [y for y in pc if overlaps(x, y)]
                if hit:
                    res[c]["tp"] += 1
                    gx = norm(text, x[0], x[1])
                    if any(norm(text, y[0], y[1]) == gx for y in hit):
                        res[c]["exact"] += 1
                    elif len(fn_ex["~" + c]) < 1000:
                        fn_ex["~" + c].append((i, x, hit))
                else:
                    res[c]["fn"] += 1
                    fn_ex[c].append((i, x, []))
            for y in pc:
                if any(overlaps(x, y) for x in gc):
                    res[c]["correct"] += 1
                elif any(overlaps((s, e), y) and (cl is None or c in cl) for s, e, cl in ig):
                    res[c]["ignored"] += 1
                else:
                    res[c]["fp"] += 1
                    fp_ex[c].append((i, y))
        for y in p:
            if y[2] not in classes:
                unscored[y[2]] += 1
                unscored_ex[y[2]].append((i, y))
    if covered is not None:
        res = {c: r for c, r in res.items() if c in covered}
    return res, fp_ex, fn_ex, unscored, unscored_ex


def pct(a, b):
    return f"{100.0 * a / b:.1f} %" if b else "–"


def table(title, results, classes, tools):
    out = [f"### {title}", "",
           "| entity | gold | tool | TP | FP | FN | precision | recall | exact boundaries | caught as any type |",
           "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in classes:
        for t in tools:
            r = results[t][0].get(c)
            if r is None:
                continue
            prec = pct(r["correct"], r["correct"] + r["fp"])
            out.append(f"| {c} | {r['gold']} | {t} | {r['tp']} | {r['fp']} | {r['fn']} | {prec} | "
                       f"{pct(r['tp'], r['gold'])} | {r['exact']} | {pct(r['any'], r['gold'])} |")
    return "\n".join(out)


def excerpt(text, s, e, width=70):
    a, b = max(0, s - width), min(len(text), e + width)
    return ("…" if a else "") + text[a:s] + "⟦" + text[s:e] + "⟧" + text[e:b] + ("…" if b < len(text) else "")


def summarize_examples(lines, fp_ex, fn_ex, n, what="custos"):
    out = []
    for c in sorted(fp_ex):
        items = fp_ex[c]
        vals = Counter(lines[i][y[0]:y[1]] for i, y in items)
        out.append(f"- {what} FP {c}: {len(items)} spans, {len(vals)} distinct values; most common: "
                   + ", ".join(f"`{v}` ×{k}" for v, k in vals.most_common(8)))
        seen = set()
        for i, y in items:
            v = lines[i][y[0]:y[1]]
            if v in seen:
                continue
            seen.add(v)
            out.append(f"    - line {i + 1} [{y[2]}]: `{excerpt(lines[i], y[0], y[1])}`")
            if len(seen) >= n:
                break
    for c in sorted(k for k in fn_ex if not k.startswith("~")):
        items = fn_ex[c]
        vals = Counter(lines[i][x[0]:x[1]] for i, x, _ in items)
        out.append(f"- {what} MISSED {c}: {len(items)} spans, {len(vals)} distinct values; most common: "
                   + ", ".join(f"`{v}` ×{k}" for v, k in vals.most_common(8)))
        seen = set()
        for i, x, _ in items:
            v = lines[i][x[0]:x[1]]
            if v in seen:
                continue
            seen.add(v)
            out.append(f"    - line {i + 1}: `{excerpt(lines[i], x[0], x[1])}`")
            if len(seen) >= n:
                break
    for c in sorted(k for k in fn_ex if k.startswith("~")):
        items = fn_ex[c]
        out.append(f"- {what} found {c[1:]} with different boundaries: {len(items)} spans, e.g.")
        for i, x, hit in items[:n]:
            out.append(f"    - line {i + 1}: gold `{lines[i][x[0]:x[1]]}`, found "
                       + ", ".join(f"`{lines[i][y[0]:y[1]]}`" for y in hit))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", help="custos binary (default: target/release/custos, built if missing)")
    ap.add_argument("--no-custos", action="store_true")
    ap.add_argument("--no-custos-variants", action="store_true",
                    help="skip the custos runs with a domains / any_fqdn policy")
    ap.add_argument("--no-presidio", action="store_true")
    ap.add_argument("--no-sos", action="store_true")
    ap.add_argument("--python", default=os.path.join(os.environ.get("CUSTOS_BENCH_CACHE", os.path.expanduser("~/.cache/custos-bench")), "venv", "bin", "python"))
    ap.add_argument("--examples", type=int, default=6, help="distinct example values per FP/FN list")
    ap.add_argument("--custos-arg", action="append", default=[], help="extra argument for custos redact (repeatable)")
    ap.add_argument("--show-gold", action="store_true", help="print the distinct loghub gold values (audit)")
    ap.add_argument("--peer-examples", action="store_true", help="also list the peers' FPs and misses")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    args = ap.parse_args()
    t_start = time.perf_counter()

    tools = []
    bin_path = None
    if not args.no_custos:
        bin_path = args.bin or os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target")), "release", "custos")
        if not args.bin and not os.path.exists(bin_path):
            log("building: cargo build --release -p custos")
            subprocess.run(["cargo", "build", "--release", "-p", "custos"], cwd=REPO, check=True)
        if not os.access(bin_path, os.X_OK):
            sys.exit(f"custos binary not found: {bin_path}")
        tools.append("custos")
        if not args.no_custos_variants:
            tools += list(CUSTOS_VARIANTS)
    policy_dir = tempfile.mkdtemp(prefix="custos-quality-policy.")
    policies = {}
    for v, (text, _) in CUSTOS_VARIANTS.items():
        policies[v] = os.path.join(policy_dir, v.split("[")[1].rstrip("]") + ".toml")
        with open(policies[v], "w") as f:
            f.write(text)
    failed_variants = set()

    def run_tool(t, lines, corpus):
        """Returns (per-line predictions, wall seconds, sos map sizes or None)."""
        if t == "custos":
            preds, wall, _ = run_custos(bin_path, lines, args.custos_arg, problems[corpus])
            return preds, wall, None
        if t in CUSTOS_VARIANTS:
            probs = []
            preds, wall, rc = run_custos(bin_path, lines, ["--policy", policies[t]], probs)
            if rc != 0:
                failed_variants.add(t)
                log(f"{t} failed (policy {policies[t]} rejected?): {probs[:1]}")
            problems[corpus] += [f"{t}: {p}" for p in probs if rc == 0]
            return preds, wall, None
        if t == "presidio":
            preds, wall = run_presidio(args.python, lines)
            return preds, wall, None
        return run_sos(lines, SOS_DOMAINS if corpus == "loghub" else None)

    if not args.no_presidio:
        if not os.access(args.python, os.X_OK):
            sys.exit(f"{args.python} missing: run bench/redact/setup.sh")
        tools.append("presidio")
    if not args.no_sos:
        tools.append("sos clean")

    report = ["## Redaction quality", ""]
    result = {"tools": tools, "corpora": {}}
    problems = {"devset": [], "loghub": []}
    timings = {}
    examples = []

    # ---- Presidio dev set ----
    lines, gold, other = load_devset()
    log(f"Presidio dev set: {len(lines)} records, {sum(len(g) for g in gold)} gold spans in scope")
    allgold = [g + o for g, o in zip(gold, other)]
    dev = {}
    dev_tools = [t for t in tools if t not in CUSTOS_VARIANTS or "devset" in CUSTOS_VARIANTS[t][1]]
    for t in dev_tools:
        preds, wall, _ = run_tool(t, lines, "devset")
        timings[f"devset/{t}"] = round(wall, 2)
        # predictions over an out-of-scope gold label are FPs: score in-scope classes only
        covered = {"IP_ADDRESS"} if t == "sos clean" else TOOL_CLASSES[t]
        dev[t] = score(lines, allgold, preds, DEV_CLASSES, covered=covered)
    gold_counts = Counter(x[2] for g in gold for x in g)
    report.append(table(f"Presidio research synthetic dev set ({len(lines)} records; gold in scope: "
                        + ", ".join(f"{c} {gold_counts[c]}" for c in DEV_CLASSES) + ")", dev, DEV_CLASSES,
                        [t for t in dev_tools if t not in failed_variants]))
    report.append("")
    report.append("sos clean is scored on IP_ADDRESS only here (it was given no --domains; it has no other detector for these types). "
                  "custos [any_fqdn] is custos with a policy `[detect] any_fqdn = true`, scored on URL/DOMAIN only.")
    dev_tools = [t for t in dev_tools if t not in failed_variants]
    for t in dev_tools:
        un = dev[t][3]
        if un:
            report.append(f"- {t}: predictions of types this set does not label (not scored): "
                          + ", ".join(f"{k} {v}" for k, v in sorted(un.items())))
            if t == "custos":
                for k, items in sorted(dev[t][4].items()):
                    vals = Counter(lines[i][y[0]:y[1]] for i, y in items)
                    report.append(f"    - {k}: " + ", ".join(f"`{v}` ×{n}" for v, n in vals.most_common(8)))
    result["corpora"]["presidio_dev"] = {t: {c: dict(r) for c, r in dev[t][0].items()} for t in dev_tools}
    for t in dev_tools:
        if t.startswith("custos"):
            examples.append(f"#### {t} on the Presidio dev set: false positives and misses")
            examples += summarize_examples(lines, dev[t][1], dev[t][2], args.examples, t)
    if args.peer_examples:
        for t in dev_tools:
            if not t.startswith("custos"):
                examples.append(f"#### {t} on the Presidio dev set")
                examples += summarize_examples(lines, dev[t][1], dev[t][2], args.examples, t)

    # ---- loghub ----
    lines, src = loghub_lines()
    gold, ignore, traps = loghub_gold(lines, src)
    gc = Counter(x[2] for g in gold for x in g)
    log(f"loghub {'/'.join(LOGS)}: {len(lines)} lines, gold " + ", ".join(f"{c} {gc[c]}" for c in LOG_CLASSES))
    if args.show_gold:
        for c in LOG_CLASSES:
            vals = Counter(lines[i][x[0]:x[1]] for i, g in enumerate(gold) for x in g if x[2] == c)
            print(f"gold {c}: {len(vals)} distinct: " + ", ".join(f"{v}×{n}" for v, n in vals.most_common()), file=sys.stderr)
    lh = {}
    trap_hits = {}
    for t in tools:
        preds, wall, smap = run_tool(t, lines, "loghub")
        if smap is not None:
            result["sos_map_sizes"] = smap
        timings[f"loghub/{t}"] = round(wall, 2)
        lh[t] = score(lines, gold, preds, LOG_CLASSES, ignore=ignore, covered=TOOL_CLASSES[t])
        th = Counter()
        th_ex = defaultdict(list)
        scored = TOOL_CLASSES[t]
        for i, tp in enumerate(traps):
            for y in drop_contained(preds[i]):
                c = cls(y[2])
                if c not in LOG_CLASSES or (scored is not None and c not in scored):
                    continue
                for s, e, desc, tcls in tp:
                    if c in tcls and overlaps((s, e), y):
                        th[desc] += 1
                        th_ex[desc].append((i, y))
                        break
        trap_hits[t] = (th, th_ex)
    tools = [t for t in tools if t not in failed_variants]
    by_log = Counter(src)
    report.append("")
    report.append(table("loghub " + ", ".join(f"{n} ({by_log[n]} lines)" for n in LOGS)
                        + "; reference ground truth: " + ", ".join(f"{c} {gc[c]}" for c in LOG_CLASSES),
                        lh, LOG_CLASSES, tools))
    report.append("")
    report.append(f"sos clean is scored on IP_ADDRESS, MAC_ADDRESS and URL/DOMAIN (host names), with --domains {SOS_DOMAINS} (told the domains in advance). "
                  f"custos [domains] is custos with `[detect] domains = {json.dumps(CUSTOS_DOMAINS)}` (the same hint), "
                  "custos [any_fqdn] with `[detect] any_fqdn = true` (no hint); both scored on URL/DOMAIN only.")
    for t in tools:
        ign = {c: r["ignored"] for c, r in lh[t][0].items() if r["ignored"]}
        if ign:
            report.append(f"- {t}: predictions on ignored spans (127.x, bare host names, IPs inside host names, Users\\default, #N# placeholders), not scored: "
                          + ", ".join(f"{k} {v}" for k, v in sorted(ign.items())))
        if lh[t][3]:
            report.append(f"- {t}: predictions of other types (not scored): " + ", ".join(f"{k} {v}" for k, v in sorted(lh[t][3].items())))
            if t == "custos" or "ALTERED" in lh[t][3]:
                for k, items in sorted(lh[t][4].items()):
                    vals = Counter(lines[i][y[0]:y[1]] for i, y in items)
                    report.append(f"    - {k}: " + ", ".join(f"`{v}` ×{n}" for v, n in vals.most_common(8)))
    # traps
    trap_occ = Counter(x[2] for tp in traps for x in tp)
    report.append("")
    report.append("### Known traps in the loghub logs (predictions overlapping a trap; 0 is right)")
    report.append("")
    report.append("| trap | must not be | occurrences | " + " | ".join(tools) + " |")
    report.append("|---|---|---:|" + "---:|" * len(tools))
    for _, desc, tcls in TRAPS:
        report.append(f"| {desc} | {', '.join(sorted(tcls))} | {trap_occ[desc]} | " + " | ".join(str(trap_hits[t][0][desc]) for t in tools) + " |")
    report.append("| **total** | | " + str(sum(trap_occ.values())) + " | " + " | ".join(str(sum(trap_hits[t][0].values())) for t in tools) + " |")
    result["corpora"]["loghub"] = {t: {c: dict(r) for c, r in lh[t][0].items()} for t in tools}
    result["traps"] = {t: dict(trap_hits[t][0]) for t in tools}
    result["trap_occurrences"] = dict(trap_occ)
    for t in tools:
        if not t.startswith("custos"):
            continue
        examples.append(f"#### {t} on loghub: false positives and misses")
        examples += summarize_examples(lines, lh[t][1], lh[t][2], args.examples, t)
        for desc, items in trap_hits[t][1].items():
            examples.append(f"- {t} TRAP {desc}: {len(items)} hits, e.g. "
                            + "; ".join(f"line {i + 1} [{y[2]}] `{excerpt(lines[i], y[0], y[1], 40)}`" for i, y in items[:3]))
    if args.peer_examples:
        for t in tools:
            if not t.startswith("custos"):
                examples.append(f"#### {t} on loghub")
                examples += summarize_examples(lines, lh[t][1], lh[t][2], args.examples, t)

    print("\n".join(report))
    if examples:
        print()
        print("### Examples")
        print()
        print("\n".join(examples))
    allp = problems["devset"] + problems["loghub"]
    if "custos" in tools:
        print()
        print(f"### custos output problems ({len(allp)})")
        print()
        for p in allp[:50]:
            print(f"- {p}")
        if len(allp) > 50:
            print(f"- ... and {len(allp) - 50} more")
    result["custos_output_problems"] = len(allp)
    result["custos_variants_failed"] = sorted(failed_variants)
    shutil.rmtree(policy_dir, ignore_errors=True)
    result["timings_s"] = timings
    result["script_s"] = round(time.perf_counter() - t_start, 1)
    print()
    print(f"(tool wall times: " + ", ".join(f"{k} {v} s" for k, v in timings.items()) + f"; script {result['script_s']} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print("RESULT " + json.dumps(result, separators=(",", ":")))


if __name__ == "__main__":
    main()
