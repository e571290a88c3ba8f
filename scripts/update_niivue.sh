#!/usr/bin/env bash
# Refresh the vendored NiiVue viewer (medae/report/static/niivue/) from the npm registry.
#   scripts/update_niivue.sh            # the version in medae/report/static/niivue/VERSION
#   scripts/update_niivue.sh 0.70.0     # another version (then run the browser tests)
# Copies the package's self-contained ES module build (dist/index.js, no imports) as niivue.js,
# without its source-map comment (the map is not shipped).  The npm package holds no LICENSE
# file; the licence text kept beside the bundle is NiiVue's BSD-2-Clause, and this script stops
# if package.json names another licence.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=medae/report/static/niivue
version="${1:-$(cat "$dest/VERSION")}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@niivue/niivue@$version" >/dev/null && tar xzf ./*.tgz)
license=$(node -p "require('$work/package/package.json').license")
if [ "$license" != "BSD-2-Clause" ]; then
    echo "update_niivue: @niivue/niivue@$version is licensed '$license', not BSD-2-Clause" >&2
    exit 1
fi
if grep -q '^import ' "$work/package/dist/index.js"; then
    echo "update_niivue: dist/index.js of $version imports other modules; not self-contained" >&2
    exit 1
fi
sed '/^\/\/# sourceMappingURL=/d' "$work/package/dist/index.js" > "$dest/niivue.js"
echo "$version" > "$dest/VERSION"
echo "vendored @niivue/niivue@$version: $(wc -c < "$dest/niivue.js") bytes in $dest/niivue.js"
