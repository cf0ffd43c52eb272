#!/usr/bin/env bash
# Refresh static/vendor/ from the npm registry at the pinned versions below (no CDN at run time, no build step).
# Run by hand when bumping a version; the files are committed. Needs npm and tar.
set -euo pipefail
cd "$(dirname "$0")/.."
MARKED=18.2.1           # Markdown → HTML
DOMPURIFY=3.4.18        # sanitizes that HTML before it touches the DOM
HIGHLIGHT=11.12.0       # code highlighting (prebuilt "common languages" bundle)
AXE=4.14.1              # accessibility checks, for the tests only (tests/vendor/: not under static/, never served)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out=static/vendor
rm -rf "$out" && mkdir -p "$out"
tests_out=tests/vendor
rm -rf "$tests_out" && mkdir -p "$tests_out"

fetch() {  # package version -> unpacked into $work/<name>
    local dir="$work/$(basename "$1")"
    mkdir -p "$dir"
    (cd "$work" && npm pack --silent "$1@$2" >/dev/null)
    tar -xzf "$work"/*"$(basename "$1")"-"$2".tgz -C "$dir" --strip-components=1
    echo "$dir"
}

dir=$(fetch marked "$MARKED")
cp "$dir/lib/marked.umd.js" "$out/marked.umd.js"
cp "$dir/LICENSE" "$out/LICENSE.marked"

dir=$(fetch dompurify "$DOMPURIFY")
cp "$dir/dist/purify.min.js" "$out/purify.min.js"
cp "$dir/LICENSE" "$out/LICENSE.dompurify"  # Apache-2.0 or MPL-2.0

dir=$(fetch @highlightjs/cdn-assets "$HIGHLIGHT")
cp "$dir/highlight.min.js" "$out/highlight.min.js"
cp "$dir/styles/github.min.css" "$out/highlight-light.min.css"
cp "$dir/styles/github-dark.min.css" "$out/highlight-dark.min.css"
cp "$dir/LICENSE" "$out/LICENSE.highlightjs"

dir=$(fetch axe-core "$AXE")
cp "$dir/axe.min.js" "$tests_out/axe.min.js"
cp "$dir/LICENSE" "$tests_out/LICENSE.axe-core"  # MPL-2.0

cat > "$out/VERSIONS" <<VERSIONS
marked $MARKED
dompurify $DOMPURIFY
@highlightjs/cdn-assets $HIGHLIGHT
axe-core $AXE (in tests/vendor/, for the tests only)
VERSIONS
ls -l "$out" "$tests_out"
