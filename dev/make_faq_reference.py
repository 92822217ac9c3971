#!/usr/bin/env python3
"""Independent reference for data/faq.c: the numbered sections of the Debian
FAQ HTML (debian-faq / debian-faq-ko 11.1, unpacked by dev/fetch_faq.sh),
found with Python's own html.parser.

For every chapter file (sorted by name, index.*.html skipped) and every
<h2|h3|h4 class="title"> heading "N.N. Title", it records the section id
"LANG:N.N", the title (whitespace collapsed) and the section's own text: the
character data after the heading up to the next such heading or the
chapter's footnotes / navigation footer, with "- " before each list item,
entities decoded by html.parser. The text is stored as the FNV-1a 64 hash of
its UTF-8 bytes with all whitespace (space, tab, newlines, no-break space)
removed, so the test checks tag stripping, entity decoding and section
boundaries without depending on how lines are broken.

    python3 dev/make_faq_reference.py [data/faq/debian-faq]
writes test/fixtures/faq_sections.json (standard library only).
"""
import glob
import json
import os
import re
import sys
from html.parser import HTMLParser

WHITESPACE = " \t\n\r\f\v\u00a0"


def fnv1a64(data: bytes) -> str:
    h = 14695981039346656037
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


class Sections(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sections = []      # [heading, body parts]
        self.heading = None     # parts while inside a heading
        self.heading_tag = None
        self.body = None        # parts of the current section's text

    def handle_starttag(self, tag, attrs):
        cls = dict(attrs).get("class")
        if tag in ("h2", "h3", "h4") and cls == "title":
            self.body = None
            self.heading, self.heading_tag = [], tag
        elif tag == "div" and cls in ("footnotes", "navfooter"):
            self.body = None
        elif tag == "li" and self.body is not None:
            self.body.append("- ")

    def handle_endtag(self, tag):
        if self.heading is not None and tag == self.heading_tag:
            self.body = []
            self.sections.append(("".join(self.heading), self.body))
            self.heading = None

    def handle_data(self, data):
        if self.heading is not None:
            self.heading.append(data)
        elif self.body is not None:
            self.body.append(data)


def read_language(root, lang):
    folder = os.path.join(root, "usr/share/doc/debian/FAQ", "ko" if lang == "ko" else "")
    out = []
    for path in sorted(glob.glob(os.path.join(folder, "*.%s.html" % lang))):
        if os.path.basename(path).startswith("index."):
            continue
        parser = Sections()
        with open(path, encoding="utf-8") as f:
            parser.feed(f.read())
        for heading, body in parser.sections:
            heading = " ".join(heading.replace("\u00a0", " ").split())
            m = re.match(r"^([0-9][0-9.]*[0-9])\.? (.*)$", heading)
            if not m:
                continue
            text = "".join(body)
            stripped = "".join(c for c in text if c not in WHITESPACE)
            out.append({"id": "%s:%s" % (lang, m.group(1)), "title": m.group(2),
                        "empty": stripped == "", "text_fnv1a64": fnv1a64(stripped.encode("utf-8"))})
    return out


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "data/faq/debian-faq"
    sections = read_language(root, "en") + read_language(root, "ko")
    result = {"source": "debian-faq 11.1 and debian-faq-ko 11.1 (Debian bookworm)",
              "made_by": "dev/make_faq_reference.py, Python %d.%d html.parser" % sys.version_info[:2],
              "sections": sections}
    with open("test/fixtures/faq_sections.json", "w", encoding="utf-8") as f:
        f.write("{\"source\": %s,\n \"made_by\": %s,\n \"sections\": [\n" % (
            json.dumps(result["source"]), json.dumps(result["made_by"])))
        f.write(",\n".join("  " + json.dumps(s, ensure_ascii=False) for s in sections))
        f.write("\n]}\n")
    print("%d sections (%d en, %d ko), %d without text" % (
        len(sections), sum(s["id"].startswith("en:") for s in sections),
        sum(s["id"].startswith("ko:") for s in sections), sum(s["empty"] for s in sections)))


if __name__ == "__main__":
    main()
