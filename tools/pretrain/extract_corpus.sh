#!/usr/bin/env bash
# Writes the King James Bible as a clean plain-text training corpus for tools/pretrain/pretrain.py.
#
# Usage: tools/pretrain/extract_corpus.sh [OUT]      (default OUT: <repo>/.pretrain-data/kjv.txt)
#
# Runs on a Debian/Ubuntu machine with apt (as root, or with bible-kjv already installed). The
# text comes from Debian's bible-kjv-text package through the `bible` program of bible-kjv.
# The GPU machine has neither network nor apt, so this script's output is carried there.
#
# Writes, next to each other:
#   OUT                   the corpus (ASCII, LF line ends), one chapter per block:
#                             Genesis 1
#                             In the beginning God created the heaven and the earth.
#                             And the earth was without form, and void; ...
#                             <blank line>
#                             Genesis 2
#                             ...
#                         i.e. a "Book N" header line, then one verse per line without its
#                         number; chapters are separated by exactly one blank line.
#   OUT.source.json       where it came from: package, version, command, counts, bytes, sha256
#   OUT.copyright         Debian's copyright file of bible-kjv-text (the license record)
# and prints the size and sha256 of OUT.
set -euo pipefail
export LC_ALL=C  # byte-wise, locale-independent text handling (the KJV text is plain ASCII)

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/../.." && pwd)"
out="${1:-$repo_root/.pretrain-data/kjv.txt}"
copyright_src=/usr/share/doc/bible-kjv-text/copyright

# 1. The `bible` program (package bible-kjv) and its text (bible-kjv-text, pulled in with it).
if ! command -v bible >/dev/null 2>&1 || [ ! -f "$copyright_src" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "bible-kjv is not installed and this is not root: run 'sudo apt-get install -y bible-kjv' first" >&2
        exit 1
    fi
    echo "installing bible-kjv (and bible-kjv-text) with apt-get..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y bible-kjv >&2 \
        || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y bible-kjv >&2; }
fi
version="$(dpkg-query -W -f='${Version}' bible-kjv-text)"

mkdir -p "$(dirname "$out")"
tmp="$(mktemp "$out.tmp.XXXXXX")"
trap 'rm -f "$tmp" "$tmp.raw"' EXIT

# 2. The whole text. Pretty-printing (the default) puts "Book N" on its own line between blank
# lines and starts each verse with "  N "; -l 100000 sets the line width so large that no verse
# is wrapped (the longest, Esther 8:9, is ~530 characters), so every verse is exactly one line.
# (-f would instead give "Ge1:1 text" lines with abbreviated book names.)
range="Gen1:1-Rev22:21"
bible -l 100000 "$range" </dev/null >"$tmp.raw"

# 3. Clean it: drop verse numbers, keep headers as plain lines, one blank line between chapters,
# collapse the source's few double spaces and its one trailing space. Any other kind of line is
# an error: it would mean the output format is not the one this parser was written for.
awk '
    /^$/ { next }
    /^  +[0-9]+ / {                      # a verse: "  N text"
        sub(/^  +[0-9]+ +/, "")
        gsub(/  +/, " "); sub(/ +$/, "")
        if ($0 == "") { print "empty verse at raw line " NR > "/dev/stderr"; exit 2 }
        print; verses++; next
    }
    /^[1-3]?[ ]?[A-Z][A-Za-z ]* [0-9]+$/ { # a header: "Genesis 1", "1 Samuel 3", "Song of Solomon 2"
        if (chapters++ > 0) print ""
        print; next
    }
    { print "unexpected line " NR ": " $0 > "/dev/stderr"; exit 2 }
    END { printf "%d chapters, %d verses\n", chapters, verses > "/dev/stderr" }
' "$tmp.raw" >"$tmp"

# 4. Sanity checks against the known shape of the KJV (66 books, 1189 chapters, 31102 verses).
chapters="$(grep -c -E '^[1-3]?[ ]?[A-Z][A-Za-z ]* [0-9]+$' "$tmp")"
blank="$(grep -c '^$' "$tmp")"
verses="$(( $(wc -l <"$tmp") - chapters - blank ))"
books="$(grep -E '^[1-3]?[ ]?[A-Z][A-Za-z ]* 1$' "$tmp" | wc -l)"
if [ "$chapters" != 1189 ] || [ "$verses" != 31102 ] || [ "$books" != 66 ] || [ "$blank" != 1188 ]; then
    echo "unexpected corpus shape: $books books, $chapters chapters, $verses verses, $blank blank lines" \
         "(expected 66, 1189, 31102, 1188)" >&2
    exit 1
fi
if grep -q -P '[^\x20-\x7e]' "$tmp"; then
    echo "the corpus holds characters other than printable ASCII" >&2
    exit 1
fi
[ "$(head -n 1 "$tmp")" = "Genesis 1" ] || { echo "the corpus does not start with 'Genesis 1'" >&2; exit 1; }
[ "$(tail -n 1 "$tmp")" = "The grace of our Lord Jesus Christ be with you all. Amen." ] \
    || { echo "the corpus does not end with Revelation 22:21" >&2; exit 1; }

# 5. Put the corpus and its records in place (each written to a temp file, then renamed).
size="$(stat -c %s "$tmp")"
sha="$(sha256sum "$tmp" | cut -d' ' -f1)"
cat >"$tmp.raw" <<EOF
{
  "source": "Debian package bible-kjv-text $version (King James Version; public domain)",
  "package": "bible-kjv-text",
  "package_version": "$version",
  "command": "bible -l 100000 \"$range\" (bible-kjv), verse numbers removed by tools/pretrain/extract_corpus.sh",
  "format": "'Book N' header line, one verse per line, one blank line between chapters, ASCII, LF",
  "books": $books,
  "chapters": $chapters,
  "verses": $verses,
  "bytes": $size,
  "sha256": "$sha",
  "copyright_file": "/usr/share/doc/bible-kjv-text/copyright"
}
EOF
mv -f "$tmp.raw" "$out.source.json.tmp" && mv -f "$out.source.json.tmp" "$out.source.json"
cp "$copyright_src" "$out.copyright.tmp" && mv -f "$out.copyright.tmp" "$out.copyright"
mv -f "$tmp" "$out"
chmod 644 "$out" "$out.source.json" "$out.copyright"

echo "corpus:    $out"
echo "bytes:     $size"
echo "sha256:    $sha"
echo "shape:     $books books, $chapters chapters, $verses verses"
echo "source:    bible-kjv-text $version"
echo "records:   $out.source.json, $out.copyright"
