#!/usr/bin/env bash
# gpu-pack-old.sh COMMIT: adds a second build of the engine to the GPU pack, for an A/B of two builds in ONE device call
# where a change has no switch (a kernel's signature, say): COMMIT's main classes and kernels go to .gpu-pack/old/
# (~7 MB, so the pack stays under the device tool's 64 MiB). The jars, JRE and bench classes stay the current pack's.
#   tools/gpu-pack-old.sh 253e0fa
# Then on the GPU machine, after the usual kernels-ptx.txz extraction into .gpu-pack/classes/:
#   tar xJf .gpu-pack/old/kernels-ptx.txz -C .gpu-pack/old/classes/
#   mv .gpu-pack/classes .gpu-pack/new-classes
#   ln -sfn old/classes .gpu-pack/classes      # or new-classes; `bash .gpu-pack/run main ...` uses whichever is linked
set -euo pipefail
commit=${1:?usage: tools/gpu-pack-old.sh COMMIT}
root=$(git rev-parse --show-toplevel)
[ -d "$root/.gpu-pack/classes" ] || { echo "gpu-pack-old: build the pack first (../shared/tools/gpu-pack, tools/gpu-slim.sh)" >&2; exit 1; }
tree=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$tree" >/dev/null 2>&1 || true; rm -rf "$tree"' EXIT
git -C "$root" worktree add -q --detach "$tree" "$commit"
(cd "$tree" && JAVA_HOME=${JAVA_HOME:-/usr/lib/jvm/temurin-25-jdk-amd64} ./mvnw -q -B -ntp -DskipTests compile)
old="$root/.gpu-pack/old"
rm -rf "$old" && mkdir -p "$old/classes"
cp -r "$tree/target/classes/META-INF" "$tree/target/classes/dev" "$old/classes/"
tar cJf "$old/kernels-ptx.txz" -C "$tree/target/classes" kernels-ptx
echo "gpu-pack-old: $(git -C "$root" rev-parse --short "$commit") in .gpu-pack/old ($(du -sh "$old" | cut -f1)); pack $(du -sh "$root/.gpu-pack" | cut -f1)"
