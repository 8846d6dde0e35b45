#!/bin/sh
# Re-fetch the newest crawler-user-agents patterns from the npm registry and rewrite
# crawler-user-agents.json, LICENSE and VERSION beside this script.
#
# Needs: sh, curl, tar, python3 (JSON and integrity check; standard library only).
# The registry can be overridden for a mirror: NPM_REGISTRY=https://registry.example/ ./update.sh
# Pin a version instead of "latest": ./update.sh 1.60.0
#
# Nothing is replaced unless the tarball's sha512 matches the registry's integrity
# field and the JSON parses as a non-empty list of {pattern, ...} objects.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
registry=${NPM_REGISTRY:-https://registry.npmjs.org}
registry=${registry%/}
wanted=${1:-latest}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

curl -fsS --max-time 60 "$registry/crawler-user-agents/$wanted" -o "$work/meta.json"
eval "$(python3 - "$work/meta.json" <<'PY'
import json, shlex, sys
meta = json.load(open(sys.argv[1]))
dist = meta["dist"]
for key, value in (("version", meta["version"]), ("tarball", dist["tarball"]), ("integrity", dist["integrity"])):
    print(f"{key}={shlex.quote(value)}")
PY
)"

curl -fsS --max-time 120 "$tarball" -o "$work/pkg.tgz"
python3 - "$work/pkg.tgz" "$integrity" <<'PY'
import base64, hashlib, sys
path, integrity = sys.argv[1], sys.argv[2]
algo, _, expected = integrity.partition("-")
if algo != "sha512":
    sys.exit(f"unsupported integrity algorithm {algo!r}")
actual = base64.b64encode(hashlib.sha512(open(path, "rb").read()).digest()).decode()
if actual != expected:
    sys.exit(f"integrity mismatch: registry says {expected}, tarball is {actual}")
PY

tar -xzf "$work/pkg.tgz" -C "$work" package/crawler-user-agents.json package/LICENSE
python3 - "$work/package/crawler-user-agents.json" <<'PY'
import json, sys
entries = json.load(open(sys.argv[1]))
if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) and isinstance(e.get("pattern"), str) for e in entries):
    sys.exit("crawler-user-agents.json is not a non-empty list of objects with a pattern")
print(f"{len(entries)} patterns")
PY

cp "$work/package/crawler-user-agents.json" "$here/crawler-user-agents.json"
cp "$work/package/LICENSE" "$here/LICENSE"
cat > "$here/VERSION" <<VERSION
package = crawler-user-agents
version = $version
tarball = $tarball
integrity = $integrity
licence = MIT (LICENSE beside this file, copied from the package)
repository = https://github.com/monperrus/crawler-user-agents
retrieved = $(date -u +%Y-%m-%d)
VERSION
echo "crawler-user-agents $version installed in $here"
