#!/usr/bin/env bash
# gpu-slim.sh: after ../shared/tools/gpu-pack, trims .gpu-pack/ to what GPU tests and benchmarks need, so that
# the pack plus the working tree fit the device tool's transfer limit (64 MiB). Jars only the CLI, chat templates
# or plotting use are dropped; the bench jar goes on the class path (run main dev.qlora4j.bench.X).
#   tools/gpu-slim.sh [--jmh]   # --jmh keeps JMH and its dependencies (run jmh finds the benchmarks in the bench jar on lib/)
# The device command then starts with: tar xJf .gpu-pack/kernels-ptx.txz -C .gpu-pack/classes/ && cp -r src/test/resources/golden .gpu-pack/test-classes/
# Large tracked folders (models/, golden/peft, golden/tokenizer) are moved aside by tools/gpu-aside.sh.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)/.gpu-pack"
jmh=${1:-}
rm -f benchmarks.jar original-benchmarks.jar
rm -rf test-classes/golden classes/kernels-ptx classes/demo
mv -f qlora4j-bench-*.jar lib/ 2>/dev/null || true
for p in guava jinjava javassist snakeyaml commons-net failureaccess listenablefuture checker-qual j2objc error_prone \
         jline progressbar big-math java-ipv6 re2j jackson-dataformat-yaml jackson-datatype-jdk8 immutables \
         commons-codec commons-io commons-lang3 slf4j-nop annotations xchart; do
  rm -f lib/$p-*.jar
done
# JCuda's natives jar (26 MB) holds four libraries; the driver binding loads only libJCudaDriver (needs libcuda.so.1
# alone), so the GPU run gets a jar with that one (the JCuda-bound GPU tests run instead of skipping).
for j in lib/jcuda-natives-*.jar; do
  [ -e "$j" ] || continue
  t=$(mktemp -d); (cd $t && unzip -q "$OLDPWD/$j" 'lib/libJCudaDriver-*' 'META-INF/*' && rm -f "$OLDPWD/$j" && zip -q -r "$OLDPWD/$j" .)
  rm -rf $t
done
if [ "$jmh" = "--jmh" ]; then
  for a in org/openjdk/jmh/jmh-core net/sf/jopt-simple/jopt-simple org/apache/commons/commons-math3; do
    f=$(ls ~/.m2/repository/$a/*/*.jar | grep -v sources | tail -1); cp "$f" lib/
  done
else
  rm -f lib/commons-math3-*.jar lib/jmh-core-*.jar lib/jopt-simple-*.jar
fi
# The PTX and the Hopper cubins travel compressed by xz (4 MB; gzip: 9.4 MB, too much beside the rest): the device
# command unpacks them with
#   tar xJf .gpu-pack/kernels-ptx.txz -C .gpu-pack/classes/   (gpu-aside.sh out moves kernels-ptx/ out of the tree)
rm -f kernels-ptx.tgz
tar cJf kernels-ptx.txz -C .. kernels-ptx
du -sh . | cut -f1
