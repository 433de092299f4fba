#!/usr/bin/env bash
# Moves vendor/hyper to another hyper release and re-applies Remora's patch
# (remora.patch; REMORA.md says what it does and why).
#
#   vendor/hyper/update.sh 1.13.0
#
# Downloads the release from crates.io, applies remora.patch to it, and on
# success replaces vendor/hyper (keeping REMORA.md, remora.patch and this
# script) and bumps the workspace's hyper requirement. A hunk that no
# longer applies stops the script with the .rej files left in the work
# directory it names; fix them by hand, then regenerate remora.patch
# against the pristine release (the diff command is at the end).
# Afterwards: cargo test -p remora-proxy --test e2e idle_memory (the guard
# on the idle-buffer change) and the HTTP/2 e2e tests.
set -euo pipefail
version="${1:?usage: vendor/hyper/update.sh VERSION}"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
echo "work directory: $work"
curl -sSfL -o "$work/hyper.crate" "https://static.crates.io/crates/hyper/hyper-$version.crate"
tar -xzf "$work/hyper.crate" -C "$work"
pristine="$work/hyper-$version"
cp -r "$pristine" "$work/patched"
if ! (cd "$work/patched" && patch -p1 --no-backup-if-mismatch < "$here/remora.patch"); then
  echo "remora.patch does not apply to hyper $version; see the .rej files in $work/patched" >&2
  exit 1
fi
keep="$work/keep"
mkdir "$keep"
cp "$here/REMORA.md" "$here/remora.patch" "$here/update.sh" "$keep/"
find "$here" -mindepth 1 -delete
cp -r "$work/patched/." "$here/"
rm -f "$here/.cargo_vcs_info.json" "$here/Cargo.toml.orig" "$here/Cargo.lock"
cp "$keep/"* "$here/"
root="$(cd "$here/../.." && pwd)"
sed -i -E "s/^hyper = \\{ version = \"[^\"]+\"/hyper = { version = \"$version\"/" "$root/Cargo.toml"
echo "vendor/hyper is hyper $version with Remora's patch. Regenerate remora.patch with:"
echo "  (cd $pristine && for f in src/client/conn/http2.rs src/proto/h1/io.rs src/proto/h2/client.rs; do diff -u --label a/\$f --label b/\$f \$f $here/\$f; done) > $here/remora.patch"
